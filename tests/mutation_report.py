"""The summary line of `make mutation`: reads mutmut's results under mutants/ and prints one line
per mutated module, then ``mutation: killed K of N (P%)``.

Counting: K = mutants that a test failed on ("killed") plus mutants whose tests ran past
mutmut's time limit ("timeout": the mutation made the code hang, which a test run notices).
N = every mutant mutmut generated in the ``only_mutate`` files, so survivors, mutants no
selected test reaches ("no tests"), suspicious and unchecked ones all count against the score.
Survivors are written to mutants/survivors.txt (``.venv/bin/mutmut show NAME`` shows the diff).

Not a test module (no ``test_`` prefix): run as ``python tests/mutation_report.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = frozenset({"killed", "timeout"})


def _modules(pyproject: Path) -> list[str]:
    """The files mutmut mutates, from pyproject.toml's [tool.mutmut] only_mutate."""
    config = tomllib.loads(pyproject.read_text("utf-8"))["tool"]["mutmut"]
    return list(config["only_mutate"])


def _statuses(root: Path, module: str) -> dict[str, str]:
    """Mutant name -> mutmut's status word for one mutated file ({} if it has no results)."""
    meta = root / "mutants" / f"{module}.meta"
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def _line(label: str, counts: Counter[str]) -> str:
    total = sum(counts.values())
    killed = sum(counts[s] for s in KILLED)
    pct = 100.0 * killed / total if total else 0.0
    return f"{label}: killed {killed} of {total} ({pct:.1f}%)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    parser.add_argument(
        "--fail-under", type=float, default=0.0, help="exit 1 if the score is below this percent"
    )
    args = parser.parse_args(argv)
    overall: Counter[str] = Counter()
    survivors: list[str] = []
    for module in _modules(args.root / "pyproject.toml"):
        statuses = _statuses(args.root, module)
        if not statuses:
            print(f"mutation: no results for {module}; run `make mutation` first", file=sys.stderr)
            return 1
        counts = Counter(statuses.values())
        overall += counts
        others = {s: n for s, n in counts.items() if s not in KILLED | {"survived"}}
        print(f"  {_line(module, counts)}, survived {counts['survived']}, other {others or 0}")
        survivors += sorted(n for n, s in statuses.items() if s not in KILLED)
    (args.root / "mutants" / "survivors.txt").write_text("".join(f"{n}\n" for n in survivors))
    print(_line("mutation", overall))
    total = sum(overall.values())
    score = 100.0 * sum(overall[s] for s in KILLED) / total if total else 0.0
    return 1 if score < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
