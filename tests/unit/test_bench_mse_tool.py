"""tools/bench_mse.py and tools/bench.py --encryption (issue 13 benchmark): tiny runs, no network."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from minibt.mse import rc4_available

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"minibt_tool_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not rc4_available(), reason="needs the mse extra (cryptography)")
def test_bench_mse_measure_gives_sane_positive_figures() -> None:
    f = load_tool("bench_mse").measure(handshakes=3, mib=0.25)
    for name in ("initiator_ms", "responder_ms", "dh_keygen_ms", "dh_shared_ms", "initiator_per_s",
                 "responder_per_s", "pairs_per_s", "rc4_mib_s"):
        v = getattr(f, name)
        assert math.isfinite(v) and v > 0, (name, v)
    assert f.initiator_ms < 1000 and f.responder_ms < 1000  # a 768-bit DH is milliseconds, not seconds
    assert f.pairs_per_s <= min(f.initiator_per_s, f.responder_per_s)


def test_bench_parser_accepts_encryption() -> None:
    bench = load_tool("bench")
    ap = bench.build_parser()
    assert ap.parse_args([]).encryption == "none"
    assert ap.parse_args(["--encryption", "required", "--size-mib", "8"]).encryption == "required"
    with pytest.raises(SystemExit):
        ap.parse_args(["--encryption", "preferred"])


def test_bench_rc4_leechers_force_rc4_in_lt_peer() -> None:
    bench = load_tool("bench")
    assert bench.RC4_FORCED == {"rc4_forced": True}
    for setting in ("lt.enc_policy.pe_forced", "lt.enc_level.rc4", '"prefer_rc4": True'):
        assert setting in bench.LT_PEER
