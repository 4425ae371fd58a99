"""download.py's lean pipelines: while the write cache holds back the requests of several delivering peers,
each peer's pipeline follows its rate x round trip, peers sending much slower than the fastest are left out
(their requests go back to the others), and the fastest ask first for the room a checked piece leaves; and
the write cache's reservation (pieces that may be started) on long paths and with many peers."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

import minibt.download as dl
from minibt.download import Downloader
from minibt.effects import Flush
from minibt.picker import Block
from minibt.storage import default_cache_bytes
from minibt.wire_codec import BLOCK_LEN

KiB, MiB = 1024, 1024 * 1024
QUEUE_MIN = 16


class _Picker:
    def __init__(self) -> None:
        self.out: dict[int, list[Block]] = {}
        self.failed: list[tuple[int, Block]] = []

    def num_outstanding(self, cid: int) -> int:
        return len(self.out.get(cid, ()))

    def outstanding(self, cid: int) -> list[Block]:
        return list(self.out.get(cid, ()))

    def request_failed(self, cid: int, b: Block) -> None:
        self.out[cid].remove(b)
        self.failed.append((cid, b))


class _Down:
    def __init__(self) -> None:
        self.total = 0

    def rate(self, now: float) -> float:
        return 0.0


def _peer(cid: int, latency: float) -> Any:
    wire = SimpleNamespace(cancels=[], peer_choking=False)
    wire.cancel = lambda i, b, n: wire.cancels.append((i, b, n))
    return SimpleNamespace(cid=cid, down=_Down(), min_latency=latency, last_block_at=0.0, lean_depth=-1,
                           wire=wire, closing=False, snubbed=False, reqq=2000, busy_s=0.0, had_out=False)


def _downloader(peers: dict[int, Any], picker: _Picker) -> Downloader:
    return Downloader(meta=SimpleNamespace(info_hash=b"i" * 20), peers=peers, have=None, picker=picker,  # type: ignore[arg-type]
                      storage=None, stats=None, queue_min=QUEUE_MIN, queue_max=1000,  # type: ignore[arg-type]
                      queue_seconds=1.0, auto_request=True)


def _reserving(peers: dict[int, Any], reserve_max: int = 8 * MiB) -> Downloader:
    """A downloader with the default cache's reservation (256 KiB pieces), up to ``reserve_max``."""
    return Downloader(meta=SimpleNamespace(info_hash=b"i" * 20, piece_length=256 * KiB), peers=peers, have=None,  # type: ignore[arg-type]
                      picker=_Picker(), storage=None, stats=None, queue_min=QUEUE_MIN,  # type: ignore[arg-type]
                      queue_max=1000, queue_seconds=1.0, auto_request=True, reserve_max=reserve_max)


def _second(d: Downloader, peers: dict[int, Any], now: float, delivered: dict[int, int], *,
            stopped: bool) -> list[Any]:
    """One second in which each peer delivered ``delivered[cid]`` bytes, sending all along; ``stopped``: the
    full write cache stopped a pick meanwhile.  Returns the effects of the update."""
    for cid, n in delivered.items():
        peers[cid].down.total += n
        if n:
            peers[cid].last_block_at = now
            peers[cid].busy_s += 1.0
    if stopped:
        d._cache_stops += 1
    out: list[Any] = []
    d._update_pipeline(now, out)
    return out


def test_pipelines_are_as_usual_until_the_cache_stops_picks_of_two_delivering_peers() -> None:
    peers = {1: _peer(1, 0.1), 2: _peer(2, 0.1)}
    d = _downloader(peers, _Picker())
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {1: 256 * KiB, 2: 256 * KiB}, stopped=False)  # room in the cache
    assert not d._lean and d.queue_depth(peers[1], 1.0) == QUEUE_MIN
    _second(d, peers, 2.0, {1: 256 * KiB, 2: 0}, stopped=True)  # one peer delivering: nobody to share with
    assert not d._lean
    _second(d, peers, 3.0, {1: 256 * KiB, 2: 256 * KiB}, stopped=True)
    assert d._lean


