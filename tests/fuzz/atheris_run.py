"""Optional coverage-guided byte fuzzing of one target with atheris (libFuzzer), if installed.

    PYTHONPATH=. python tests/fuzz/atheris_run.py wire -max_total_time=600 [corpus_dir]

Runs the target's ``from_bytes`` input (whole feed) under the same contract as the Hypothesis
runs; a Finding is reported by libFuzzer as a crash with its input saved.  Not part of CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports():
    import fuzz_all  # noqa: F401
    from fuzzkit import REGISTRY, WHOLE, run_input


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in REGISTRY or REGISTRY[sys.argv[1]].from_bytes is None:
        names = sorted(n for n, t in REGISTRY.items() if t.from_bytes is not None)
        sys.exit(f"usage: atheris_run.py TARGET [libFuzzer options]; TARGET one of {', '.join(names)}")
    target = REGISTRY[sys.argv[1]]
    from_bytes = target.from_bytes
    assert from_bytes is not None

    def one(data: bytes) -> None:
        run_input(target, from_bytes(data, WHOLE))

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
