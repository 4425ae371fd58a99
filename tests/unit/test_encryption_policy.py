"""Issue 13: the encryption policy around the MSE machine -- the cap on incoming MSE handshakes, the
default, and where a user sets it (CLI, config file per client and per torrent)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from minibt.actions import Close
from minibt.cli import build_parser
from minibt.configfile import load_config
from minibt.errors import CloseReason
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.mse import MseInitiator
from minibt.session import Session
from minibt.settings import Encryption, SessionConfig


def session(tmp_path: Path, **kw: object) -> tuple[Session, bytes]:
    src = tmp_path / "f.bin"
    src.write_bytes(bytes(range(256)) * 300)
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384))
    s = Session(rng=random.Random(3), config=SessionConfig(**kw))  # type: ignore[arg-type]
    s.add_torrent(meta, str(tmp_path / "dl"), mode="download", resume_path=None, now=0.0)
    s.take_actions()
    return s, meta.info_hash


def closes(s: Session) -> dict[int, CloseReason]:
    return {a.cid: a.reason for a in s.take_actions() if isinstance(a, Close)}


def test_default_policy_is_preferred() -> None:
    assert SessionConfig().encryption is Encryption.PREFERRED
    assert build_parser().parse_args(["download", "x.torrent", "--dir", "d"]).encryption == "preferred"


def test_cap_on_incoming_mse_handshakes(tmp_path: Path) -> None:
    s, ih = session(tmp_path, max_mse_handshakes=2)
    peers = [MseInitiator(ih, ia=b"", rng=random.Random(i), now=0.0) for i in range(4)]
    cids = []
    for i, m in enumerate(peers[:3]):
        cid = s.on_incoming((f"10.0.0.{i + 1}", 5000), now=0.0)
        assert cid is not None
        s.on_data(cid, m.data_to_send(), now=0.0)  # its DH key: the responder answers, the handshake runs
        cids.append(cid)
    got = closes(s)
    assert cids[0] not in got and cids[1] not in got  # two handshakes at once: the cap
    assert got.get(cids[2]) is CloseReason.TOO_MANY_PEERS
    assert s.admission.mse_refused_busy == 1
    assert s.reputation.score("10.0.0.3") == s.reputation.score("10.9.9.9")  # busy is not the peer's fault
    # a plaintext peer is not held back by the cap
    plain = s.on_incoming(("10.0.0.8", 5000), now=0.0)
    assert plain is not None
    s.on_data(plain, b"\x13BitTorrent protocol" + bytes(8) + ih + bytes(20), now=0.0)
    assert plain not in closes(s) and plain in s.conns
    # one of the two finishes (its peer goes away): room for the next
    s.on_closed(cids[0], CloseReason.CLOSED_BY_REMOTE, "gone", now=1.0)
    cid = s.on_incoming(("10.0.0.4", 5000), now=1.0)
    assert cid is not None
    s.on_data(cid, peers[3].data_to_send(), now=1.0)
    assert cid not in closes(s) and len(s.data_to_send(cid, 1 << 16, now=1.0)) >= 96  # our key went out


def test_config_file_policy_per_client_and_per_torrent(tmp_path: Path) -> None:
    for name in ("f", "g"):
        src = tmp_path / f"{name}.bin"
        src.write_bytes(name.encode() * 40000)
        (tmp_path / f"{name}.torrent").write_bytes(create_torrent(str(src), piece_length=16384))
    conf = tmp_path / "minibt.toml"
    conf.write_text(
        '[client]\nstate_dir = "state"\n'
        '[[torrent]]\nsource = "f.torrent"\nencryption = "required"\n'
        '[[torrent]]\nsource = "g.torrent"\n'
    )
    cfg = load_config(str(conf))
    assert cfg.encryption is Encryption.PREFERRED  # the default
    assert [t.encryption for t in cfg.torrents] == [Encryption.REQUIRED, None]
    conf.write_text('[client]\nstate_dir = "state"\n[[torrent]]\nsource = "f.torrent"\nencryption = "always"\n')
    with pytest.raises(Exception, match=r"torrent\[0\]\.encryption.*none, preferred, required"):
        load_config(str(conf))
