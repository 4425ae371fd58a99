"""The uTP packet-size search (utp_mtu.py): binary search between a confirmed floor and a ceiling."""

from __future__ import annotations

import pytest

from minibt.errors import ConfigError
from minibt.utp_config import UtpConfig
from minibt.utp_mtu import MTU_PROBE_FAILURES_MAX, MTU_SEARCH_DONE_BYTES, MtuSearch


def test_search_climbs_to_the_ceiling_when_every_probe_passes() -> None:
    m = MtuSearch(1200, 1400)
    sizes = []
    while (p := m.probe_size()) is not None:
        sizes.append(p)
        m.probe_sent()
        m.probe_acked(p)
    assert sizes == [1300, 1350, 1375, 1388]
    assert m.size == 1388 and m.ceiling - m.size < MTU_SEARCH_DONE_BYTES
    assert m.probes == 4 and m.failures == 0


def test_one_lost_probe_is_retried_two_lower_the_ceiling() -> None:
    m = MtuSearch(1200, 1400)
    m.probe_lost(1300)
    assert m.ceiling == 1400 and m.probe_size() == 1300  # random loss is not a small MTU
    m.probe_lost(1300)
    assert m.ceiling == 1299 and m.size == 1200
    assert m.probe_size() == 1250


def test_path_limit_is_found_within_the_resolution() -> None:
    path_limit = 1333
    m = MtuSearch(1200, 1400)
    while (p := m.probe_size()) is not None:
        m.probe_sent()
        if p <= path_limit:
            m.probe_acked(p)
        else:
            m.probe_lost(p)
    assert path_limit - MTU_SEARCH_DONE_BYTES < m.size <= path_limit


def test_search_gives_up_on_a_lossy_path() -> None:
    m = MtuSearch(100, 10_000)
    for _ in range(MTU_PROBE_FAILURES_MAX):
        p = m.probe_size()
        assert p is not None
        m.probe_lost(p)
    assert m.probe_size() is None and m.size == 100


def test_equal_floor_and_ceiling_never_probes() -> None:
    assert MtuSearch(1200, 1200).probe_size() is None
    with pytest.raises(ValueError):
        MtuSearch(1300, 1200)


def test_config_rejects_a_ceiling_below_the_start() -> None:
    with pytest.raises(ConfigError):
        UtpConfig(payload_bytes=1300, max_payload_bytes=1200)
    with pytest.raises(ConfigError):
        UtpConfig(max_payload_bytes=1500)
