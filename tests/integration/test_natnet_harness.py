"""The NAT harness (tests/integration/natnet.py): the topology, that its NATs behave like home routers
(outbound works, unsolicited inbound is dropped, port-preserving endpoint-independent UDP mapping), and
that libtorrent peers behind two of them meet by BEP 55 holepunching through a relay on the public side.

Root, iproute2 and nftables are needed (skipped otherwise, failed when CI is set); the libtorrent tests
also need the libtorrent bindings.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clients import LibtorrentPeer, MadeTorrent, assert_same_tree, make_payload, make_torrent, wait_until
from natnet import (
    BT_PORT,
    NatNet,
    lt_log,
    need_libtorrent,
    peer_entry,
    start_lt,
    start_lt_relay,
    start_minibt,
    wait_for,
    wait_lt_connected,
)

NEVER_S = 1.5  # "nothing arrives": a datagram across these veths takes well under a millisecond
HOLEPUNCH_TIMEOUT_S = 40.0


def test_topology_addresses_sealed_and_torn_down(tmp_path: Path) -> None:
    from natnet import need_netns

    need_netns()
    net = NatNet(lan_hosts=2, public_hosts=2)
    with net:
        assert sorted(net.hosts) == ["a1", "a2", "b1", "b2", "inet", "nat-a", "nat-b", "pub1", "pub2"]
        assert (net.a.ip, net.a.public_ip) == ("10.0.1.2", "198.18.1.1")
        assert (net.lan("a", 2).ip, net.b.ip, net.b.public_ip) == ("10.0.1.3", "10.0.2.2", "198.18.2.1")
        assert (net.relay.ip, net.public(2).ip) == ("198.18.101.1", "198.18.102.1")
        assert (net.nat_a.ip, net.nat_b.ip) == ("198.18.1.1", "198.18.2.1")
        assert net.existing() == net.namespaces
        net.assert_sealed()
        default = [r for r in net.routes(net.a) if r.get("dst") == "default"]
        assert [r.get("gateway") for r in default] == ["10.0.1.1"]
        addr = net.run(net.a, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        assert "10.0.1.2/24" in addr
        # A registered process is stopped, an unregistered one is killed by PID, all namespaces go.
        spawned = net.spawn(net.b, tmp_path / "sleeper", [sys.executable, "-u", "-c",
                                                          "print('up', flush=True); import time; time.sleep(600)"],
                            name="sleeper", ready="up")
        stray = subprocess.Popen(net.exec_argv(net.relay, [sys.executable, "-c", "import time; time.sleep(600)"]))
        try:
            wait_until(lambda: stray.pid in net.pids() and spawned.pid in net.pids(), 10, "both inside")
        finally:
            net.destroy()
            rc = stray.wait(timeout=10)
        assert rc == -9, f"the stray process was not killed: {rc}"
        assert spawned.returncode() is not None
        assert net.existing() == []
        net.destroy()  # idempotent


def test_lan_hosts_reach_public_hosts_through_their_nat(nat_net: NatNet, tmp_path: Path) -> None:
    net = nat_net
    server = net.probe_server(net.relay, tmp_path / "srv", 7000)
    for host, sport in ((net.a, 5555), (net.b, 5556)):
        tcp = net.probe_tcp(host, net.relay.ip, 7000, sport=sport)
        assert tcp["ok"], tcp
        udp = net.probe_udp(host, net.relay.ip, 7000, sport=sport, data=f"from {host.name}")
        assert udp == {"ok": True, "from": [net.relay.ip, 7000], "data": f"re:from {host.name}"}
    seen = [(e["event"], e["ip"], e["port"]) for e in server.events()]
    # Masqueraded to the router's WAN address, source port preserved.
    assert seen == [("tcp", "198.18.1.1", 5555), ("udp", "198.18.1.1", 5555),
                    ("tcp", "198.18.2.1", 5556), ("udp", "198.18.2.1", 5556)]
    assert net.counters("a")["lan_out"] >= 2 and net.counters("b")["lan_out"] >= 2


def test_public_hosts_cannot_reach_a_lan_host(nat_net: NatNet, tmp_path: Path) -> None:
    net = nat_net
    server = net.probe_server(net.a, tmp_path / "srv", 7001)
    before = net.counters("a")
    # To NAT-A's public address on the port a1 listens on: no port forward.
    assert not net.probe_tcp(net.relay, net.nat_a.ip, 7001)["ok"]
    assert net.probe_udp(net.relay, net.nat_a.ip, 7001) == {"ok": False, "error": "timeout"}
    # To a1's own address, routed to NAT-A by a public host on its segment: the router does not forward.
    net.run(net.relay, ["ip", "route", "add", "10.0.1.0/24", "via", net.nat_a.ip])
    assert not net.probe_tcp(net.relay, net.a.ip, 7001)["ok"]
    assert net.probe_udp(net.relay, net.a.ip, 7001) == {"ok": False, "error": "timeout"}
    after = net.counters("a")
    assert server.events() == []
    # Dropped by the NAT's filter, not lost for another reason (TCP may retransmit its SYN).
    assert after["wan_in_dropped"] - before["wan_in_dropped"] >= 2, (before, after)
    assert after["wan_fwd_dropped"] - before["wan_fwd_dropped"] >= 2, (before, after)
    # The server still answers from inside.
    assert net.probe_udp(net.lan("a"), "127.0.0.1", 7001)["ok"]


def test_lan_hosts_behind_different_nats_cannot_reach_each_other(nat_net: NatNet, tmp_path: Path) -> None:
    net = nat_net
    server = net.probe_server(net.b, tmp_path / "srv", 7002)
    before = net.dropped("b")
    for ip in (net.b.ip, net.nat_b.ip):  # b1's private address, NAT-B's public address
        assert not net.probe_tcp(net.a, ip, 7002)["ok"]
        assert net.probe_udp(net.a, ip, 7002) == {"ok": False, "error": "timeout"}
    # Even when NAT-A routes 10.0.2.0/24 to NAT-B, NAT-B forwards nothing unsolicited.
    net.run(net.nat_a, ["ip", "route", "add", "10.0.2.0/24", "via", net.nat_b.ip])
    assert not net.probe_tcp(net.a, net.b.ip, 7002)["ok"]
    assert net.probe_udp(net.a, net.b.ip, 7002) == {"ok": False, "error": "timeout"}
    assert server.events() == []
    assert net.dropped("b") - before >= 4


def test_udp_mapping_is_port_preserving_and_endpoint_independent_filtering_port_dependent(
        nat_net: NatNet, tmp_path: Path) -> None:
    """RFC 4787 terms: endpoint-independent mapping (the same public port towards every remote endpoint,
    here even the same number as inside), address-and-port-dependent filtering."""
    net = nat_net
    inside = net.probe_server(net.a, tmp_path / "a1", 7003)
    pub1 = net.probe_server(net.relay, tmp_path / "pub1", 7010)
    pub2 = net.probe_server(net.public(2), tmp_path / "pub2", 7011)
    inside.send_udp(net.relay.ip, 7010, "one")
    inside.send_udp(net.public(2).ip, 7011, "two")
    wait_until(lambda: pub1.events("udp") and pub2.events("udp"), 5, "both datagrams at the public hosts")
    assert [(e["ip"], e["port"]) for e in pub1.events("udp") + pub2.events("udp")] == [("198.18.1.1", 7003)] * 2
    # Their echoes (replies from the endpoints a1 sent to) get in.
    wait_until(lambda: len(inside.events("udp")) == 2, 5, "both echoes back at a1")
    assert sorted((e["ip"], e["port"]) for e in inside.events("udp")) == [("198.18.101.1", 7010),
                                                                          ("198.18.102.1", 7011)]
    # Same public host, another port; another host; TCP to the UDP mapping's port: all dropped.
    assert net.probe_udp(net.relay, net.nat_a.ip, 7003, sport=7099)["ok"] is False
    assert net.probe_udp(net.b, net.nat_a.ip, 7003)["ok"] is False
    assert net.probe_tcp(net.relay, net.nat_a.ip, 7003, sport=7010)["ok"] is False
    assert not wait_for(lambda: len(inside.events("udp")) > 2, NEVER_S)


def test_unsolicited_packet_arriving_first_does_not_spoil_the_mapping(nat_net: NatNet, tmp_path: Path) -> None:
    """The holepunch race: the peer's datagram reaches NAT-A before a1 sent its own. It is dropped and
    leaves no conntrack state, so a1's datagram to that peer still keeps its port, and from then on the
    peer's datagrams get in."""
    net = nat_net
    inside = net.probe_server(net.a, tmp_path / "a1", 7003)
    peer = net.probe_server(net.relay, tmp_path / "pub1", 7010)
    before = net.counters("a")["wan_in_dropped"]
    peer.send_udp(net.nat_a.ip, 7003, "early")
    wait_until(lambda: net.counters("a")["wan_in_dropped"] > before, 5, "NAT-A to drop the early datagram")
    inside.send_udp(net.relay.ip, 7010, "punch")
    wait_until(lambda: peer.events("udp"), 5, "a1's datagram at pub1")
    assert [(e["ip"], e["port"], e["data"]) for e in peer.events("udp")] == [("198.18.1.1", 7003, "punch")]
    peer.send_udp(net.nat_a.ip, 7003, "again")
    wait_until(lambda: any(e["data"] == "again" for e in inside.events("udp")), 5, "pub1's datagram at a1")
    assert all(e["data"] != "early" for e in inside.events("udp"))


