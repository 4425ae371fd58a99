"""Transport choice and the loop's uTP plumbing.

Session part (pure): the Dial action carries the preferred transport; a dial that fails before the BT
handshake is retried on the next transport under the same cid (PROTOCOL.md 7.9); incoming uTP peers
show as 'utp' in the public API.  Loop part: a real EventLoop on 127.0.0.1 with a FakeClock, driven
one iteration at a time and talked to with raw UDP datagrams (first-byte demux, counters, the reply
to a BEP 29 SYN, the uTP connect timeout handing over to TCP).
"""

from __future__ import annotations

import random
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibt.actions import Dial
from minibt.errors import CloseReason, ConfigError
from minibt.handles import Peer, PeerFlags
from minibt.loop import UDP_SOCK_BUF, EventLoop
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.peer import PeerSource
from minibt.session import Session
from minibt.settings import SessionConfig
from minibt.torrent import Torrent
from minibt.utp_codec import HEADER_STRUCT, ST_DATA, ST_STATE, ST_SYN, UTP_VERSION
from minibt.utp_config import UtpConfig
from minibt.utp_peers import UtpPeers
from minibt.workers import InlineHasher
from tests.helpers import FakeClock

PEER = ("127.0.0.9", 6881)


def make_session(tmp_path: Path, transports: tuple[str, ...]) -> tuple[Session, Torrent]:
    src = tmp_path / "f.bin"
    src.write_bytes(bytes(range(256)) * 300)
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384))
    # plaintext: these tests read our BT handshake off the wire (MSE's retries: tests/sim/test_mse_retry_sim.py)
    s = Session(rng=random.Random(3), config=SessionConfig(transports=transports, encryption="none"))
    t = s.add_torrent(meta, str(tmp_path / "dl"), mode="download", resume_path=None, now=0.0)
    s.take_actions()
    return s, t


def dials(s: Session) -> list[Dial]:
    return [a for a in s.take_actions() if isinstance(a, Dial)]


# ---------------------------------------------------------------------- session: transport order


@pytest.mark.parametrize("bad", [(), ("quic",), ("utp", "utp")])
def test_transports_config_rejects_bad_lists(bad: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        SessionConfig(transports=bad)


def test_default_transports_dial_tcp_first_then_utp() -> None:
    assert SessionConfig().transports == ("tcp", "utp")


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        (("utp", "tcp"), CloseReason.CONNECT_FAILED),  # uTP connect timed out
        (("tcp", "utp"), CloseReason.CLOSED_BY_REMOTE),  # uTP-only libtorrent closes TCP at once
        (("tcp", "utp"), CloseReason.IO_ERROR),  # ... or resets it
    ],
)
def test_failed_dial_retries_next_transport_on_same_cid(
    tmp_path: Path, order: tuple[str, ...], reason: CloseReason
) -> None:
    s, t = make_session(tmp_path, order)
    cid = s.dial(t, PEER, PeerSource.USER, now=1.0)
    assert cid is not None
    assert dials(s) == [Dial(cid, PEER, order[0])]
    s.on_closed(cid, reason, "x", now=2.0)
    assert dials(s) == [Dial(cid, PEER, order[1])]
    assert cid in s.conns and s.conns[cid].transport == order[1]
    assert Peer.of(s.conns[cid], s).transport == order[1]
    # the retried connection starts a fresh handshake once connected
    s.on_connected(cid, now=3.0)
    assert len(s.data_to_send(cid, 1 << 16, now=3.0)) == 68
    # no third transport: the next failure tears the connection down
    s.on_closed(cid, reason, "x", now=4.0)
    assert dials(s) == [] and cid not in s.conns
    assert s.closed_log[-1][2] is reason


def test_single_transport_has_no_fallback(tmp_path: Path) -> None:
    s, t = make_session(tmp_path, ("utp",))
    cid = s.dial(t, PEER, PeerSource.USER, now=1.0)
    assert cid is not None and dials(s) == [Dial(cid, PEER, "utp")]
    s.on_closed(cid, CloseReason.CONNECT_FAILED, "uTP connect timed out", now=2.0)
    assert dials(s) == [] and cid not in s.conns


def test_no_fallback_for_other_reasons_or_after_close(tmp_path: Path) -> None:
    s, t = make_session(tmp_path, ("tcp", "utp"))
    cid = s.dial(t, PEER, PeerSource.USER, now=1.0)
    assert cid is not None
    dials(s)
    s.on_closed(cid, CloseReason.SHUTDOWN, "x", now=2.0)
    assert dials(s) == [] and cid not in s.conns
    cid2 = s.dial(t, ("127.0.0.10", 1), PeerSource.USER, now=3.0)
    assert cid2 is not None and dials(s) == [Dial(cid2, ("127.0.0.10", 1), "tcp")]
    s.close(cid2, CloseReason.TOO_MANY_PEERS, "ours")  # we closed it: nothing to fall back from
    s.on_closed(cid2, CloseReason.CLOSED_BY_REMOTE, "x", now=4.0)
    assert dials(s) == [] and cid2 not in s.conns


