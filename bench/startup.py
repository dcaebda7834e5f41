"""Start-up time of the entry points: ``rabbitry --help``, ``rabbitry publish --help`` and
``import rabbitry``, each a fresh interpreter, against a baseline tree in the same run.

The budget (issue 15): at most 0.3 s for each ``--help``, 0.15 s for ``import rabbitry``.
Each case runs ROUNDS times, alternating with the baseline so that both see the same machine
load; the minimum is printed (the least disturbed run: on a shared machine the median
measures the neighbours), with the median beside it, and baseline/this.

The baseline is another source tree of Rabbitry run with the same interpreter and packages
(``PYTHONPATH=<tree>/src``): ``--baseline REF`` checks out that git revision (default
``main``) into a temporary ``git worktree`` and removes it afterwards.

Usage: python bench/startup.py [--rounds 15] [--baseline REF | --no-baseline]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The console script's own code: what `rabbitry ARGS` runs.
CLI = "import sys; from rabbitry.cli.app import main; sys.argv[0] = 'rabbitry'; main()"

CASES: tuple[tuple[str, list[str], float], ...] = (
    ("rabbitry --help", ["-c", CLI, "--help"], 0.3),
    ("rabbitry publish --help", ["-c", CLI, "publish", "--help"], 0.3),
    ("import rabbitry", ["-c", "import rabbitry"], 0.15),
)


def once(src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


@contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The tree of ``ref`` in a temporary git worktree (detached: no branch is touched)."""
    with tempfile.TemporaryDirectory(prefix="rabbitry-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run(
            [*git, "worktree", "add", "--detach", str(tree), ref], check=True, capture_output=True
        )
        try:
            yield tree
        finally:
            subprocess.run(
                [*git, "worktree", "remove", "--force", str(tree)], check=True, capture_output=True
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="start-up time of the entry points")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    options = parser.parse_args()

    tree: AbstractContextManager[Path | None] = (
        nullcontext() if options.no_baseline else checkout(options.baseline)
    )
    with tree as baseline:
        print(f"{'case':<26}{'this: min':>10}{'median':>9}{'budget':>8}", end="")
        print(f"{'baseline: min':>15}{'median':>9}{'ratio':>7}" if baseline else "")
        for name, args, budget in CASES:
            ours: list[float] = []
            theirs: list[float] = []
            once(ROOT / "src", args)  # warm the file cache and the bytecode of both trees
            if baseline:
                once(baseline / "src", args)
            for _ in range(options.rounds):
                ours.append(once(ROOT / "src", args))
                if baseline:
                    theirs.append(once(baseline / "src", args))
            line = f"{name:<26}{min(ours):>9.3f}s{statistics.median(ours):>8.3f}s"
            line += f"{budget:>7.2f}s" + (" over" if min(ours) > budget else "")
            if theirs:
                line += f"{min(theirs):>14.3f}s{statistics.median(theirs):>8.3f}s"
                line += f"{min(theirs) / min(ours):>6.1f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