def test_random_mapping_is_symmetric(make_natnet: Callable[..., NatNet], tmp_path: Path) -> None:
    """mapping="random" (masquerade fully-random): a new public port per remote endpoint."""
    net = make_natnet(mapping="random")
    inside = net.probe_server(net.a, tmp_path / "a1", 7003)
    pub1 = net.probe_server(net.relay, tmp_path / "pub1", 7010)
    pub2 = net.probe_server(net.public(2), tmp_path / "pub2", 7011)
    inside.send_udp(net.relay.ip, 7010)
    inside.send_udp(net.public(2).ip, 7011)
    wait_until(lambda: pub1.events("udp") and pub2.events("udp"), 5, "both datagrams at the public hosts")
    p1, p2 = pub1.events("udp")[0], pub2.events("udp")[0]
    assert p1["ip"] == p2["ip"] == "198.18.1.1"
    assert p1["port"] != p2["port"], "fully-random gave the same port twice"


# --------------------------------------------------------------------------------------------- clients


@pytest.fixture
def small_torrent(tmp_path: Path) -> tuple[Path, MadeTorrent]:
    payload = make_payload(tmp_path / "seed-data" / "payload", {"a.bin": 3 << 20, "d/b.bin": 1 << 20}, seed=55)
    return payload, make_torrent(payload, tmp_path / "payload.torrent")