def test_incoming_utp_peer_shows_utp_flag() -> None:
    s = Session(rng=random.Random(1))
    cid = s.on_incoming(PEER, now=0.0, transport="utp")
    tcp = s.on_incoming(("127.0.0.8", 1), now=0.0)
    assert cid is not None and tcp is not None
    p = Peer.of(s.conns[cid], s)
    assert p.transport == "utp" and PeerFlags.UTP in p.flags and PeerFlags.INCOMING in p.flags
    q = Peer.of(s.conns[tcp], s)
    assert q.transport == "tcp" and PeerFlags.UTP not in q.flags


def test_utp_peers_contain_a_fault_to_its_own_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read's datagrams go to UtpPeers.receive_batch together: a fault while handling one is on_error's,
    named by its sender, and the datagrams after it are still handled (STYLE.md section 13)."""
    s, _ = make_session(tmp_path, ("utp", "tcp"))
    peers = UtpPeers(s, random.Random(1))
    real = peers.mux._route

    def route(data: bytes, addr: tuple[str, int], now: float) -> list[object]:
        if bytes(data).startswith(b"\x41boom"):
            raise RuntimeError("a bug met by one datagram")
        return real(data, addr, now)  # type: ignore[return-value]

    monkeypatch.setattr(peers.mux, "_route", route)
    srcs = [("127.0.0.2", 7000 + i) for i in range(5)]
    datas = [b"\x41short", b"\x41boom", b"\x11tiny", b"\x41boom!", b"\x21x"]
    errors: list[tuple[tuple[str, int], type]] = []
    peers.receive_batch(datas, srcs, now=0.0, on_error=lambda a, e: errors.append((a, type(e))))
    assert errors == [(srcs[1], RuntimeError), (srcs[3], RuntimeError)]
    st = peers.mux.stats()
    assert st["datagrams"] == 5 and st["garbage"] == 3  # the three others were routed (too short: garbage)


# ---------------------------------------------------------------------- loop: real UDP socket, fake clock


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    s = Session(rng=random.Random(2), config=SessionConfig(transports=("utp", "tcp"), encryption="none"))
    lp = EventLoop(s, clock=clock, hasher=InlineHasher(), bind="127.0.0.1", port=0,
                   utp_config=UtpConfig(connect_timeout_s=1.0))
    lp.open()
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(2.0)
    try:
        yield u
    finally:
        u.close()


def run_loop(loop: EventLoop, clock: FakeClock, until: object, n: int = 50) -> None:
    """A real EventLoop (real UDP socket): up to ``n`` iterations, 10 ms of fake time apart, until ``until()``."""
    for _ in range(n):
        loop.run_once()
        if callable(until) and until():
            return
        clock.advance(0.01)


def test_udp_buffers_enlarged(loop: EventLoop) -> None:
    """PROTOCOL.md 7.14: we ask for UDP_SOCK_BUF; Linux grants min(ask, rmem_max/wmem_max), doubled."""
    caps = []
    for name in ("rmem_max", "wmem_max"):
        try:
            caps.append(int(Path(f"/proc/sys/net/core/{name}").read_text()))
        except (OSError, ValueError):
            pytest.skip("no Linux sysctl to compare with")
    rcv, snd = loop.udp_buffers
    assert rcv >= 2 * min(UDP_SOCK_BUF, caps[0]) and snd >= 2 * min(UDP_SOCK_BUF, caps[1])


def test_datagrams_demuxed_by_first_byte_and_counted(loop: EventLoop, clock: FakeClock, udp: socket.socket) -> None:
    dst = ("127.0.0.1", loop.port)
    udp.sendto(b"d1:ad2:id20:" + bytes(20) + b"e1:q4:pinge", dst)  # DHT-looking: no DHT yet, dropped
    udp.sendto(b"\xff" * 30, dst)  # nobody's
    udp.sendto(struct.pack(">II", 1, 1234) + bytes(12), dst)  # BEP 15 reply from a non-tracker
    udp.sendto(b"\x01" + bytes(10), dst)  # uTP first byte, too short for a header: not uTP
    udp.sendto(HEADER_STRUCT.pack(0x21, 9, 1, 0, 0, 0, 0, 0), dst)  # uTP ext 9 pointing past the end
    udp.sendto(HEADER_STRUCT.pack(0x01, 0, 777, 0, 0, 1000, 5, 5) + b"x", dst)  # unknown connection
    run_loop(loop, clock, lambda: loop.utp_stats()["datagrams"] >= 2 and loop.counters["udp_dropped"] >= 3)
    assert loop.counters["udp_dropped"] == 3 and loop.counters["udp_unmatched"] == 1
    st = loop.utp_stats()
    assert st["datagrams"] == 2 and st["garbage"] == 1 and st["unknown_connection"] == 1
    # the unknown connection got one rate-limited ST_RESET echoing its connection id
    reply, _ = udp.recvfrom(2048)
    assert reply[0] == 0x31 and struct.unpack_from(">H", reply, 2)[0] == 777
    assert loop.session.conns == {}


def test_syn_gets_bep29_state_reply_and_a_session_peer(loop: EventLoop, clock: FakeClock, udp: socket.socket) -> None:
    recv_id = 4000  # the initiator receives on recv_id and sends the SYN with it (BEP 29)
    syn = HEADER_STRUCT.pack((ST_SYN << 4) | UTP_VERSION, 0, recv_id, 123, 0, 65536, 1, 0)
    udp.sendto(syn, ("127.0.0.1", loop.port))
    run_loop(loop, clock, lambda: loop.session.conns)
    (conn,) = loop.session.conns.values()
    assert conn.transport == "utp" and not conn.outgoing
    reply, _ = udp.recvfrom(2048)
    tv, _ext, cid, _ts, _tsd, _wnd, _seq, ack = HEADER_STRUCT.unpack_from(reply)
    assert tv == (ST_STATE << 4) | UTP_VERSION and cid == recv_id and ack == 1


def test_a_batch_of_datagrams_reaches_the_session_intact(loop: EventLoop, clock: FakeClock, udp: socket.socket,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop reads every datagram of a batch into one reused buffer, and uTP hands the payload on as a
    view of it: the connection's bytes must be copied before the next read, or the session gets the
    last datagram's bytes where the earlier ones were."""
    recv_id = 5000
    dst = ("127.0.0.1", loop.port)
    udp.sendto(HEADER_STRUCT.pack((ST_SYN << 4) | UTP_VERSION, 0, recv_id, 123, 0, 65536, 1, 0), dst)
    run_loop(loop, clock, lambda: loop.session.conns)
    reply, _ = udp.recvfrom(2048)
    their_seq = HEADER_STRUCT.unpack_from(reply)[6]  # its next seq_nr, not consumed: ack the one before
    got: list[bytes] = []
    real = loop.session.on_data

    def on_data(cid: int, data: bytes | memoryview, *, now: float) -> None:
        got.append(bytes(data))
        real(cid, data, now=now)

    monkeypatch.setattr(loop.session, "on_data", on_data)
    payloads = [bytes([i]) * (900 + i) for i in range(1, 9)]
    for i, payload in enumerate(payloads):  # seq 2.. after the SYN's 1, all queued before the loop reads
        hdr = HEADER_STRUCT.pack((ST_DATA << 4) | UTP_VERSION, 0, recv_id + 1, 200 + i, 0, 65536, 2 + i, their_seq - 1)
        udp.sendto(hdr + payload, dst)
    run_loop(loop, clock, lambda: sum(map(len, got)) >= sum(map(len, payloads)))
    assert b"".join(got) == b"".join(payloads)


def test_utp_connect_timeout_falls_back_to_tcp(loop: EventLoop, clock: FakeClock) -> None:
    """Dial a UDP port that never answers; after connect_timeout_s (fake clock) the loop dials TCP."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]  # its UDP twin is closed: the SYNs go nowhere
    s = loop.session
    src = Path(__file__)  # any file: a torrent to dial for
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384))
    try:
        with tempfile.TemporaryDirectory() as d:
            t = s.add_torrent(meta, d, mode="download", resume_path=None, now=clock.now())
            cid = s.dial(t, ("127.0.0.1", port), PeerSource.USER, now=clock.now())
            assert cid is not None
            loop.run_once()
            assert loop.utp_stats()["utp_dials"] == 1 and loop.counters["dials"] == 1
            clock.advance(1.5)
            run_loop(loop, clock, lambda: loop.counters["dials"] >= 2)
            assert loop.counters["dials"] == 2 and s.conns[cid].transport == "tcp"
            ls.settimeout(2.0)
            a, _ = ls.accept()
            run_loop(loop, clock, lambda: s.conns[cid].established)
            a.settimeout(2.0)
            assert a.recv(68)[:20] == b"\x13BitTorrent protocol"
            a.close()
    finally:
        ls.close()
