from __future__ import annotations

import logging

import pytest

from minibt.faults import MAX_SIGNATURES, FaultKind, Faults, describe


def raise_here(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as e:
        return e


def test_each_fault_counted_by_kind_and_total() -> None:
    f = Faults()
    f.record(FaultKind.PEER, "peer a", raise_here(ValueError("x")))
    f.record(FaultKind.PEER, "peer b", raise_here(KeyError("y")))
    f.record(FaultKind.TRACKER, "tracker", raise_here(OverflowError("z")))
    st = f.stats()
    assert st["peer"] == 2 and st["tracker"] == 1 and st["dns"] == 0 and st["total"] == 3
    assert set(st) == {k.value for k in FaultKind} | {"total"}


def test_traceback_logged_once_per_place_then_at_powers_of_two(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="minibt.faults")
    f = Faults()
    for i in range(9):
        detail = f.record(FaultKind.PEER, f"peer #{i}", raise_here(IndexError(f"bad {i}")))
        assert detail == f"internal error: IndexError: bad {i}"
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("Traceback" in m for m in msgs) == 1
    # 1st with traceback; 2nd, 4th and 8th as one line each
    assert len(msgs) == 4 and all(r.levelno == logging.ERROR for r in caplog.records)
    assert "seen 8 times" in msgs[-1]
    assert f.stats()["peer"] == 9


def test_remembered_places_are_bounded() -> None:
    f = Faults()
    for i in range(MAX_SIGNATURES + 10):
        exec_globals: dict[str, object] = {}
        # a distinct code line per fault: compile one tiny function per i
        exec(compile("\n" * i + "def g():\n    raise ValueError('v')\n", f"<f{i}>", "exec"), exec_globals)
        try:
            exec_globals["g"]()  # type: ignore[operator]
        except ValueError as e:
            f.record(FaultKind.DATAGRAM, "d", e)
    assert 0 < f.places <= MAX_SIGNATURES
    assert f.stats()["datagram"] == MAX_SIGNATURES + 10


def test_describe_is_one_bounded_line() -> None:
    d = describe(ValueError("a\nb" + "c" * 500))
    assert "\n" not in d and len(d) < 260 and d.startswith("internal error: ValueError: a b")
    assert describe(RuntimeError()) == "internal error: RuntimeError"
