"""download.py times a peer's round trip from requests sent to an idle pipeline to the first block back
(``PeerConnection.min_latency``, the input of the write cache's long-path reservation)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from minibt.download import Downloader

_NO_RESERVATION = SimpleNamespace(_reserve_max=0, _reserve=0)  # a Downloader with a cache size set by hand


def _peer() -> SimpleNamespace:
    return SimpleNamespace(request_probe=None, min_latency=math.inf)


def test_the_first_block_asked_for_gives_a_sample_and_the_least_one_is_kept() -> None:
    peer = _peer()
    peer.request_probe = (7, 16384, 10.0)
    Downloader._latency_sample(_NO_RESERVATION, peer, peer.request_probe, [(7, 16384, b"x")], 10.25)  # type: ignore[arg-type]
    assert peer.request_probe is None and peer.min_latency == 0.25
    peer.request_probe = (8, 0, 20.0)
    Downloader._latency_sample(_NO_RESERVATION, peer, peer.request_probe, [(8, 0, b"x")], 20.5)  # type: ignore[arg-type]
    assert peer.min_latency == 0.25  # a slower round trip later (a queue somewhere) does not raise it
    peer.request_probe = (9, 0, 30.0)
    Downloader._latency_sample(_NO_RESERVATION, peer, peer.request_probe, [(9, 0, b"x")], 30.1)  # type: ignore[arg-type]
    assert math.isclose(peer.min_latency, 0.1)


def test_the_probe_waits_for_its_own_block() -> None:
    """Another block first (a seeder reading its disk answers out of order, or a late block of an earlier
    request) times nothing; the block asked for first does, when it comes, in this read or a later one."""
    peer = _peer()
    peer.request_probe = (7, 16384, 10.0)
    Downloader._latency_sample(_NO_RESERVATION, peer, peer.request_probe, [(3, 0, b"x")], 10.01)  # type: ignore[arg-type]
    assert peer.request_probe == (7, 16384, 10.0) and peer.min_latency == math.inf
    Downloader._latency_sample(_NO_RESERVATION, peer, peer.request_probe, [(7, 0, b"x"), (7, 16384, b"x")], 10.3)  # type: ignore[arg-type]
    assert peer.request_probe is None and math.isclose(peer.min_latency, 0.3)
