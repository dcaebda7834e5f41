"""A wheel of this checkout, and a wheelhouse of the packages an install of it pulls in, made
from the distributions the test environment has installed: fresh virtual environments are then
filled with ``pip install --no-index --find-links``, with no network and no index to wait for.

Repacking is what ``pip wheel`` would download: an installed distribution's files are those its
RECORD lists under site-packages (its console scripts are written again from its entry points at
install time), zipped with its ``*.dist-info`` and a fresh RECORD.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIP = (sys.executable, "-m", "pip")


def build_wheel(into: Path) -> Path:
    """A wheel of this checkout (built from a copy: the checkout gains no build/ folder)."""
    source = into / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    subprocess.run(
        [
            *PIP,
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(into),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = into.glob("rabbitry-*.whl")
    return wheel


def requirements(wheel: Path, extras: Iterable[str] = ()) -> list[Requirement]:
    """The wheel's own requirements (its METADATA's Requires-Dist) with ``extras``."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    wanted = ["", *extras]
    found = [
        Requirement(line.partition(":")[2].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return [
        r for r in found if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in wanted)
    ]


def closure(roots: Iterable[Requirement]) -> list[Distribution]:
    """The installed distributions ``roots`` need, transitively (markers evaluated here)."""
    seen: dict[str, Distribution] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        requirement = todo.pop()
        key = canonicalize_name(requirement.name)
        asked = (key, frozenset(requirement.extras))
        if key == "rabbitry" or asked in done:  # rabbitry: an extra naming the others
            continue
        done.add(asked)
        try:
            seen[key] = found = distribution(requirement.name)
        except PackageNotFoundError as exc:
            raise AssertionError(f"{requirement} is not installed in the test venv") from exc
        wanted = ["", *requirement.extras]
        for line in found.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(needed)
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def repack(dist: Distribution, into: Path) -> Path:
    """A wheel of the installed ``dist``, in ``into``."""
    site = Path(str(dist.locate_file("")))
    files = [
        f
        for f in dist.files or []
        if not str(f).startswith("..")  # console scripts, data installed outside site-packages
        and "__pycache__" not in f.parts
        and f.name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
    ]
    info = next(str(f.parts[0]) for f in files if f.parts[0].endswith(".dist-info"))
    tags = re.findall(r"^Tag: (\S+)-(\S+)-(\S+)$", (site / info / "WHEEL").read_text(), re.M)
    assert tags, f"{info}/WHEEL names no tag"
    # The file name holds every tag, compressed (py2.py3-none-any), as pip wheel names it.
    tag = "-".join(".".join(dict.fromkeys(part)) for part in zip(*tags, strict=True))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    target = into / f"{name}-{dist.version}-{tag}.whl"
    record = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for item in files:
            data = (site / item).read_bytes()
            archive.writestr(str(item), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{item},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return target


def wheelhouse(into: Path, extras: Iterable[str]) -> Path:
    """``into`` holding a wheel of this checkout and of everything it needs with ``extras``."""
    into.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(into)
    for dist in closure(requirements(wheel, extras)):
        repack(dist, into)
    return wheel
