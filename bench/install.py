"""What a newcomer waits for and what lands on disk: the time from ``scripts/up`` in a fresh
``git clone`` to the first ``/healthz`` answering 200, with the size of the virtual environment
it made, and the size of ``pip install`` of the package alone (the library), for this
checkout's HEAD and for a baseline revision (default ``main``, before the [system] extra) in
the same run.

Each clone runs ``scripts/up --port P`` as a user would (RabbitMQ already running, the
database SQLite in the clone's ./var/), in its own namespace, whose broker objects are deleted
afterwards. pip fetches what the index and this machine's local wheel directories give; its
cache is whatever it is when the bench runs (the figures say which was measured first).
Sizes are every file under the environment, .pyc included, pip's own included.

Usage: python bench/install.py [--baseline REF] [--only up|library]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from common import AMQP_URL
from rabbitry import Declarer, Exchange, Queue, Topology

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")  # the interpreter a user would have
HEALTHY_WITHIN = 1200.0  # seconds: a clone that is not up by then failed


def revision(ref: str) -> str:
    """The commit ``ref`` names in this repository."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def clone(ref: str, into: Path) -> Path:
    """A fresh clone of this repository at ``ref`` (committed work only)."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "--quiet", "--detach", ref], check=True)
    return into


def size(folder: Path) -> int:
    """Bytes of every file under ``folder`` (symbolic links not followed)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def user_env(namespace: str) -> dict[str, str]:
    """This environment as a user's shell would have it: no virtual environment active."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)]
    return {**env, "PATH": os.pathsep.join(path), "PYTHON": PYTHON, "RABBITRY_NAMESPACE": namespace}


def namespaced(namespace: str) -> Topology:
    """The queues and exchanges the broker holds under ``namespace``."""
    listed = {}
    for kind in ("queues", "exchanges"):
        out = subprocess.run(
            ["rabbitmqctl", "-q", f"list_{kind}", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        listed[kind] = [n for n in out.split() if n.startswith(f"{namespace}.")]
    return Topology.of(
        exchanges=[Exchange(n) for n in listed["exchanges"]],
        queues=[Queue(n) for n in listed["queues"]],
    )


async def delete(topology: Topology, namespace: str) -> None:
    """Delete what ``rabbitry up`` declared (the broker is shared)."""
    async with await Declarer.connect(AMQP_URL, name=f"{namespace}-cleanup") as declarer:
        await declarer.delete(topology)


def first_healthz(tree: Path) -> tuple[float, int]:
    """Seconds from ``scripts/up`` to the first /healthz 200, and the size of its .venv."""
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    port = free_port()
    log = tree / "up.log"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(tree / "scripts" / "up"), "--port", str(port)],
            cwd=tree,
            env=user_env(namespace),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        while not healthy(port):
            if process.poll() is not None or time.perf_counter() - started > HEALTHY_WITHIN:
                raise SystemExit(f"{tree}: not up ({process.returncode}):\n{log.read_text()}")
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        asyncio.run(delete(namespaced(namespace), namespace))
    return elapsed, size(tree / ".venv")


def library_install(tree: Path) -> tuple[float, int]:
    """Seconds for ``pip install <tree>`` into a fresh venv, and the venv's size."""
    venv = tree.parent / f"{tree.name}-library"
    started = time.perf_counter()
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(tree)], check=True, env=user_env("x")
    )
    return time.perf_counter() - started, size(venv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--only", choices=("up", "library"), help="one measurement only")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.1f} on {os.cpu_count()} cores")
    rows: dict[str, dict[str, tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="rabbitry-install-") as tmp:
        # This checkout first: the baseline after it finds pip's cache at least as warm.
        for name, ref in (("this", "HEAD"), ("baseline", args.baseline)):
            commit = revision(ref)
            tree = clone(commit, Path(tmp) / name)
            label = f"{name} ({ref} = {commit[:10]})"
            rows[label] = {}
            if args.only in (None, "up"):
                rows[label]["scripts/up to /healthz"] = first_healthz(tree)
            if args.only in (None, "library"):
                rows[label]["pip install (package alone)"] = library_install(tree)
    print(f"{'':34}{'seconds':>10}{'MB':>10}")
    for label, measured in rows.items():
        print(label)
        for what, (seconds, nbytes) in measured.items():
            print(f"  {what:32}{seconds:10.1f}{nbytes / 1e6:10.0f}")
    this, base = rows.values()
    for what in this:
        (s1, b1), (s0, b0) = this[what], base[what]
        print(f"baseline/this, {what}: time {s0 / s1:.2f}x, size {b0 / b1:.2f}x")


if __name__ == "__main__":
    main()
