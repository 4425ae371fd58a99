"""Issue 14: BEP 55 holepunching with real NATs (tests/integration/natnet.py) and libtorrent.

Two home routers (nftables masquerade, no port forwards, unsolicited inbound dropped) and a public
side. In each scenario the NATed peers are told only the relay's address; the other NATed peer's
endpoint comes from the relay's PEX; direct dials die at the other NAT; the relay's `connect` makes
both sides open uTP at once, and the data flows directly between the two NATed peers:

1. minibt behind NAT-A downloads from a libtorrent seed behind NAT-B through a libtorrent relay
   (minibt is the initiator);
2. a libtorrent leecher behind NAT-A downloads from a minibt seed behind NAT-B the same way (minibt is
   the target);
3. minibt is the relay between two libtorrent peers behind the two NATs.

The seed never takes PEX (libtorrent ``pex=False``, minibt ``--no-pex``): otherwise it would hear of
the leecher from the relay and dial it at the same moment the leecher dials it, and the two crossing
uTP dials get through these NATs without any BEP 55 message (natnet.py). Every process binds its
host's address; nothing leaves the namespaces the test creates.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clients import MadeTorrent, assert_same_tree, make_payload, make_torrent, wait_until
from natnet import (
    BT_PORT,
    NatNet,
    lt_log,
    need_libtorrent,
    peer_entry,
    start_lt,
    start_lt_relay,
    start_minibt,
    wait_lt_connected,
)

DEADLINE_S = 60.0
MINIBT_UTP_FIRST = ["--transport", "utp,tcp", "-v"]  # the relay must see our uTP endpoint (PROTOCOL.md 7.7)


@pytest.fixture
def swarm_torrent(tmp_path: Path) -> tuple[Path, MadeTorrent]:
    payload = make_payload(tmp_path / "seed-data" / "payload", {"a.bin": 3 << 20, "d/b.bin": 1 << 20}, seed=77)
    return payload, make_torrent(payload, tmp_path / "payload.torrent")


def log_times(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


def stamp(line: str) -> float:
    """Seconds of the day of a minibt log line ('2026-12-05 03:50:26,641 INFO ...')."""
    m = re.match(r"\S+ (\d+):(\d+):(\d+),(\d+) ", line)
    assert m, line
    h, mi, sec, ms = (int(x) for x in m.groups())
    return h * 3600 + mi * 60 + sec + ms / 1000


def test_minibt_behind_nat_downloads_from_a_natted_libtorrent_seed_through_a_libtorrent_relay(
        nat_net: NatNet, tmp_path: Path, swarm_torrent: tuple[Path, MadeTorrent],
        record_property: Callable[[str, object], None]) -> None:
    need_libtorrent()
    net = nat_net
    payload, torrent = swarm_torrent
    relay = start_lt_relay(net, tmp_path / "relay", torrent=torrent)
    seed = start_lt(net, net.b, tmp_path / "seed", torrent=torrent, save_dir=payload.parent, seed=True,
                    pex=False, peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
    seed.wait_complete(20)
    wait_lt_connected(relay, net.nat_b.ip, BT_PORT, utp=True)
    dropped_b = net.dropped("b")
    t0 = time.monotonic()
    mb = start_minibt(net, net.a, tmp_path / "mb", command="download", torrent=torrent,
                      data_dir=tmp_path / "mb" / "data", peers=[(net.relay.ip, BT_PORT)],
                      extra_args=MINIBT_UTP_FIRST, timeout_s=DEADLINE_S)
    assert mb.wait_exit(DEADLINE_S + 10) == 0, mb.log_tail()
    took = time.monotonic() - t0
    assert_same_tree(payload, tmp_path / "mb" / "data" / payload.name)
    text = mb.log_text()
    seed_ep = f"{net.nat_b.ip}:{BT_PORT}"
    # minibt's dials to the seed died at NAT-B, it asked the relay, and the relay's connect got it through
    assert net.dropped("b") > dropped_b
    asked = log_times(text, rf"holepunch: {re.escape(seed_ep)} unreachable: asked {re.escape(net.relay.ip)}")
    dialled = log_times(text, rf"holepunch: connect from {re.escape(net.relay.ip)}:\d+: dialling {re.escape(seed_ep)}")
    assert asked and dialled, mb.log_tail()
    assert lt_log(relay, rf"<== HOLEPUNCH \[ msg: rendezvous to: {net.nat_b.ip}\b"), relay.log_tail()
    assert lt_log(seed, rf"<== HOLEPUNCH \[ msg:connect to: {net.nat_a.ip}\b"), seed.log_tail()
    # the bytes came straight from the seed over uTP: the relay has nothing to give (the seed's peer
    # list is sampled, so its byte count may lag behind the end of the transfer)
    assert relay.status()["total_payload_upload"] == 0
    assert lt_log(seed, rf"peer {net.nat_a.ip}:{BT_PORT} ==> PIECE"), seed.log_tail()
    assert lt_log(seed, rf"peer {net.nat_a.ip}:{BT_PORT} (incoming|outgoing) connection to peer \(uTP\)")
    # seconds from the first failed dial to the seed until the download was complete (minibt's log)
    failed_at = stamp(log_times(text, rf"{re.escape(seed_ep)} \(#\d+\) over \w+: CONNECT_FAILED")[0])
    done_at = stamp(log_times(text, r"download complete")[0])
    record_property("first failed dial -> download complete (s)", round(done_at - failed_at, 2))
    record_property("minibt start -> download complete (s)", round(took, 2))
    print(f"\nminibt initiator: first failed dial -> complete {done_at - failed_at:.2f} s, start -> complete {took:.2f} s")


def test_libtorrent_behind_nat_downloads_from_a_natted_minibt_seed(
        nat_net: NatNet, tmp_path: Path, swarm_torrent: tuple[Path, MadeTorrent],
        record_property: Callable[[str, object], None]) -> None:
    need_libtorrent()
    net = nat_net
    payload, torrent = swarm_torrent
    relay = start_lt_relay(net, tmp_path / "relay", torrent=torrent)
    mb = start_minibt(net, net.b, tmp_path / "mb", command="seed", torrent=torrent, data_dir=payload.parent,
                      peers=[(net.relay.ip, BT_PORT)], extra_args=[*MINIBT_UTP_FIRST, "--no-pex"])
    wait_lt_connected(relay, net.nat_b.ip, BT_PORT, utp=True)
    t0 = time.monotonic()
    leech = start_lt(net, net.a, tmp_path / "leech", torrent=torrent, save_dir=tmp_path / "leech" / "data",
                     peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
    first: list[float] = []

    def done() -> bool:
        e = peer_entry(leech, net.nat_b.ip, BT_PORT)
        if not first and e is not None and e.get("total_download", 0) > 0:
            first.append(time.monotonic() - t0)
        return leech.status().get("is_seeding") is True

    wait_until(done, DEADLINE_S, "the libtorrent leecher complete", [leech, relay, mb])
    assert_same_tree(payload, tmp_path / "leech" / "data" / payload.name)
    failed = lt_log(leech, rf"peer {net.nat_b.ip}:{BT_PORT} \*\*\* CONNECTION_FAILED")
    rendezvous = lt_log(leech, rf"==> HOLEPUNCH \[ msg: rendezvous to: {net.nat_b.ip}\b")
    pieces = lt_log(leech, rf"peer {net.nat_b.ip}:{BT_PORT} <== PIECE")
    assert failed and rendezvous and pieces, leech.log_tail()
    assert failed[0][0] <= rendezvous[0][0] <= pieces[0][0]
    # minibt was the target: the relay's connect made it dial the leecher's endpoint over uTP
    dialled = log_times(mb.log_text(), rf"holepunch: connect from {re.escape(net.relay.ip)}:\d+: "
                                       rf"dialling {re.escape(net.nat_a.ip)}:{BT_PORT} over uTP")
    assert dialled, mb.log_tail()
    # The blocks came from that endpoint (the PIECE lines above) over uTP. Not its total_download:
    # with UDP GSO the whole payload can arrive and the seed-to-seed close follow within one of the
    # harness's 50 ms polls of the peer list, so the history may never see the connection's count.
    entry = peer_entry(leech, net.nat_b.ip, BT_PORT)
    assert entry is not None and entry["utp"], entry
    assert relay.status()["total_payload_upload"] == 0  # so every byte came from the minibt seed
    record_property("failed dial -> first block (s, libtorrent's log)", round(pieces[0][0] - failed[0][0], 2))
    print(f"\nminibt target: the leecher's first failed dial -> first block {pieces[0][0] - failed[0][0]:.2f} s")
    record_property("leecher start -> first data (s)", round(first[0], 2) if first else None)


def test_minibt_relays_between_two_natted_libtorrent_peers(
        nat_net: NatNet, tmp_path: Path, swarm_torrent: tuple[Path, MadeTorrent]) -> None:
    need_libtorrent()
    net = nat_net
    payload, torrent = swarm_torrent
    # the relay: minibt on the public side, a leecher like any other. The seed uploads at 128 KiB/s
    # in all, so the relay is still downloading (and connected to the seed) when the leecher comes.
    relay = start_minibt(net, net.relay, tmp_path / "relay", command="download", torrent=torrent,
                         data_dir=tmp_path / "relay" / "data", extra_args=["-v", "--seed"], timeout_s=DEADLINE_S + 30)
    seed = start_lt(net, net.b, tmp_path / "seed", torrent=torrent, save_dir=payload.parent, seed=True,
                    pex=False, peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"],
                    extra_settings={"upload_rate_limit": 128 * 1024})
    seed.wait_complete(20)
    wait_until(lambda: peer_entry(seed, net.relay.ip, BT_PORT) is not None, 20, "the seed connected to minibt",
               [seed, relay])
    leech = start_lt(net, net.a, tmp_path / "leech", torrent=torrent, save_dir=tmp_path / "leech" / "data",
                     peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
    wait_until(lambda: leech.status().get("is_seeding") is True, DEADLINE_S, "the libtorrent leecher complete",
               [leech, seed, relay])
    assert_same_tree(payload, tmp_path / "leech" / "data" / payload.name)
    text = relay.log_text()
    relayed = log_times(text, r"holepunch: relayed ")
    assert relayed and f"{net.nat_a.ip}:{BT_PORT}" in relayed[0] and f"{net.nat_b.ip}:{BT_PORT}" in relayed[0], \
        relay.log_tail()
    assert lt_log(leech, rf"<== HOLEPUNCH \[ msg:connect to: {net.nat_b.ip}\b"), leech.log_tail()
    assert lt_log(seed, rf"<== HOLEPUNCH \[ msg:connect to: {net.nat_a.ip}\b"), seed.log_tail()
    # the two libtorrent peers exchanged data directly, over uTP
    entry = peer_entry(leech, net.nat_b.ip, BT_PORT)
    assert entry is not None and entry["utp"] and entry["total_download"] > 0, entry
