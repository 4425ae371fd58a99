"""Issue 13: minibt with MSE/PE against Transmission (encryption 2, required) and aria2 (require-crypto, arc4).

- minibt ``--encryption required`` downloads byte-exact from a Transmission seed that requires encryption,
  and seeds byte-exact to a Transmission leecher that requires it.  Transmission 3.00 never dials
  loopback peers (PROTOCOL.md 7.1): minibt dials it both times, so minibt is the MSE initiator.
- the same with aria2 ``--bt-require-crypto=true --bt-min-crypto-level=arc4``: minibt dials the aria2
  seed (minibt initiates MSE); the aria2 leecher dials the minibt seed (aria2 initiates MSE).
- ``--encryption preferred`` (minibt offers RC4 and plaintext) against the same peers, both directions:
  they select RC4.  Against peers that prefer plaintext, preferred still gets the data: Transmission
  with encryption 0 closes our MSE attempt and minibt redials in plaintext; aria2's defaults answer MSE
  by selecting plaintext.

Encryption is checked on both sides, not only the bytes: minibt logs how each MSE handshake ended
(admission.py), Transmission lists the peer with ``isEncrypted``, aria2's debug log names the method.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from clients import (
    LOOPBACK,
    Aria2Peer,
    TransmissionPeer,
    assert_same_tree,
    make_payload,
    make_torrent,
    running,
    wait_until,
)
from minibt_proc import MinibtProc

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reference_clients")]

TR_PREFER_PLAINTEXT, TR_REQUIRED = 0, 2  # Transmission settings.json "encryption" (1: prefer encrypted)
A2_DEBUG = ["--log-level=debug"]  # aria2 logs its MSE handshake at debug level only
SIZE = (3 << 20) + 1234
DEADLINE_S = 60.0  # one ~3 MiB transfer; Transmission's first unchoke waits up to ~10 s for its rechoke timer
POLICIES = ["required", "preferred"]
# minibt/admission.py, at -v: "peer 127.0.0.1:PORT (#N): MSE/PE done: RC4|plaintext"
MSE_DONE_RE = re.compile(r"peer 127\.0\.0\.1:(\d+) \(#\d+\): MSE/PE done: (RC4|plaintext)$", re.M)
# aria2 MSEHandshake.cc: "peer provides X." as responder, "peer prefers X" as initiator
A2_METHOD_RE = re.compile(r"- peer (?:provides|prefers) (ARC4|plaintext)")


def payload(tmp_path: Path) -> tuple[Path, Path]:
    """(seed data dir, torrent): one file of 3 MiB + 1234 bytes, 64 KiB pieces, the last one short."""
    seed_dir = make_payload(tmp_path / "seed-data", {"mse.bin": SIZE}, seed=37)
    t = make_torrent(seed_dir / "mse.bin", tmp_path / "mse.torrent", [], 64 << 10)
    return seed_dir, t.path


def minibt_args(policy: str) -> list[str]:
    return ["--encryption", policy, "--transport", "tcp", "--no-dht"]


def minibt_mse(mb: MinibtProc) -> list[tuple[int, str]]:
    """(peer port, method) of every MSE handshake minibt completed."""
    return [(int(port), method) for port, method in MSE_DONE_RE.findall(mb.log_text())]


def aria2_mse(a2: Aria2Peer) -> list[str]:
    """The method of every MSE handshake aria2 completed (needs A2_DEBUG)."""
    try:
        return A2_METHOD_RE.findall(a2.debug_log_path.read_text("utf-8", "replace"))
    except OSError:
        return []


def tr_peers_encrypted(tr: TransmissionPeer) -> list[bool]:
    """isEncrypted of each peer Transmission is connected to now."""
    return [bool(p.get("isEncrypted")) for p in tr.status().get("peers") or []]


def wait_tr_encrypted_peer(tr: TransmissionPeer, mb: MinibtProc) -> None:
    """Transmission lists minibt, encrypted.  Not racy: the peer is listed from the handshake on, and
    Transmission's choking (up to ~10 s to the first unchoke) or its downloading keeps it for seconds."""
    seen: list[list[bool]] = []
    wait_until(lambda: seen.append(tr_peers_encrypted(tr)) or seen[-1], DEADLINE_S,
               "Transmission lists minibt as a peer", [mb, tr])
    assert seen[-1] == [True], f"Transmission's peers, isEncrypted: {seen[-1]}"


# --------------------------------------------------------------------------------------------- Transmission


@pytest.mark.parametrize("policy", POLICIES)
def test_minibt_downloads_from_a_transmission_seed_that_requires_encryption(tmp_path: Path, policy: str) -> None:
    seed_dir, torrent = payload(tmp_path)
    tr = TransmissionPeer(tmp_path / "tr", torrent_path=torrent, save_dir=seed_dir, seed=True, encryption=TR_REQUIRED)
    with running(tr):
        mb = MinibtProc(tmp_path / "mb", command="download", torrent=torrent, data_dir=tmp_path / "dl",
                        peers=[(LOOPBACK, tr.port)], timeout_s=DEADLINE_S, extra_args=minibt_args(policy))
        with mb:
            wait_tr_encrypted_peer(tr, mb)
            assert mb.wait_exit(DEADLINE_S + 10) == 0, mb.log_tail()
        assert minibt_mse(mb) == [(tr.port, "RC4")], mb.log_tail()
        wait_until(lambda: tr.status().get("uploadedEver", 0) >= SIZE, 10, "Transmission counts the upload", [tr])
    assert_same_tree(seed_dir, tmp_path / "dl")


