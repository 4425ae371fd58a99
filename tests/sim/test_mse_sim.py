"""Issue 13: MSE/PE (mse.py) on connections, by policy, on the simulated network.

none / preferred / required on each side: who connects, whether the connection is RC4, and that
the download is byte-exact through the encrypted stream (blocks, haves, requests all RC4).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import KiB, MiB, SimNet, SimPeer, make_payload, make_torrent, same_files

from minibt.errors import CloseReason
from minibt.settings import Encryption, SessionConfig, TorrentConfig, TorrentState

E = Encryption


def pair(tmp: Path, clock: FakeClock, seed_enc: Encryption, leech_enc: Encryption) -> tuple[SimNet, SimPeer, SimPeer]:
    make_payload(tmp / "src" / "p", {"a.bin": MiB + 333, "b.bin": 70_000}, seed=21)
    meta = make_torrent(tmp / "src" / "p", 32 * KiB)
    net = SimNet(clock, random.Random(4))

    def cfg(enc: Encryption) -> SessionConfig:
        return SessionConfig(torrent=TorrentConfig(fsync=False), encryption=enc, transports=("tcp",))

    seed = net.add_peer("seed", "127.0.0.2", config=cfg(seed_enc))
    leech = net.add_peer("leech", "127.0.0.3", config=cfg(leech_enc))
    net.add_torrent(seed, meta, tmp / "src", mode="seed")
    net.add_torrent(leech, meta, tmp / "dl", mode="download")
    net.add_peers(leech, [seed.addr])
    return net, seed, leech


@pytest.mark.parametrize(("seed_enc", "leech_enc", "rc4"), [
    (E.REQUIRED, E.REQUIRED, True),
    (E.PREFERRED, E.REQUIRED, True),
    (E.REQUIRED, E.PREFERRED, True),
    (E.PREFERRED, E.PREFERRED, True),  # both offer RC4 and plaintext: RC4 is chosen
    (E.PREFERRED, E.NONE, False),  # a plaintext peer is accepted by a preferring one
    (E.NONE, E.PREFERRED, False),  # MSE refused by a 'none' seed: the dial is retried in plaintext
    (E.NONE, E.NONE, False),
])
def test_download_is_byte_exact_under_each_policy_pair(
    tmp_path: Path, clock: FakeClock, seed_enc: Encryption, leech_enc: Encryption, rc4: bool
) -> None:
    net, seed, leech = pair(tmp_path, clock, seed_enc, leech_enc)
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 60)
    assert same_files(leech.torrent.meta, tmp_path / "src", tmp_path / "dl")
    done = [c for c in leech.seen.values() if c.peer_id is not None]
    assert done and all(c.encrypted is rc4 for c in done), [(c.cid, c.encrypted) for c in done]


@pytest.mark.parametrize(("seed_enc", "leech_enc"), [(E.REQUIRED, E.NONE), (E.NONE, E.REQUIRED)])
def test_required_and_none_never_connect(tmp_path: Path, clock: FakeClock, seed_enc: Encryption,
                                         leech_enc: Encryption) -> None:
    net, seed, leech = pair(tmp_path, clock, seed_enc, leech_enc)
    assert not net.run_until(lambda: leech.torrent.have.count() > 0, 10)
    assert leech.torrent.have.count() == 0
    assert not any(c.peer_id is not None for c in leech.seen.values())  # no BT handshake ever completed
    if seed_enc is E.REQUIRED:  # the plaintext handshake was refused with the encryption reason
        assert (leech.addr[0], CloseReason.ENCRYPTION_FAILED) in seed.close_reasons()


def test_without_rc4_preferred_falls_back_to_plaintext_and_required_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from minibt.errors import EncryptionUnavailable
    from minibt.session import Session

    monkeypatch.setattr("minibt.mse.rc4_available", lambda: False)  # admission imports it when asked
    s = Session(rng=random.Random(1), config=SessionConfig(encryption=E.PREFERRED))
    assert s.config.encryption is E.NONE
    with pytest.raises(EncryptionUnavailable, match=r"minibt\[mse\]"):
        Session(rng=random.Random(1), config=SessionConfig(encryption=E.REQUIRED))


def test_describe_and_status_show_the_encryption(tmp_path: Path, clock: FakeClock) -> None:
    from minibt.handles import Peer, PeerFlags
    from minibt.statusfile import format_status

    net, seed, leech = pair(tmp_path, clock, E.REQUIRED, E.REQUIRED)
    net.must_run_until(lambda: any(c.wire is not None for c in leech.session.conns.values()), 10)
    (conn,) = [c for c in leech.session.conns.values() if c.wire is not None]
    peer = Peer.of(conn, leech.session)
    assert peer.is_encrypted and PeerFlags.ENCRYPTED in peer.flags and "RC4 (MSE/PE)" in peer.describe()
    st = leech.torrent.status(clock.now())
    assert st["encrypted_peers"] == 1
    doc = {"torrents": [{**st, "state": "downloading"}], "updated_at": 0.0}
    assert any("(1 encrypted)" in line for line in format_status(doc, now_wall=0.0, pid_alive=True))


def test_the_mse_outcome_is_logged_on_both_sides(tmp_path: Path, clock: FakeClock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # integration tests against real clients read this line (tests/integration/test_mse_interop_tr_aria2.py)
    caplog.set_level(logging.INFO, logger="minibt.admission")
    net, seed, leech = pair(tmp_path, clock, E.PREFERRED, E.REQUIRED)
    net.must_run_until(lambda: any(c.wire is not None for c in leech.session.conns.values()), 10)
    done = [r.getMessage() for r in caplog.records if "MSE/PE done" in r.getMessage()]
    assert len(done) == 2 and all(m.endswith("): MSE/PE done: RC4") for m in done), done
    assert any(m.startswith(f"peer {seed.addr[0]}:{seed.addr[1]} (#") for m in done), done  # the leech's line
    assert any(m.startswith(f"peer {leech.addr[0]}:") for m in done), done  # the seed's (the leech dialled)
