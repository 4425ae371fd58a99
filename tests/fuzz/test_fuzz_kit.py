"""The fuzz harness itself: it must be able to fail (foreign exceptions, slow calls, broken targets)."""

from __future__ import annotations

from pathlib import Path

import fuzzkit
import pytest
from fuzzkit import Finding, Target, call, fuzz, read_vector, replay, save_finding, split
from hypothesis import given
from hypothesis import strategies as st

from minibt.errors import CloseReason, WireError


def _boom(data: bytes) -> None:
    raise KeyError(data)


def test_call_turns_a_foreign_exception_into_a_finding() -> None:
    with pytest.raises(Finding, match=r"KeyError"):
        call("t", "stage", WireError, _boom, b"x")


def test_call_returns_an_allowed_error() -> None:
    def refuse() -> None:
        raise WireError(CloseReason.MALFORMED_MESSAGE, "bad")

    result, err = call("t", "stage", WireError, refuse)
    assert result is None and isinstance(err, WireError)


def test_call_flags_a_call_over_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzzkit, "TIME_LIMIT_S", -1.0)  # every call is "too slow"
    with pytest.raises(Finding, match="took"):
        call("t", "stage", (), len, b"abc")


@given(st.binary(max_size=300), st.lists(st.integers(-1, 1000), max_size=8).map(tuple))
def test_split_pieces_join_back_to_the_input(data: bytes, plan: tuple[int, ...]) -> None:
    assert b"".join(split(data, plan)) == data


def test_split_bytewise_feeds_one_byte_at_a_time() -> None:
    assert split(b"abc", (-1,)) == [b"a", b"b", b"c"]


def test_fuzz_finds_a_planted_bug_and_counts_it() -> None:
    def run(data: bytes) -> None:
        call("planted", "parse", (), lambda: data.index(b"\x07"))  # ValueError unless a 0x07 byte is present

    target = Target("planted", st.binary(min_size=1, max_size=20), run)
    with pytest.raises(Finding, match="ValueError"):
        fuzz(target, max_examples=200, use_database=False)
    assert target.stats.failures >= 1
    assert target.last_failure is not None


def test_corpus_vector_needs_a_comment_and_round_trips(tmp_path: Path) -> None:
    target = Target("t", st.just(b""), lambda d: call("t", "s", (), _boom, d), to_bytes=lambda d: d,
                    from_bytes=lambda d, plan: d)
    path = save_finding(target, b"\x01\x02", Finding("t", "s", "boom"), tmp_path)
    vec = read_vector("t", path)
    assert vec.data == b"\x01\x02" and vec.comment.startswith("found by the slow fuzz run")
    with pytest.raises(Finding):
        replay(target, vec)
    bad = tmp_path / "t" / "bare.hex"
    bad.write_text("0102\n")
    with pytest.raises(ValueError, match="comment"):
        read_vector("t", bad)