@pytest.mark.parametrize("policy", POLICIES)
def test_transmission_requiring_encryption_downloads_from_a_minibt_seed(tmp_path: Path, policy: str) -> None:
    seed_dir, torrent = payload(tmp_path)
    tr = TransmissionPeer(tmp_path / "tr", torrent_path=torrent, save_dir=tmp_path / "tr-data", seed=False,
                          encryption=TR_REQUIRED)
    with running(tr):
        mb = MinibtProc(tmp_path / "mb", command="seed", torrent=torrent, data_dir=seed_dir,
                        peers=[(LOOPBACK, tr.port)], extra_args=minibt_args(policy))
        with mb:
            wait_tr_encrypted_peer(tr, mb)
            tr.wait_complete(DEADLINE_S)
            assert set(minibt_mse(mb)) == {(tr.port, "RC4")}, mb.log_tail()  # a seed may redial: a set
    assert_same_tree(seed_dir, tmp_path / "tr-data")


def test_minibt_preferred_redials_in_plaintext_a_transmission_seed_that_prefers_it(tmp_path: Path) -> None:
    # Transmission with encryption 0 closes an incoming MSE handshake: preferred retries in plaintext.
    seed_dir, torrent = payload(tmp_path)
    tr = TransmissionPeer(tmp_path / "tr", torrent_path=torrent, save_dir=seed_dir, seed=True,
                          encryption=TR_PREFER_PLAINTEXT)
    with running(tr):
        mb = MinibtProc(tmp_path / "mb", command="download", torrent=torrent, data_dir=tmp_path / "dl",
                        peers=[(LOOPBACK, tr.port)], timeout_s=DEADLINE_S, extra_args=minibt_args("preferred"))
        with mb:
            assert mb.wait_exit(DEADLINE_S + 10) == 0, mb.log_tail()
        assert minibt_mse(mb) == [], mb.log_tail()
        retried = rf"peer 127\.0\.0\.1:{tr.port} \(#\d+\) over tcp: .*; trying tcp in plaintext$"
        assert re.search(retried, mb.log_text(), re.M), mb.log_tail()
    assert_same_tree(seed_dir, tmp_path / "dl")


# --------------------------------------------------------------------------------------------- aria2


@pytest.mark.parametrize("policy", POLICIES)
def test_minibt_downloads_from_an_aria2_seed_that_requires_crypto(tmp_path: Path, policy: str) -> None:
    seed_dir, torrent = payload(tmp_path)
    a2 = Aria2Peer(tmp_path / "aria2", torrent_path=torrent, save_dir=seed_dir, seed=True, require_crypto=True,
                   extra_args=A2_DEBUG)
    with running(a2):
        mb = MinibtProc(tmp_path / "mb", command="download", torrent=torrent, data_dir=tmp_path / "dl",
                        peers=[(LOOPBACK, a2.port)], timeout_s=DEADLINE_S, extra_args=minibt_args(policy))
        with mb:
            assert mb.wait_exit(DEADLINE_S + 10) == 0, mb.log_tail()
        assert minibt_mse(mb) == [(a2.port, "RC4")], mb.log_tail()
        wait_until(lambda: int(a2.status().get("uploadLength", 0)) >= SIZE, 10, "aria2 counts the upload", [a2])
        assert aria2_mse(a2) == ["ARC4"], a2.log_tail()
    assert_same_tree(seed_dir, tmp_path / "dl")


@pytest.mark.parametrize("policy", POLICIES)
def test_aria2_requiring_crypto_downloads_from_a_minibt_seed(tmp_path: Path, policy: str) -> None:
    seed_dir, torrent = payload(tmp_path)
    mb = MinibtProc(tmp_path / "mb", command="seed", torrent=torrent, data_dir=seed_dir, extra_args=minibt_args(policy))
    with mb:
        a2 = Aria2Peer(tmp_path / "aria2", torrent_path=torrent, save_dir=tmp_path / "a2-data", seed=False,
                       peers=[(LOOPBACK, mb.port)], require_crypto=True, extra_args=A2_DEBUG)
        with running(a2):
            a2.wait_complete(DEADLINE_S)
            assert set(aria2_mse(a2)) == {"ARC4"}, a2.log_tail()  # aria2 may dial again once done: sets
        assert {method for _, method in minibt_mse(mb)} == {"RC4"}, mb.log_tail()
    assert_same_tree(seed_dir, tmp_path / "a2-data")


def test_minibt_preferred_downloads_from_an_aria2_seed_that_selects_plaintext(tmp_path: Path) -> None:
    # aria2's defaults (--bt-min-crypto-level=plain) answer our MSE offer (RC4 or plaintext) with
    # plaintext: the MSE handshake completes and the peer wire after it is unencrypted.
    seed_dir, torrent = payload(tmp_path)
    a2 = Aria2Peer(tmp_path / "aria2", torrent_path=torrent, save_dir=seed_dir, seed=True, extra_args=A2_DEBUG)
    with running(a2):
        mb = MinibtProc(tmp_path / "mb", command="download", torrent=torrent, data_dir=tmp_path / "dl",
                        peers=[(LOOPBACK, a2.port)], timeout_s=DEADLINE_S, extra_args=minibt_args("preferred"))
        with mb:
            assert mb.wait_exit(DEADLINE_S + 10) == 0, mb.log_tail()
        assert minibt_mse(mb) == [(a2.port, "plaintext")], mb.log_tail()
        assert aria2_mse(a2) == ["plaintext"], a2.log_tail()
    assert_same_tree(seed_dir, tmp_path / "dl")