def test_a_lean_pipeline_is_twice_the_rate_times_the_round_trip() -> None:
    peers = {1: _peer(1, 0.1), 2: _peer(2, 0.1), 3: _peer(3, math.inf), 4: _peer(4, math.inf)}
    d = _downloader(peers, _Picker())
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {1: 2 * MiB, 2: 256 * KiB, 3: 2 * MiB, 4: 0}, stopped=True)
    # 2 MiB/s x 0.2 s = 25.6 blocks, + LEAN_EXTRA; a 256 KiB/s peer (an eighth) needs 3 + 2, LEAN_MIN gives it 8
    assert peers[1].lean_depth == int(2 * MiB * 0.2 / BLOCK_LEN) + dl.LEAN_EXTRA == 27
    assert peers[2].lean_depth == dl.LEAN_MIN
    # not timed yet (its first block came out of order): as quick as the quickest while it delivers
    assert peers[3].lean_depth == int(2 * MiB * 0.2 / BLOCK_LEN) + dl.LEAN_EXTRA
    assert peers[4].lean_depth == -1  # neither timed nor delivering: its usual depth
    assert d.queue_depth(peers[2], 1.0) == dl.LEAN_MIN < QUEUE_MIN
    assert d.queue_depth(peers[4], 1.0) == QUEUE_MIN
    # a peer with a short round trip keeps LEAN_TIME_S of its rate (our own loop's delay)
    peers[1].min_latency = 0.001
    _second(d, peers, 2.0, {1: 64 * MiB, 2: 8 * MiB, 3: 0, 4: 0}, stopped=True)
    assert peers[1].lean_depth == int(64 * MiB * dl.LEAN_TIME_S / BLOCK_LEN) + dl.LEAN_EXTRA


def test_a_far_peer_that_sends_as_fast_stays_in_and_a_slow_sender_goes_out() -> None:
    """The round trip alone leaves nobody out: a peer 300 ms away that sends as fast as the near ones keeps a
    pipeline that covers its round trip.  A peer that sends under an eighth of the fastest while it has
    requests out gets none, and those it holds go back to the others."""
    picker = _Picker()
    peers = {1: _peer(1, 0.02), 2: _peer(2, 0.02), 3: _peer(3, 1.2), 4: _peer(4, 0.16), 5: _peer(5, 0.3)}
    picker.out = {3: [Block(5, i * BLOCK_LEN, BLOCK_LEN) for i in range(6)], 4: [Block(6, 0, BLOCK_LEN)]}
    d = _downloader(peers, picker)
    _second(d, peers, 0.0, {}, stopped=False)
    out = _second(d, peers, 1.0, {1: MiB, 2: MiB, 3: 32 * KiB, 4: 256 * KiB, 5: MiB}, stopped=True)
    # 32 KiB/s while sending, 1/32 of the fastest: no more requests, its six go back with a cancel each
    assert peers[3].lean_depth == 0 and d.queue_depth(peers[3], 1.0) == 0
    assert picker.num_outstanding(3) == 0 and len(picker.failed) == 6
    assert [c[0] for c in peers[3].wire.cancels] == [5] * 6 and Flush(3) in out
    # a quarter of the fastest, 160 ms away: in, with LEAN_MIN; 300 ms away at 1 MiB/s: twice its round trip
    assert peers[4].lean_depth == dl.LEAN_MIN and picker.num_outstanding(4) == 1 and not peers[4].wire.cancels
    assert peers[5].lean_depth == int(MiB * 0.6 / BLOCK_LEN) + dl.LEAN_EXTRA == 40
    # ten seconds without a block from the slow sender: a few requests, which time it again
    for t in range(2, 12):
        _second(d, peers, float(t), {1: MiB, 2: MiB, 3: 0, 4: 256 * KiB, 5: MiB}, stopped=True)
        assert peers[5].lean_depth == 40
    assert peers[3].lean_depth == dl.LEAN_MIN