def test_minibt_behind_a_nat_downloads_from_a_public_libtorrent_seed(
        nat_net: NatNet, tmp_path: Path, small_torrent: tuple[Path, MadeTorrent]) -> None:
    """start_minibt runs minibt inside a namespace: outbound through NAT-A works, over uTP and TCP."""
    need_libtorrent()
    net = nat_net
    payload, torrent = small_torrent
    seed = start_lt(net, net.public(2), tmp_path / "seed", torrent=torrent, save_dir=payload.parent, seed=True,
                    enable_tcp=True)
    seed.wait_complete(20)
    for transport in ("utp", "tcp"):
        m = start_minibt(net, net.a, tmp_path / f"m-{transport}", command="download", torrent=torrent,
                         data_dir=tmp_path / f"m-{transport}" / "data", peers=[(net.public(2).ip, BT_PORT)],
                         extra_args=["--transport", transport], timeout_s=30)
        assert m.wait_exit(40) == 0, m.log_tail()
        assert_same_tree(payload, tmp_path / f"m-{transport}" / "data" / payload.name)
        m.stop()

    # uTP from minibt's listen port, preserved by the NAT (what a holepunch relay needs); TCP from another
    # port. From the seed's alert log: its peer list may never sample connections this short.
    wait_until(lambda: lt_log(seed, rf"peer {net.nat_a.ip}:{BT_PORT} incoming connection to peer \(uTP\)")
               and lt_log(seed, rf"peer {net.nat_a.ip}:(?!{BT_PORT}\b)\d+ incoming connection to peer \(TCP\)"),
               5, "both connections in the seed's log", [seed])


