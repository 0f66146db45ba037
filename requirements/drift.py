"""Prints how the running environment differs from a lock file (`make test-latest`).

Usage: python requirements/drift.py requirements/dev.txt
One line per package whose installed version is not the locked one, then a summary line.
Always exits 0: the difference is information for whoever decides to refresh the lock.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of the ``name==version`` lines of a requirements file."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = PIN.match(line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def main(argv: list[str]) -> int:
    pins = locked(Path(argv[1]))
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    changed = 0
    for name in sorted(set(pins) | set(installed)):
        old, new = pins.get(name), installed.get(name)
        if old != new and name != "emotion-stream":
            changed += 1
            print(f"drift: {name}: locked {old or '-'} -> here {new or '-'}")
    print(f"drift: {changed} of {len(pins)} locked packages differ from {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