def test_the_reservation_leaves_each_delivering_peer_a_piece_beyond_its_bytes_in_flight() -> None:
    """Each delivering peer keeps a piece in the cache while its blocks come in, whatever its round trip, so
    the pieces that may be started are twice the bytes in flight plus one piece per delivering peer, up to
    ``reserve_max``."""
    peers = {c: _peer(c, 0.001) for c in range(1, 21)}
    d = _reserving(peers)
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {c: MiB if c <= 14 else 0 for c in peers}, stopped=False)
    assert d._reserve == int(2 * 14 * MiB * 0.001) + 14 * 256 * KiB > dl.RESERVE_FLOOR
    for p in peers.values():
        p.min_latency = 0.3
    _second(d, peers, 2.0, {c: MiB for c in peers}, stopped=False)
    assert d._reserve == 8 * MiB  # twice the 6 MiB in flight plus twenty pieces: over the ceiling


def test_a_far_peers_first_round_trip_raises_the_reservation_to_its_floor_at_once() -> None:
    """The default cache lets 1 MiB out, 10 MiB/s over 100 ms: the first round trip of LONG_PATH_S or more
    raises the reservation to RESERVE_FLOOR before the next update (within ``reserve_max``); a near peer's,
    or a cache size the user set, changes nothing."""
    probe = (3, 0, 0.0)
    blocks = [(3, 0, b"x" * BLOCK_LEN)]
    near = {1: _peer(1, math.inf)}
    d = _reserving(near)
    d._latency_sample(near[1], probe, blocks, dl.LONG_PATH_S / 2)
    assert near[1].min_latency == dl.LONG_PATH_S / 2 and d._reserve == 0
    far = {1: _peer(1, math.inf)}
    d = _reserving(far)
    d._latency_sample(far[1], (3, BLOCK_LEN, 0.0), blocks, 0.1)  # not the block the probe waits for
    assert far[1].min_latency == math.inf and d._reserve == 0
    d._latency_sample(far[1], probe, blocks, dl.LONG_PATH_S)
    assert d._reserve == dl.RESERVE_FLOOR > default_cache_bytes(256 * KiB)
    low = _reserving({1: _peer(1, math.inf)}, reserve_max=2 * MiB)
    low._latency_sample(low._peers[1], probe, blocks, 0.1)  # type: ignore[arg-type]
    assert low._reserve == 2 * MiB
    fixed = _reserving({1: _peer(1, math.inf)}, reserve_max=0)
    fixed._latency_sample(fixed._peers[1], probe, blocks, 0.1)  # type: ignore[arg-type]
    assert fixed._reserve == 0


def test_the_reservation_keeps_its_floor_while_a_far_peer_or_several_peers_deliver() -> None:
    """Twice rate x round trip plus a piece each is less than RESERVE_FLOOR here.  While a far peer delivers,
    or two peers do, the reservation keeps RESERVE_FLOOR; one near peer alone: its bytes in flight and a piece
    (the 1 MiB cache is the floor there)."""
    peers = {1: _peer(1, 0.1), 2: _peer(2, 0.001), 3: _peer(3, 0.002)}
    d = _reserving(peers)
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {1: 256 * KiB, 2: 0, 3: 0}, stopped=False)  # the far one alone
    assert int(2 * 256 * KiB * 0.1) + 256 * KiB < dl.RESERVE_FLOOR == d._reserve
    _second(d, peers, 2.0, {1: 0, 2: MiB, 3: 0}, stopped=False)  # a near one alone
    assert d._reserve == int(2 * MiB * 0.001) + 256 * KiB
    _second(d, peers, 3.0, {1: 0, 2: MiB, 3: MiB}, stopped=False)  # two near ones
    assert d._reserve == dl.RESERVE_FLOOR
    fixed = _reserving(peers, reserve_max=0)  # the user's cache size: a hard bound
    _second(fixed, peers, 4.0, {}, stopped=False)
    _second(fixed, peers, 5.0, {1: MiB, 2: MiB, 3: MiB}, stopped=False)
    assert fixed._reserve == 0


