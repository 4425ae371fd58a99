"""Every fuzz target, with the CI budget (MINIBT_FUZZ_EXAMPLES inputs each)."""

from __future__ import annotations

import pytest
from fuzz_all import TARGETS
from fuzzkit import EXAMPLES, REGISTRY, fuzz


@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target_holds_contract(name: str) -> None:
    fuzz(REGISTRY[name], max_examples=EXAMPLES)
