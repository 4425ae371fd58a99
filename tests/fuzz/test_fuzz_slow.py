"""Long fuzz runs: MINIBT_FUZZ_SECONDS per target of fresh Hypothesis runs (new seeds each time).

Failing inputs are written to tests/vectors/regress/<target>/found-*.{hex,lit} (shrunk); the test
fails listing them.
"""

from __future__ import annotations

import random
import time

import pytest
from fuzz_all import TARGETS
from fuzzkit import REGISTRY, SECONDS, fuzz, save_finding

BATCH = 400  # examples per fresh Hypothesis run


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 600)
@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target_long(name: str) -> None:
    target = REGISTRY[name]
    rng = random.Random()
    found: list[str] = []
    stop = time.perf_counter() + SECONDS
    while time.perf_counter() < stop and len(found) < 5:
        try:
            fuzz(target, max_examples=BATCH, rng_seed=rng.getrandbits(64), use_database=False)
        except Exception as e:
            last = target.last_failure
            saved = save_finding(target, last[0], last[1]) if last is not None else None
            found.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200]} -> {saved}")
    s = target.stats
    print(f"\nfuzz {name}: {s.inputs} inputs, {s.failures} failures")
    assert not found, "\n".join(found)