def test_peers_that_unchoke_us_but_have_not_delivered_yet_each_have_a_piece_of_room() -> None:
    """A newcomer may be the fastest peer: until it has delivered, the reservation holds a piece for it as
    for a delivering peer (not for one that chokes us, nor for one that was timed and went quiet)."""
    peers = {c: _peer(c, math.inf) for c in range(1, 21)}
    peers[5].wire.peer_choking = True
    peers[6].min_latency = 0.05  # timed: it delivered before
    d = _reserving(peers)
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {7: MiB}, stopped=False)
    assert d._reserve == 1 * 256 * KiB + 17 * 256 * KiB > dl.RESERVE_FLOOR  # 7 delivered; 17 unchoke us, new


def test_a_new_peer_that_unchokes_us_gets_a_piece_of_room_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the next once-a-second update: a piece on top of the write cache (the reservation's floor) for
    each newcomer once another peer is new or delivers, up to ``reserve_max``; a lone peer, a timed peer or
    a cache size the user set changes nothing."""
    peers = {c: _peer(c, math.inf) for c in range(1, 21)}
    for p in peers.values():
        p.wire.peer_choking = True
    peers[20].min_latency = 0.05  # timed
    fills = []
    monkeypatch.setattr(Downloader, "fill", lambda self, p, now, out: fills.append(p.cid))
    d = _reserving(peers, reserve_max=4 * MiB)
    d.on_unchoke(peers[20], 0.0, [])
    assert d._reserve == 0  # the cache, as before
    peers[1].wire.peer_choking = False
    d.on_unchoke(peers[1], 0.0, [])
    assert d._reserve == 0  # alone: the cache, as before
    for c in range(2, 4):
        peers[c].wire.peer_choking = False
        d.on_unchoke(peers[c], 0.0, [])
    assert d._reserve == dl.RESERVE_FLOOR + 2 * 256 * KiB  # two more newcomers, on top of the floor of several
    for c in range(4, 20):
        peers[c].wire.peer_choking = False
        d.on_unchoke(peers[c], 0.0, [])
    assert d._reserve == 4 * MiB
    assert fills == [20, *range(1, 20)]  # and each one's pipeline is topped up
    fixed = _reserving(peers, reserve_max=0)  # the user's cache size: a hard bound
    fixed.on_unchoke(peers[1], 0.0, [])
    assert fixed._reserve == 0


def test_a_peer_that_answers_at_once_but_sends_slowly_is_left_out() -> None:
    """A rate-limited uploader sends its first block at once (a token bucket's burst), so its round trip
    looks like the others'; what it sends while requests are out is what gives it away."""
    picker = _Picker()
    peers = {1: _peer(1, 0.1), 2: _peer(2, 0.1), 3: _peer(3, 0.1)}
    picker.out = {2: [Block(9, i * BLOCK_LEN, BLOCK_LEN) for i in range(8)]}
    d = _downloader(peers, picker)
    _second(d, peers, 0.0, {}, stopped=False)
    out = _second(d, peers, 1.0, {1: 4 * MiB, 2: 64 * KiB, 3: MiB}, stopped=True)
    assert peers[2].lean_depth == 0 and picker.num_outstanding(2) == 0 and Flush(2) in out  # 1/64 of the fastest
    assert not peers[2].had_out  # until it is asked again, no time counts as sending
    assert peers[3].lean_depth == int(MiB * 0.2 / BLOCK_LEN) + dl.LEAN_EXTRA  # a quarter: it stays in
    _second(d, peers, 2.0, {1: 4 * MiB, 2: 0, 3: MiB}, stopped=True)
    assert peers[2].lean_depth == 0  # nothing new to judge it by: it stays out until its retry


def test_pipelines_are_as_usual_again_some_seconds_after_the_cache_last_stopped_a_pick() -> None:
    peers = {1: _peer(1, 0.1), 2: _peer(2, 0.1)}
    d = _downloader(peers, _Picker())
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {1: MiB, 2: MiB}, stopped=True)
    t = 2.0
    while t < 1.0 + dl.LEAN_HOLD_S:
        _second(d, peers, t, {1: MiB, 2: MiB}, stopped=False)
        assert d._lean
        t += 1.0
    _second(d, peers, t, {1: MiB, 2: MiB}, stopped=False)
    assert not d._lean and d.queue_depth(peers[1], t) == QUEUE_MIN


def test_pipelines_stay_lean_while_a_peer_is_left_out_for_its_rate() -> None:
    """Lean pipelines leave room enough that picks stop no more; if that ended them, the peer left out would
    get a full pipeline again and start a piece.  They end LEAN_HOLD_S after the last update that left one
    out."""
    peers = {1: _peer(1, 0.1), 2: _peer(2, 0.1), 3: _peer(3, 0.1)}
    d = _downloader(peers, _Picker())
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {1: 4 * MiB, 2: 4 * MiB, 3: 64 * KiB}, stopped=True)
    assert peers[3].lean_depth == 0
    t = 2.0
    while t < 1.0 + dl.PARK_RETRY_S:  # no pick stops; 3 sends nothing (it stays out until its retry)
        _second(d, peers, t, {1: 4 * MiB, 2: 4 * MiB, 3: 0}, stopped=False)
        assert d._lean and peers[3].lean_depth == 0 and d.queue_depth(peers[3], t) == 0, t
        last_out = t
        t += 1.0
    _second(d, peers, t, {1: 4 * MiB, 2: 4 * MiB, 3: 0}, stopped=False)  # its retry: a few blocks time it
    assert d._lean and peers[3].lean_depth == dl.LEAN_MIN
    t += 1.0
    _second(d, peers, t, {1: 4 * MiB, 2: 4 * MiB, 3: 4 * MiB}, stopped=False)  # as fast now: nobody is out
    assert peers[3].lean_depth > dl.LEAN_MIN and d._lean
    while t < last_out + dl.LEAN_HOLD_S - 1:
        t += 1.0
        _second(d, peers, t, {1: 4 * MiB, 2: 4 * MiB, 3: 4 * MiB}, stopped=False)
        assert d._lean
    _second(d, peers, t + 1, {1: 4 * MiB, 2: 4 * MiB, 3: 4 * MiB}, stopped=False)
    assert not d._lean


