"""Issue 13: what policy ``preferred`` learns per peer, and per-torrent policies, on the simulated network.

- an MSE dial refused right after connecting is retried once in plaintext; the peer is remembered,
  so the next dial goes plaintext first;
- a plaintext dial refused right after the handshake (the peer now requires encryption) is retried
  with MSE, and the peer is forgotten as plaintext-only;
- PEX flag 0x01 (prefers encryption) makes a remembered peer be dialled with MSE first;
- a connect that never came up is not retried with the other encryption, only on the next transport;
- a torrent's own policy overrides the session's, both ways.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import KiB, MiB, SimNet, SimPeer, make_payload, make_torrent, same_files

from minibt.errors import CloseReason
from minibt.metainfo import Metainfo
from minibt.peer import PeerSource
from minibt.pex import PexFlag
from minibt.settings import Encryption, SessionConfig, TorrentConfig, TorrentState

E = Encryption


def cfg(enc: Encryption, transports: tuple[str, ...] = ("tcp",)) -> SessionConfig:
    return SessionConfig(torrent=TorrentConfig(fsync=False), encryption=enc, transports=transports)


@pytest.fixture
def meta(tmp_path: Path) -> Metainfo:
    make_payload(tmp_path / "src" / "p", {"a.bin": MiB + 333}, seed=5)
    return make_torrent(tmp_path / "src" / "p", 32 * KiB)


def swarm(tmp: Path, clock: FakeClock, meta: Metainfo, seed_enc: Encryption, leech_enc: Encryption,
          seed_torrent_enc: Encryption | None = None) -> tuple[SimNet, SimPeer, SimPeer]:
    net = SimNet(clock, random.Random(9))
    seed = net.add_peer("seed", "127.0.0.2", config=cfg(seed_enc))
    leech = net.add_peer("leech", "127.0.0.3", config=cfg(leech_enc))
    net.add_torrent(seed, meta, tmp / "src", mode="seed",
                    config=TorrentConfig(fsync=False, encryption=seed_torrent_enc))
    net.add_torrent(leech, meta, tmp / "dl", mode="download")
    return net, seed, leech


def handshakes(p: SimPeer, ip: str) -> list[tuple[bool, bool]]:
    """(plaintext attempt, encrypted) of every connection to ``ip`` that completed the BT handshake."""
    return [(c.plaintext, c.encrypted) for c in p.seen.values() if c.ip == ip and c.peer_id is not None]


def test_mse_refused_retries_plaintext_then_dials_plaintext_first(tmp_path: Path, clock: FakeClock,
                                                                 meta: Metainfo) -> None:
    net, seed, leech = swarm(tmp_path, clock, meta, E.NONE, E.PREFERRED)
    net.add_peers(leech, [seed.addr])
    net.must_run_until(lambda: any(c.wire is not None for c in leech.session.conns.values()), 10)
    (conn,) = [c for c in leech.session.conns.values() if c.wire is not None]
    assert conn.plaintext and conn.crypto_switched and not conn.encrypted
    assert seed.addr in leech.session.admission.plain_only
    # the next dial of that peer goes plaintext at once: one attempt, no MSE bytes first
    leech.session.close(conn.cid, CloseReason.IDLE, "test: redial")
    net.run_for(0.5)
    cid = leech.session.dial(leech.torrent, seed.addr, PeerSource.USER, now=net.now)
    assert cid is not None
    leech.seen[cid] = leech.session.conns[cid]
    net.must_run_until(lambda: leech.seen[cid].peer_id is not None, 10)  # its BT handshake completed
    again = leech.seen[cid]
    assert again.plaintext and not again.crypto_switched and not again.encrypted
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    assert same_files(meta, tmp_path / "src", tmp_path / "dl")


def test_plaintext_refused_after_handshake_retries_with_mse(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    net, seed, leech = swarm(tmp_path, clock, meta, E.REQUIRED, E.PREFERRED)
    leech.session.admission.plain_only[seed.addr] = None  # it took plaintext once; it requires RC4 now
    net.add_peers(leech, [seed.addr])
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    assert same_files(meta, tmp_path / "src", tmp_path / "dl")
    # the first attempt was plaintext (refused by the seed), the same connection then went MSE
    assert handshakes(leech, "127.0.0.2")[0] == (False, True)
    first = min(c.cid for c in leech.seen.values() if c.ip == "127.0.0.2")
    assert leech.seen[first].crypto_switched
    assert (leech.addr[0], CloseReason.ENCRYPTION_FAILED) in seed.close_reasons()
    assert seed.addr not in leech.session.admission.plain_only  # forgotten as plaintext-only


def test_pex_encryption_flag_dials_a_remembered_plaintext_peer_with_mse_first(tmp_path: Path, clock: FakeClock,
                                                                               meta: Metainfo) -> None:
    net, seed, leech = swarm(tmp_path, clock, meta, E.PREFERRED, E.PREFERRED)
    leech.session.admission.plain_only[seed.addr] = None
    leech.torrent.candidates.add(seed.addr, source=PeerSource.PEX, flags=PexFlag.ENCRYPTION | PexFlag.REACHABLE)
    leech.session.tick(now=net.now)
    net.must_run_until(lambda: bool(handshakes(leech, "127.0.0.2")), 10)
    assert handshakes(leech, "127.0.0.2")[0] == (False, True)  # MSE first, RC4 taken: no plaintext attempt
    assert not any(c.crypto_switched for c in leech.seen.values())
    assert seed.addr not in leech.session.admission.plain_only


def test_connect_failure_is_not_retried_in_plaintext(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    net = SimNet(clock, random.Random(3))
    leech = net.add_peer("leech", "127.0.0.3", config=cfg(E.PREFERRED, ("tcp", "utp")))
    net.add_torrent(leech, meta, tmp_path / "dl", mode="download")
    net.add_peers(leech, [("127.0.0.77", 6881)])  # nobody listens there
    net.run_for(5.0)
    tries = [c for c in leech.seen.values() if c.ip == "127.0.0.77"]
    # never up: the same cid moved on to uTP still with MSE, never to plaintext on the same transport
    assert tries and all(not c.crypto_switched and not c.plaintext for c in tries)
    assert any(c.transport == "utp" for c in tries)


@pytest.mark.parametrize(("session_enc", "torrent_enc", "leech_enc", "connects", "rc4"), [
    (E.PREFERRED, E.REQUIRED, E.NONE, False, False),  # the torrent refuses what its session would take
    (E.PREFERRED, E.REQUIRED, E.PREFERRED, True, True),
    (E.NONE, E.REQUIRED, E.REQUIRED, True, True),  # a 'none' session still answers MSE for this torrent
    (E.REQUIRED, E.NONE, E.NONE, True, False),  # ... and a 'required' one plaintext for this torrent
    (E.PREFERRED, E.NONE, E.REQUIRED, False, False),
])
def test_torrent_policy_overrides_the_session(tmp_path: Path, clock: FakeClock, meta: Metainfo,
                                               session_enc: Encryption, torrent_enc: Encryption,
                                               leech_enc: Encryption, connects: bool, rc4: bool) -> None:
    net, seed, leech = swarm(tmp_path, clock, meta, session_enc, leech_enc, seed_torrent_enc=torrent_enc)
    assert seed.torrent.config.encryption is torrent_enc
    net.add_peers(leech, [seed.addr])
    if not connects:
        assert not net.run_until(lambda: leech.torrent.have.count() > 0, 10)
        assert not any(c.wire is not None for c in seed.seen.values())
        return
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    assert same_files(meta, tmp_path / "src", tmp_path / "dl")
    assert {enc for _, enc in handshakes(leech, "127.0.0.2")} == {rc4}


def test_torrent_policy_in_the_extension_handshake(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    net, seed, leech = swarm(tmp_path, clock, meta, E.PREFERRED, E.NONE)
    net.add_peers(leech, [seed.addr])
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    (to_seed,) = [c for c in leech.seen.values() if c.wire is not None or c.peer_id is not None][:1]
    (to_leech,) = [c for c in seed.seen.values() if c.peer_id is not None][:1]
    assert to_seed.ext.get(b"e") == 1  # the preferring seed says so (BEP 11 flag 0x01 for others)
    assert b"e" not in to_leech.ext  # the 'none' leech does not
