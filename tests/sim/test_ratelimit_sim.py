"""Rate limits end to end between two pure Sessions, over a FakeClock (issue 3).

``Pipe`` below is a minimal stand-in for minibt.loop.EventLoop that keeps the loop's side of the
rate-limit contract exactly: a socket is read only up to ``Session.read_quota`` (0 pauses it until
``read_retry_at``), ``on_rate_refill`` runs at ``rate_wake_at``, and the clock jumps to the next of
those deadlines or the next tick.  The links themselves are infinitely fast, so every byte/s
measured comes from the token buckets alone; payload is counted at the receiver.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import KiB, MiB, make_payload, make_torrent

from minibt.actions import Action, Announce, Close, Dial
from minibt.effects import Flush, HashPiece, SaveResume
from minibt.errors import CloseReason
from minibt.metainfo import Metainfo
from minibt.peer import PeerConnection, PeerSource
from minibt.ratelimit import UNLIMITED
from minibt.session import Session
from minibt.settings import SessionConfig, TorrentConfig, TorrentState
from minibt.torrent import Torrent
from minibt.urls import Addr
from minibt.workers import CallResult, HashResult, InlineHasher

TICK_S = 0.25  # minibt.loop.TICK_S
RECV_BUF = 256 * KiB  # minibt.loop.RECV_BUF
SOCK_BUF = 256 * KiB  # simulated kernel buffer per direction
PIECE_LEN = 64 * KiB
SIZE = 6 * MiB


@dataclass(eq=False)
class _Sock:
    owner: Node
    cid: int
    peer: _Sock | None = None
    rx: bytearray = field(default_factory=bytearray)  # received, not yet read by the owner
    paused_until: float | None = None  # reads paused by the download limit
    closed: bool = False


class Node:
    def __init__(self, name: str, ip: str, clock: FakeClock, config: SessionConfig) -> None:
        self.name = name
        self.addr: Addr = (ip, 6881)
        self.session = Session(rng=random.Random(hash(name) & 0xFFFF), config=config, wall_clock=clock.wall)
        self.session.set_listen(ip, 6881)
        self.hasher = InlineHasher()
        self.socks: dict[int, _Sock] = {}
        self.seen: dict[int, PeerConnection] = {}  # every connection it had (closed ones too)
        self.dirty: set[int] = set()  # connections with bytes to send (Flush actions)
        self.backlog: list[Action] = []  # other actions taken while collecting Flush ones

    def take_actions(self) -> list[Action]:
        """The session's actions, with Flush ones moved into ``dirty`` (what the loop does)."""
        acts, self.backlog = self.backlog, []
        for a in self.session.take_actions():
            if isinstance(a, Flush):
                self.dirty.add(a.cid)
            else:
                acts.append(a)
        return acts

    def take_dirty(self) -> set[int]:
        self.backlog += self.take_actions()
        d, self.dirty = self.dirty, set()
        return d

    @property
    def torrent(self) -> Torrent:
        (t,) = self.session.torrents.values()
        return t

    def payload_in(self) -> int:
        """Payload bytes received over every connection it had (what a receiver measures)."""
        return sum(c.down.total for c in self.seen.values())