def test_the_peers_that_delivered_most_ask_first_for_the_room_a_piece_leaves() -> None:
    peers = {c: _peer(c, 0.1) for c in (1, 2, 3)}
    for p in peers.values():
        p.wire.peer_choking = False
    d = _downloader(peers, _Picker())
    asked: list[int] = []
    d.fill = lambda peer, now, out, **kw: asked.append(peer.cid)  # type: ignore[method-assign]
    d.fill_all(0.0, [])
    assert asked == [1, 2, 3]  # as connected while the cache has room
    _second(d, peers, 0.0, {}, stopped=False)
    _second(d, peers, 1.0, {1: 64 * KiB, 2: 2 * MiB, 3: MiB}, stopped=True)
    asked.clear()
    d.fill_all(1.0, [])
    assert asked == [2, 3, 1]


def test_requests_to_an_idle_pipeline_start_its_sending_time() -> None:
    """The wait for the first block counts as time spent sending (``busy_s``): blocks that come in one burst a
    round trip later (a far peer) give the rate over the whole wait, not the burst's; the snub timer starts."""
    picker = _Picker()
    sent: list[list[Block]] = []

    def pick(cid: int, n: int, **kw: Any) -> list[Block]:
        blocks = [Block(3, i * BLOCK_LEN, BLOCK_LEN) for i in range(n)]
        picker.out.setdefault(cid, []).extend(blocks)
        return blocks

    picker.pick = pick  # type: ignore[attr-defined]
    peer = _peer(1, 0.3)
    peer.wire.am_interested, peer.wire.peer_choking = True, False
    peer.wire.request_many = sent.append
    peer.request_probe = None
    d = _downloader({1: peer}, picker)
    d.active = True
    d._pipeline_at = 50.0
    d.fill(peer, 50.0, [])
    assert len(sent[0]) == QUEUE_MIN and peer.request_probe == (3, 0, 50.0)
    assert peer.had_out and peer.last_block_at == 50.0
    peer.had_out, peer.last_block_at = False, 40.0
    d.fill(peer, 50.1, [])  # its pipeline is full: nothing asked, nothing reset
    assert len(sent) == 1 and not peer.had_out and peer.last_block_at == 40.0