def _holepunch_swarm(net: NatNet, tmp_path: Path, payload: Path,
                     torrent: MadeTorrent) -> tuple[LibtorrentPeer, LibtorrentPeer]:
    """libtorrent relay on pub1, libtorrent seed on b1 that knows only the relay; returns (relay, seed)
    once the relay holds the seed's uTP connection from its listen port."""
    relay = start_lt_relay(net, tmp_path / "relay", torrent=torrent)
    # pex=False: a seed with PEX would learn the leecher from the relay and dial it while the leecher
    # dials the seed; two simultaneous uTP dials cross these NATs without any BEP 55 message (measured:
    # data after 0.9 s). Without PEX the seed hears of the leecher only through the relay's `connect`.
    seed = start_lt(net, net.b, tmp_path / "seed", torrent=torrent, save_dir=payload.parent, seed=True,
                    pex=False, peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
    seed.wait_complete(20)
    wait_lt_connected(relay, net.nat_b.ip, BT_PORT, utp=True)
    return relay, seed


def test_libtorrent_holepunch_between_two_nats(nat_net: NatNet, tmp_path: Path,
                                               small_torrent: tuple[Path, MadeTorrent],
                                               record_property: Callable[[str, object], None]) -> None:
    """Leecher on a1 told only the relay's address; the seed's endpoint comes by the relay's PEX; direct
    uTP dials fail at NAT-B; the leecher sends a rendezvous, the relay `connect`s both, and every byte
    comes straight from the seed over uTP."""
    need_libtorrent()
    net = nat_net
    payload, torrent = small_torrent
    relay, seed = _holepunch_swarm(net, tmp_path, payload, torrent)
    dropped_b = net.dropped("b")
    t0 = time.monotonic()
    leech = start_lt(net, net.a, tmp_path / "leech", torrent=torrent, save_dir=tmp_path / "leech" / "data",
                     peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
    first_byte_s: list[float] = []

    def done() -> bool:
        e = peer_entry(leech, net.nat_b.ip, BT_PORT)
        if not first_byte_s and e is not None and e.get("total_download", 0) > 0:
            first_byte_s.append(time.monotonic() - t0)
        return leech.status().get("is_seeding") is True

    wait_until(done, HOLEPUNCH_TIMEOUT_S, "leecher complete", [leech, seed, relay])
    complete_s = time.monotonic() - t0
    assert_same_tree(payload, tmp_path / "leech" / "data" / payload.name)

    seed_ep = rf"{net.nat_b.ip}:{BT_PORT}"
    # Every byte from the seed's public endpoint over uTP, none from the relay (it has none to give).
    # (The connection stays open: LT_NAT_SETTINGS keeps "redundant" ones; the status line may lag.)
    wait_until(lambda: (peer_entry(leech, net.nat_b.ip, BT_PORT) or {}).get("total_download", 0)
               >= torrent.total_size, 5, "the seed's share in the leecher's peer list", [leech])
    entry = peer_entry(leech, net.nat_b.ip, BT_PORT)
    assert entry is not None and entry["utp"] and "pex" in entry["sources"], entry
    relay_entry = peer_entry(leech, net.relay.ip, BT_PORT)
    assert relay_entry is not None and relay_entry["total_download"] == 0, relay_entry
    assert relay.status()["total_payload_upload"] == 0
    # The direct dials failed (NAT-B dropped them), then BEP 55 did it.
    failed = lt_log(leech, rf"peer {seed_ep} \*\*\* CONNECTION_FAILED")
    rendezvous = lt_log(leech, rf"==> HOLEPUNCH \[ msg: rendezvous to: {net.nat_b.ip}\b")
    connect = lt_log(leech, rf"<== HOLEPUNCH \[ msg:connect to: {net.nat_b.ip}\b")
    pieces = lt_log(leech, rf"peer {seed_ep} <== PIECE")
    assert failed and rendezvous and connect and pieces, leech.log_tail()
    assert failed[0][0] <= rendezvous[0][0] <= connect[0][0] <= pieces[0][0]
    assert net.dropped("b") > dropped_b
    assert lt_log(relay, rf"<== HOLEPUNCH \[ msg: rendezvous to: {net.nat_b.ip}\b")
    assert lt_log(relay, rf"==> HOLEPUNCH \[ msg: connect to: {net.nat_a.ip}\b")
    assert lt_log(seed, rf"<== HOLEPUNCH \[ msg:connect to: {net.nat_a.ip}\b"), seed.log_tail()

    timing = {
        "leecher start -> first data from seed (s, wall clock, 0.25 s status resolution)":
            round(first_byte_s[0] if first_byte_s else complete_s, 2),
        "leecher start -> complete (s, wall clock)": round(complete_s, 2),
        "leecher session -> seed learnt by PEX (s)": lt_log(leech, rf"{seed_ep} >>> CONNECTION \[")[0][0],
        "leecher session -> first failed dial to seed (s)": failed[0][0],
        "leecher session -> rendezvous sent (s)": rendezvous[0][0],
        "first failed dial -> first block from seed (s)": round(pieces[0][0] - failed[0][0], 3),
        "rendezvous -> first block from seed (s)": round(pieces[0][0] - rendezvous[0][0], 3),
    }
    for k, v in timing.items():
        record_property(k, v)
    print(f"\nlibtorrent holepunch through two NATs: {timing}")


def test_libtorrent_holepunch_fails_through_symmetric_nats(make_natnet: Callable[..., NatNet], tmp_path: Path,
                                                           small_torrent: tuple[Path, MadeTorrent]) -> None:
    """With mapping="random" the relay sees the seed on a random port, not its listen port: the
    leecher's rendezvous for the PEX endpoint (listen port) finds no such connection (error 2,
    NotConnected) and no byte flows. The control for the test above: port preservation is what works."""
    need_libtorrent()
    net = make_natnet(mapping="random")
    payload, torrent = small_torrent
    relay = start_lt_relay(net, tmp_path / "relay", torrent=torrent)
    seed = start_lt(net, net.b, tmp_path / "seed", torrent=torrent, save_dir=payload.parent, seed=True,
                    pex=False, peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
    seed.wait_complete(20)
    wait_until(lambda: any(p["ip"] == net.nat_b.ip and not p["handshake"] for p in relay.status().get("peers", [])),
               20, "seed connected to the relay", [relay, seed])
    seen_port = next(p["port"] for p in relay.status()["peers"] if p["ip"] == net.nat_b.ip)
    leech = start_lt(net, net.a, tmp_path / "leech", torrent=torrent, save_dir=tmp_path / "leech" / "data",
                     peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
    wait_until(lambda: lt_log(relay, rf"==> HOLEPUNCH \[ msg: failed to: {net.nat_b.ip} ERROR: not connected"),
               HOLEPUNCH_TIMEOUT_S, "the relay's NotConnected answer to the rendezvous for the seed",
               [leech, seed, relay])
    # (The leecher logs its rendezvous when its loop picks the alert up: maybe after the relay's answer.)
    wait_until(lambda: lt_log(leech, rf"==> HOLEPUNCH \[ msg: rendezvous to: {net.nat_b.ip}\b"), 5,
               "the leecher's rendezvous in its log", [leech])
    assert not lt_log(relay, r"==> HOLEPUNCH \[ msg: connect to:")
    entry = peer_entry(leech, net.nat_b.ip)
    assert entry is None or entry["total_download"] == 0, entry
    assert leech.status()["total_payload_download"] == 0
    print(f"\nsymmetric NAT: relay saw the seed at {net.nat_b.ip}:{seen_port}, PEX said port {BT_PORT}")