class Pipe:
    """Two (or more) Sessions joined by lossless, infinitely fast links; see the module docstring."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.nodes: dict[Addr, Node] = {}
        self.next_tick = clock.now()
        self.reads = 0
        self.pauses = 0

    def add(self, node: Node) -> Node:
        self.nodes[node.addr] = node
        return node

    # -- the loop's job
    def _perform(self, node: Node) -> bool:
        busy = False
        now = self.clock.now()
        for _ in range(1000):
            acts = node.take_actions()
            if not acts:
                break
            busy = True
            for a in acts:
                if isinstance(a, Dial):
                    dst = self.nodes.get(a.addr)
                    if dst is None:
                        node.session.on_closed(a.cid, CloseReason.CONNECT_FAILED, "no such node", now=now)
                        continue
                    rcid = dst.session.on_incoming(node.addr, now=now)
                    assert rcid is not None
                    mine, theirs = _Sock(node, a.cid), _Sock(dst, rcid)
                    mine.peer, theirs.peer = theirs, mine
                    node.socks[a.cid], dst.socks[rcid] = mine, theirs
                    node.seen[a.cid], dst.seen[rcid] = node.session.conns[a.cid], dst.session.conns[rcid]
                    node.session.on_connected(a.cid, now=now)
                elif isinstance(a, Close):
                    s = node.socks.pop(a.cid, None)
                    if s is not None and s.peer is not None and not s.peer.closed:
                        s.peer.closed = True
                        s.peer.owner.socks.pop(s.peer.cid, None)
                        s.peer.owner.session.on_closed(s.peer.cid, CloseReason.CLOSED_BY_REMOTE, "", now=now)
                elif isinstance(a, HashPiece | SaveResume):
                    if isinstance(a, HashPiece):
                        node.hasher.submit(a.job)
                    else:
                        node.hasher.run(a.run, a)
                    for res in node.hasher.results():
                        assert isinstance(res, HashResult | CallResult)
                        node.session.on_hash_result(res, now=now)
                elif isinstance(a, Announce):
                    pass
        return busy

    def _flush(self, node: Node) -> bool:
        busy = False
        now = self.clock.now()
        for _ in range(1000):
            dirty = node.take_dirty()
            if not dirty:
                break
            for cid in sorted(dirty):
                s = node.socks.get(cid)
                if s is None or s.peer is None:
                    continue
                room = SOCK_BUF - len(s.peer.rx)
                data = node.session.data_to_send(cid, room, now=now) if room > 0 else b""
                s.peer.rx += data
                busy = busy or bool(data)
                if len(s.peer.rx) < SOCK_BUF:
                    node.session.on_writable(cid, now=now)
        return busy

    def _read(self, node: Node) -> bool:
        busy = False
        now = self.clock.now()
        ses = node.session
        for s in list(node.socks.values()):
            if not s.rx or s.closed or s.cid not in node.socks:
                continue
            if s.paused_until is not None:
                if now < s.paused_until and ses.down_limited:
                    continue
                s.paused_until = None
            want = RECV_BUF
            if ses.down_limited:
                q = ses.read_quota(s.cid, now=now)
                if q <= 0:
                    s.paused_until = ses.read_retry_at(s.cid, now=now)
                    assert s.paused_until > now
                    self.pauses += 1
                    continue
                want = min(q, RECV_BUF)
            data = bytes(s.rx[:want])
            del s.rx[: len(data)]
            self.reads += 1
            ses.on_data(s.cid, memoryview(data), now=now)
            busy = True
            # the sender's buffer has room again: it may write more (the loop's EVENT_WRITE)
            if s.peer is not None and s.peer.cid in s.peer.owner.socks:
                s.peer.owner.session.on_writable(s.peer.cid, now=now)
                s.peer.owner.session.mark_dirty(s.peer.cid)
        return busy

    def step(self) -> None:
        now = self.clock.now()
        for node in self.nodes.values():
            at = node.session.rate_wake_at(now=now)
            if at is not None and now >= at:
                node.session.on_rate_refill(now=now)
        if now >= self.next_tick:
            self.next_tick = now + TICK_S
            for node in self.nodes.values():
                node.session.tick(now=now)
        for _ in range(10_000):
            busy = False
            for node in self.nodes.values():
                busy |= self._perform(node)
                busy |= self._flush(node)
                busy |= self._read(node)
            if not busy:
                break
        else:
            raise AssertionError("the sessions never settle")

    def next_deadline(self) -> float:
        now = self.clock.now()
        at = self.next_tick
        for node in self.nodes.values():
            w = node.session.rate_wake_at(now=now)
            if w is not None:
                at = min(at, w)
            for s in node.socks.values():
                if s.paused_until is not None and s.rx:
                    at = min(at, s.paused_until)
        return max(at, now)

    def run_until(self, pred: Callable[[], bool], max_s: float) -> bool:
        end = self.clock.now() + max_s
        while not pred():
            self.step()
            if not self.clock.jump_to_next(self.next_deadline(), end=end):
                self.step()
                return pred()
        return True

    def run_for(self, dt: float) -> None:
        self.run_until(lambda: False, dt)


@dataclass
class Setup:
    pipe: Pipe
    seed: Node
    leech: Node
    meta: Metainfo


def _setup(tmp_path: Path, clock: FakeClock, *, seed_cfg: SessionConfig, leech_cfg: SessionConfig) -> Setup:
    payload = make_payload(tmp_path / "src" / "payload", {"a.bin": SIZE}, seed=5)
    meta = make_torrent(payload, PIECE_LEN, trackers=())
    pipe = Pipe(clock)
    seed = pipe.add(Node("seed", "10.0.0.1", clock, seed_cfg))
    leech = pipe.add(Node("leech", "10.0.0.2", clock, leech_cfg))
    st = seed.session.add_torrent(meta, str(tmp_path / "src"), mode="seed", resume_path=None, now=clock.now())
    assert pipe.run_until(lambda: st.state is TorrentState.SEEDING, 5.0)
    leech.session.add_torrent(meta, str(tmp_path / "dl"), mode="download", resume_path=None, now=clock.now())
    leech.session.add_peers(meta.info_hash, [seed.addr], PeerSource.USER, now=clock.now())
    assert pipe.run_until(lambda: leech.payload_in() > 0, 5.0), "transfer never started"
    return Setup(pipe, seed, leech, meta)


def _cfg(*, up: float | None = None, down: float | None = None, t_up: float | None = None,
         t_down: float | None = None) -> SessionConfig:
    return SessionConfig(
        upload_limit_bps=up,
        download_limit_bps=down,
        torrent=TorrentConfig(fsync=False, upload_limit_bps=t_up, download_limit_bps=t_down),
    )


def _measure(s: Setup, seconds: float) -> float:
    """Payload bytes/s the leecher receives over the next ``seconds``."""
    t0, b0 = s.pipe.clock.now(), s.leech.payload_in()
    s.pipe.run_for(seconds)
    assert not s.leech.torrent.complete, "payload too small for the window"
    rate = (s.leech.payload_in() - b0) / (s.pipe.clock.now() - t0)
    print(f"measured {rate / KiB:.2f} KiB/s over {seconds} s")
    return rate


def _assert_rate(measured: float, limit: float, tol: float = 0.03) -> None:
    assert abs(measured - limit) <= tol * limit, f"measured {measured / KiB:.1f} KiB/s, limit {limit / KiB:.1f} KiB/s"


@pytest.mark.parametrize("where", ["global", "torrent"])
def test_upload_limit_holds(tmp_path: Path, clock: FakeClock, where: str) -> None:
    limit = 256 * KiB
    seed_cfg = _cfg(up=limit) if where == "global" else _cfg(t_up=limit)
    s = _setup(tmp_path, clock, seed_cfg=seed_cfg, leech_cfg=_cfg())
    s.pipe.run_for(1.0)
    _assert_rate(_measure(s, 10.0), limit)
    assert s.leech.session.down_limited is False  # the receiving side never paid anything


@pytest.mark.parametrize("where", ["global", "torrent"])
def test_download_limit_holds(tmp_path: Path, clock: FakeClock, where: str) -> None:
    limit = 300 * KiB
    leech_cfg = _cfg(down=limit) if where == "global" else _cfg(t_down=limit)
    s = _setup(tmp_path, clock, seed_cfg=_cfg(), leech_cfg=leech_cfg)
    s.pipe.run_for(1.0)
    _assert_rate(_measure(s, 10.0), limit)
    assert s.pipe.pauses > 0  # reads were actually paused, not just slow
    assert s.seed.session.rate_wake_at(now=clock.now()) is None  # the seeder's uploads never waited


def test_stricter_of_global_and_torrent_limit_wins(tmp_path: Path, clock: FakeClock) -> None:
    s = _setup(tmp_path, clock, seed_cfg=_cfg(up=400 * KiB, t_up=200 * KiB), leech_cfg=_cfg(down=800 * KiB))
    s.pipe.run_for(1.0)
    _assert_rate(_measure(s, 8.0), 200 * KiB)
    s.seed.torrent.set_rate_limits(up=None, now=clock.now())  # the torrent's own limit off: global 400 KiB/s
    s.pipe.run_for(1.0)
    _assert_rate(_measure(s, 8.0), 400 * KiB)
    assert s.seed.torrent.rate_limits() == (None, None)
    assert s.seed.session.rate_limits() == (400 * KiB, None)


def test_upload_limit_changed_at_run_time(tmp_path: Path, clock: FakeClock) -> None:
    s = _setup(tmp_path, clock, seed_cfg=_cfg(up=512 * KiB), leech_cfg=_cfg())
    s.pipe.run_for(0.5)
    _assert_rate(_measure(s, 4.0), 512 * KiB)
    s.seed.session.set_rate_limits(up=128 * KiB, now=clock.now())
    s.pipe.run_for(1.0)
    _assert_rate(_measure(s, 8.0), 128 * KiB)
    s.seed.session.set_rate_limits(up=0, now=clock.now())  # 0 = unlimited: the rest goes at once
    assert s.pipe.run_until(lambda: s.leech.torrent.complete, 2.0)


def test_download_limit_changed_at_run_time(tmp_path: Path, clock: FakeClock) -> None:
    s = _setup(tmp_path, clock, seed_cfg=_cfg(), leech_cfg=_cfg(down=128 * KiB))
    s.pipe.run_for(0.5)
    _assert_rate(_measure(s, 6.0), 128 * KiB)
    s.leech.session.set_rate_limits(down=512 * KiB, now=clock.now())
    s.pipe.run_for(0.5)
    _assert_rate(_measure(s, 4.0), 512 * KiB)
    s.leech.session.set_rate_limits(down=None, now=clock.now())
    assert not s.leech.session.down_limited
    assert s.pipe.run_until(lambda: s.leech.torrent.complete, 2.0)


def test_unlimited_by_default(tmp_path: Path, clock: FakeClock) -> None:
    t0 = clock.now()
    s = _setup(tmp_path, clock, seed_cfg=_cfg(), leech_cfg=_cfg())
    assert s.pipe.run_until(lambda: s.leech.torrent.complete, 0.5)
    assert clock.now() - t0 < 1.0  # infinitely fast links and no limit: hardly any simulated time
    for n in (s.seed, s.leech):
        assert n.session.rate_limits() == (None, None) and n.torrent.rate_limits() == (None, None)
        assert not n.session.down_limited
        assert n.session.read_quota(12345, now=clock.now()) == UNLIMITED
        assert n.session.rate_wake_at(now=clock.now()) is None
    assert s.pipe.pauses == 0
