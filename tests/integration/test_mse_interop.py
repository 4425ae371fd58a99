"""Issue 13: minibt with MSE/PE on its connections against libtorrent with encryption forced (RC4 only).

- minibt `--encryption required` downloads byte-exact from a libtorrent seed that requires RC4, over
  TCP and over uTP; libtorrent lists the connection as RC4.
- a libtorrent leecher that requires RC4 downloads byte-exact from a minibt seed `--encryption required`.
- with `required`, a plaintext-only libtorrent seed is refused while the download goes on from an
  RC4 one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clients import LibtorrentPeer, assert_same_tree, make_payload, make_torrent, running, wait_until
from minibt_proc import MinibtProc

LT_RC4_ONLY = {"allowed_enc_level": 2, "prefer_rc4": True}  # lt.enc_level: pe_plaintext 1, pe_rc4 2, pe_both 3
DEADLINE_S = 60.0


def payload(tmp_path: Path) -> tuple[Path, Path]:
    seed_dir = make_payload(tmp_path / "seed-data", {"mse.bin": (3 << 20) + 1234}, seed=31)
    t = make_torrent(seed_dir / "mse.bin", tmp_path / "mse.torrent", [], 64 << 10)
    return seed_dir, t.path


def rc4_peer(lt: LibtorrentPeer) -> bool:
    return any(isinstance(p, dict) and p.get("rc4") for p in lt.status().get("peers") or [])


@pytest.mark.parametrize("transport", ["tcp", "utp"])
def test_minibt_required_downloads_from_libtorrent_forced_rc4(tmp_path: Path, transport: str) -> None:
    seed_dir, torrent = payload(tmp_path)
    lt = LibtorrentPeer(tmp_path / "lt", torrent_path=torrent, save_dir=seed_dir, seed=True,
                        out_enc="forced", in_enc="forced", extra_settings=LT_RC4_ONLY, enable_utp=transport == "utp")
    with running(lt):
        lt.wait_complete(DEADLINE_S)
        mb = MinibtProc(tmp_path / "mb", command="download", torrent=torrent, data_dir=tmp_path / "dl",
                        peers=[("127.0.0.1", lt.port)], timeout_s=DEADLINE_S,
                        extra_args=["--encryption", "required", "--transport", transport, "--no-dht"])
        with mb:
            wait_until(lambda: rc4_peer(lt) or mb.returncode() == 0, DEADLINE_S, "an RC4 connection", [mb, lt])
            assert mb.wait_exit(DEADLINE_S + 10) == 0, mb.log_tail()
    assert_same_tree(seed_dir, tmp_path / "dl")


def test_libtorrent_forced_rc4_downloads_from_a_minibt_required_seed(tmp_path: Path) -> None:
    seed_dir, torrent = payload(tmp_path)
    mb = MinibtProc(tmp_path / "mb", command="seed", torrent=torrent, data_dir=seed_dir,
                    extra_args=["--encryption", "required", "--no-dht"])
    with mb:
        lt = LibtorrentPeer(tmp_path / "lt", torrent_path=torrent, save_dir=tmp_path / "lt-data",
                            peers=[("127.0.0.1", mb.port)], out_enc="forced", in_enc="forced",
                            extra_settings=LT_RC4_ONLY)
        with running(lt):
            lt.wait_complete(DEADLINE_S)
    assert_same_tree(seed_dir, tmp_path / "lt-data")


def test_required_refuses_a_plaintext_only_seed_and_goes_on_from_an_rc4_one(tmp_path: Path) -> None:
    seed_dir, torrent = payload(tmp_path)
    plain = LibtorrentPeer(tmp_path / "plain", torrent_path=torrent, save_dir=seed_dir, seed=True,
                           out_enc="disabled", in_enc="disabled")
    rc4 = LibtorrentPeer(tmp_path / "rc4", torrent_path=torrent, save_dir=seed_dir, seed=True,
                         out_enc="forced", in_enc="forced", extra_settings=LT_RC4_ONLY, listen_ip="127.0.0.2")
    with running(plain), running(rc4):
        plain.wait_complete(DEADLINE_S)
        rc4.wait_complete(DEADLINE_S)
        mb = MinibtProc(tmp_path / "mb", command="download", torrent=torrent, data_dir=tmp_path / "dl",
                        peers=[("127.0.0.1", plain.port), ("127.0.0.2", rc4.port)], timeout_s=DEADLINE_S,
                        extra_args=["--encryption", "required", "--transport", "tcp", "--no-dht"])
        with mb:
            assert mb.wait_exit(DEADLINE_S + 10) == 0, mb.log_tail()
        log = mb.log_text()
    assert_same_tree(seed_dir, tmp_path / "dl")
    # the plaintext-only seed never became a peer: it closed our MSE attempt (no plaintext retry: required)
    assert f"peer 127.0.0.1:{plain.port}" in log and "trying tcp in plaintext" not in log
    assert not any(p.get("total_upload", 0) for p in plain.status().get("seen_peers", []))
