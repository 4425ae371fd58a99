"""Replays the regression corpus (tests/vectors/regress/<target>/): every input that ever failed."""

from __future__ import annotations

import pytest
from fuzz_all import TARGETS
from fuzzkit import REGISTRY, Vector, corpus, replay

VECTORS = corpus()


def _param(v: Vector) -> object:
    return pytest.param(v, id=f"{v.target}/{v.path.name}")


@pytest.mark.parametrize("vec", [_param(v) for v in VECTORS])
def test_fuzz_regression_vector_holds_contract(vec: Vector) -> None:
    replay(REGISTRY[vec.target], vec)


def test_fuzz_corpus_has_vectors_for_every_target() -> None:
    have = {v.target for v in VECTORS}
    assert set(TARGETS) <= have, f"no corpus vector for {sorted(set(TARGETS) - have)}"
    assert have <= set(TARGETS), f"corpus directories without a target: {sorted(have - set(TARGETS))}"
