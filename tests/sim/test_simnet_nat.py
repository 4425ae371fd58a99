"""The simulated network's transports and NATs (tests/sim/simnet.py), proven with plain minibt sessions.

No holepunching exists here: these tests pin down what the model lets through, so that the BEP 55
tests built on it start from a NAT that behaves like a home router (endpoint-independent,
port-preserving mapping of the uTP socket; no port forwards; inbound uTP only through a hole the
inside peer punched by sending to that endpoint within ``HOLE_LIFETIME_S``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import (
    HOLE_LIFETIME_S,
    TCP_CONNECT_TIMEOUT_S,
    UTP_CONNECT_TIMEOUT_S,
    UTP_SYN_INTERVAL_S,
    UTP_SYN_SENDS,
    KiB,
    LinkSpec,
    MiB,
    Nat,
    SimNet,
    SimPeer,
    make_payload,
    make_torrent,
    same_files,
)

from minibt.errors import CloseReason
from minibt.metainfo import Metainfo
from minibt.settings import SessionConfig, TorrentConfig, TorrentState, Transport

A_PUB = "203.0.113.1"  # NAT A's public address (RFC 5737 documentation ranges)
B_PUB = "198.51.100.1"  # NAT B's
PUBLIC_SEED = "192.0.2.10"
PUBLIC_LEECH = "192.0.2.20"
LAN_IP = "192.168.1.2"  # the same private address behind both NATs: two separate LANs
SLOW = LinkSpec(up_Bps=128 * KiB, latency_s=0.03)  # ~8 s for the payload: overlapping connections show


@pytest.fixture
def meta(tmp_path: Path) -> Metainfo:
    make_payload(tmp_path / "src" / "p", {"a.bin": MiB + 333}, seed=5)
    return make_torrent(tmp_path / "src" / "p", 32 * KiB)


def cfg(*transports: str) -> SessionConfig:
    return SessionConfig(torrent=TorrentConfig(fsync=False), transports=tuple(Transport(t) for t in transports))


def seed_at(net: SimNet, meta: Metainfo, tmp: Path, ip: str, *, nat: Nat | None = None,
            transports: tuple[str, ...] = ("tcp", "utp")) -> SimPeer:
    p = net.add_peer("seed", ip, config=cfg(*transports), nat=nat)
    net.add_torrent(p, meta, tmp / "src", mode="seed")
    return p


def leech_at(net: SimNet, meta: Metainfo, tmp: Path, ip: str, *, nat: Nat | None = None,
             transports: tuple[str, ...] = ("tcp", "utp")) -> SimPeer:
    p = net.add_peer("leech", ip, config=cfg(*transports), nat=nat)
    net.add_torrent(p, meta, tmp / "dl", mode="download")
    return p


def log_of(net: SimNet, name: str, what: str) -> list[tuple[float, int, str]]:
    return [(t, cid, detail) for t, ep, cid, w, detail in net.log if ep == name and w == what]


def two_nats(tmp: Path, clock: FakeClock, meta: Metainfo, *, link: LinkSpec | None = None,
             transports: tuple[str, ...] = ("utp",)) -> tuple[SimNet, SimPeer, SimPeer, Nat, Nat]:
    """Leech behind NAT A, seed behind NAT B, nobody told about anybody (no tracker)."""
    net = SimNet(clock, random.Random(1), tracker=False, link=link)
    nat_a, nat_b = net.add_nat("A", A_PUB), net.add_nat("B", B_PUB)
    seed = seed_at(net, meta, tmp, LAN_IP, nat=nat_b, transports=transports)
    leech = leech_at(net, meta, tmp, LAN_IP, nat=nat_a, transports=transports)
    return net, seed, leech, nat_a, nat_b


# ---------------------------------------------------------------------- through one NAT


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.UTP])
def test_natted_leecher_downloads_from_public_seed(tmp_path: Path, clock: FakeClock, meta: Metainfo,
                                                   transport: Transport) -> None:
    net = SimNet(clock, random.Random(2))  # with the tracker: each learns the other's address
    nat = net.add_nat("A", A_PUB)
    seed = seed_at(net, meta, tmp_path, PUBLIC_SEED, transports=(transport,))
    leech = leech_at(net, meta, tmp_path, LAN_IP, nat=nat, transports=(transport,))
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 120)
    assert same_files(meta, tmp_path / "src", tmp_path / "dl")
    (conn,) = [c for c in net.connections(seed) if not c.outgoing]
    assert conn.transport is transport and net.transport_of(seed, conn.cid) is transport
    assert conn.remote[0] == A_PUB  # the seed sees the NAT, never the private address
    if transport is Transport.UTP:
        assert conn.remote == net.public_addr(leech) == (A_PUB, 6881)  # port-preserving uTP mapping
    else:
        assert conn.remote[1] != 6881  # an ephemeral port for outgoing TCP
    assert all(c.addr == conn.remote and c.transport == transport for c in seed.seen.values() if not c.outgoing)
    assert any(d == f"{conn.remote[0]}:{conn.remote[1]} {transport}" for _, _, d in log_of(net, "seed", "accept"))
    assert net.tracker is not None and (A_PUB, 6881) in {a for a, _ in net.tracker.announces}
    # the seed got the leecher's public address from the tracker too: its dials back end at the NAT
    assert not any(c.outgoing for c in net.connections(seed))


def test_peers_behind_the_same_nat_connect_by_private_address(tmp_path: Path, clock: FakeClock,
                                                               meta: Metainfo) -> None:
    net = SimNet(clock, random.Random(3), tracker=False)
    nat = net.add_nat("A", A_PUB)
    seed = seed_at(net, meta, tmp_path, "192.168.1.3", nat=nat)
    leech = leech_at(net, meta, tmp_path, LAN_IP, nat=nat)
    net.add_peers(leech, [seed.addr])
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    (conn,) = [c for c in net.connections(seed) if not c.outgoing]
    assert conn.remote[0] == LAN_IP
    assert nat.stats()["tcp_out"] == nat.stats()["tcp_dropped"] == 0


# ---------------------------------------------------------------------- what a NAT keeps out


@pytest.mark.parametrize("transports", [("tcp", "utp"), ("utp", "tcp"), ("utp",)])
def test_public_peer_cannot_dial_natted_seed(tmp_path: Path, clock: FakeClock, meta: Metainfo,
                                             transports: tuple[str, ...]) -> None:
    net = SimNet(clock, random.Random(4), tracker=False)
    nat = net.add_nat("B", B_PUB)
    seed = seed_at(net, meta, tmp_path, LAN_IP, nat=nat, transports=transports)
    leech = leech_at(net, meta, tmp_path, PUBLIC_LEECH, transports=transports)
    # its public endpoint (what a tracker would hand out) and its private address (what it might say in PEX)
    net.add_peers(leech, [net.announced_addr(seed), seed.addr])
    net.run_for(300)
    assert leech.torrent.have.count() == 0
    assert net.connections(seed) == [] and net.connections(leech) == []
    dropped = [d for _, _, d in log_of(net, "leech", "dropped")]
    assert any(f"NAT {nat.name}" in d for d in dropped)
    assert any("private address" in d for d in dropped)
    st = nat.stats()
    assert st["tcp_dropped" if transports[0] == "tcp" else "utp_dropped"] > 0 and st["utp_passed"] == 0
    assert {r for _, r in leech.close_reasons()} <= {CloseReason.CONNECT_FAILED, CloseReason.HANDSHAKE_TIMEOUT}


@pytest.mark.parametrize("transports", [("tcp", "utp"), ("utp", "tcp")])
def test_two_natted_peers_cannot_reach_each_other_by_dialling(tmp_path: Path, clock: FakeClock, meta: Metainfo,
                                                              transports: tuple[str, ...]) -> None:
    net, seed, leech, nat_a, nat_b = two_nats(tmp_path, clock, meta, transports=transports)
    net.add_peers(leech, [net.announced_addr(seed), seed.addr])  # seed.addr is also the leech's own LAN address
    net.run_for(300)
    assert leech.torrent.have.count() == 0
    assert net.connections(seed) == [] and net.connections(leech) == []
    assert nat_b.stats()["tcp_dropped"] + nat_b.stats()["utp_dropped"] > 0
    assert nat_a.stats()["tcp_dropped"] == nat_a.stats()["utp_dropped"] == 0


def test_tcp_into_a_nat_fails_after_the_connect_timeout(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    """A dropped SYN ends as the kernel ends it (ETIMEDOUT -> CONNECT_FAILED); minibt's handshake timer
    (MSE_DIAL_TIMEOUT_S 10 s) normally closes the dial first, so a short timeout shows the fallback."""
    net = SimNet(clock, random.Random(5), tracker=False, tcp_connect_timeout_s=5.0)
    nat = net.add_nat("B", B_PUB)
    seed_at(net, meta, tmp_path, LAN_IP, nat=nat)
    raw = net.add_raw("raw", PUBLIC_LEECH, meta, mode="snub")
    leech = leech_at(net, meta, tmp_path, "192.0.2.30", transports=("tcp", "utp"))
    t0 = net.now
    rcid = net.dial(raw, (B_PUB, 6881))
    net.add_peers(leech, [(B_PUB, 6881)])
    net.run_for(10.0)
    assert raw.closed == [(rcid, CloseReason.CONNECT_FAILED)]
    (t_fail, _, detail), *_ = log_of(net, "raw", "connect-failed")
    assert t_fail == pytest.approx(t0 + 5.0) and detail.startswith("ETIMEDOUT")
    # the session moved the same dial on to uTP at once, which timed out in turn (no hole)
    dials = log_of(net, "leech", "dial")
    assert [d.split()[1] for _, _, d in dials[:2]] == ["tcp", "utp"]
    fails = log_of(net, "leech", "connect-failed")
    assert [d for _, _, d in fails[:2]] == ["ETIMEDOUT tcp", "uTP connect timed out utp"]
    assert fails[1][0] - fails[0][0] == pytest.approx(UTP_CONNECT_TIMEOUT_S)
    assert TCP_CONNECT_TIMEOUT_S == SimNet(clock, random.Random(0)).tcp_connect_timeout_s


def test_utp_needs_utp_in_the_listeners_transports(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    """As minibt's loop: without "utp" a session has no uTP socket, so SYNs to it go unanswered and
    a uTP dial from it fails at once; TCP is accepted whatever the transports say."""
    net = SimNet(clock, random.Random(6), tracker=False)
    seed = seed_at(net, meta, tmp_path, PUBLIC_SEED, transports=("tcp",))
    leech = leech_at(net, meta, tmp_path, PUBLIC_LEECH, transports=("utp", "tcp"))
    raw = net.add_raw("raw", "192.0.2.30", meta, mode="silent", utp=False)
    t0 = net.now
    net.add_peers(leech, [seed.addr])
    rcid = net.dial(raw, seed.addr, Transport.UTP)
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    assert raw.closed == [(rcid, CloseReason.CONNECT_FAILED)]
    (t_fail, _, detail), = log_of(net, "leech", "connect-failed")
    assert detail == "uTP connect timed out utp" and t_fail == pytest.approx(t0 + UTP_CONNECT_TIMEOUT_S)
    assert sum("has no uTP" in d for _, _, d in log_of(net, "leech", "dropped")) == UTP_SYN_SENDS
    assert [c.transport for c in net.connections(seed)] == [Transport.TCP]


# ---------------------------------------------------------------------- holes


def test_utp_dial_gets_through_the_hole_the_seed_punched(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    net, seed, leech, nat_a, nat_b = two_nats(tmp_path, clock, meta)
    assert net.session_dial(seed, net.public_addr(leech)) is not None
    net.run_for(UTP_CONNECT_TIMEOUT_S + 0.5)
    assert (A_PUB, CloseReason.CONNECT_FAILED) in seed.close_reasons()  # NAT A has no hole for the seed
    assert nat_a.stats()["utp_dropped"] == UTP_SYN_SENDS
    net.run_for(HOLE_LIFETIME_S / 2)
    t_dial = net.now
    assert net.session_dial(leech, net.public_addr(seed)) is not None
    net.must_run_until(lambda: bool(net.connections(seed)), 1.0)
    (conn,) = net.connections(seed)
    assert not conn.outgoing and conn.remote == net.public_addr(leech) and conn.transport is Transport.UTP
    assert log_of(net, "seed", "accept")[0][0] == pytest.approx(t_dial + leech.link.latency_s)
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    assert same_files(meta, tmp_path / "src", tmp_path / "dl")
    assert nat_b.stats()["utp_passed"] >= 1


def test_simultaneous_utp_dials_both_connect(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    """Each side's SYN punches its own NAT; the first SYN into the other NAT may be dropped, a resend
    gets through.  Both directions come up (two connections); minibt must keep one."""
    net, seed, leech, _, _ = two_nats(tmp_path, clock, meta, link=SLOW)
    net.session_dial(seed, net.public_addr(leech))
    net.run_for(0.3)
    net.session_dial(leech, net.public_addr(seed))
    net.must_run_until(lambda: len(net.connections(seed)) == 2, UTP_CONNECT_TIMEOUT_S)
    out_seed, in_seed = sorted(net.connections(seed), key=lambda c: not c.outgoing)
    assert out_seed.outgoing and out_seed.remote == net.public_addr(leech)
    assert not in_seed.outgoing and in_seed.remote == net.public_addr(leech)
    assert {(c.outgoing, c.remote) for c in net.connections(leech)} == {
        (True, net.public_addr(seed)), (False, net.public_addr(seed))}
    # the seed's first SYN was dropped at NAT A, its resend one interval later went through
    (t_accept, _, _), = log_of(net, "leech", "accept")
    (t_dial, _, _), = log_of(net, "seed", "dial")[:1]
    assert t_accept == pytest.approx(t_dial + UTP_SYN_INTERVAL_S + SLOW.latency_s)
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    assert same_files(meta, tmp_path / "src", tmp_path / "dl")


@pytest.mark.parametrize(("wait_s", "through"), [(HOLE_LIFETIME_S - 5, True), (HOLE_LIFETIME_S + 1, False)])
def test_hole_expires_after_its_lifetime(tmp_path: Path, clock: FakeClock, meta: Metainfo,
                                         wait_s: float, through: bool) -> None:
    net, seed, leech, _, nat_b = two_nats(tmp_path, clock, meta)
    t_punch = net.now
    net.session_dial(seed, net.public_addr(leech))
    last_syn = t_punch + (UTP_SYN_SENDS - 1) * UTP_SYN_INTERVAL_S
    net.run_for(last_syn + wait_s - net.now)
    assert len(log_of(net, "seed", "dial")) == 1  # nothing else punched NAT B meanwhile
    net.session_dial(leech, net.public_addr(seed))
    net.run_for(UTP_CONNECT_TIMEOUT_S + 0.5)
    if through:
        assert [c.outgoing for c in net.connections(leech)] == [True]
        assert nat_b.stats()["utp_passed"] == 1
    else:
        assert net.connections(leech) == [] and net.connections(seed) == []
        assert (B_PUB, CloseReason.CONNECT_FAILED) in leech.close_reasons()
        assert nat_b.stats()["utp_dropped"] == UTP_SYN_SENDS and nat_b.stats()["utp_passed"] == 0
