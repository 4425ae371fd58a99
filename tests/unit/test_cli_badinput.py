"""Malformed and hostile .torrent files on the command line: one-line error, exit code 2, nothing written.

Most cases call ``minibt.cli.main`` in-process (fast); two run ``python -m minibt`` as a real
subprocess to prove the same holds for the installed entry point (no traceback, exact exit code).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bencode2
import pytest

from minibt.cli import main

PIECE_LEN = 16384
PAYLOAD_LEN = 3 * PIECE_LEN + 100  # 4 pieces, the last one short
SUBPROCESS_TIMEOUT_S = 30.0


def _info(**over: Any) -> dict[bytes, Any]:
    """A valid single-file info dict, with fields replaced or (value None) removed."""
    payload = bytes(range(256)) * (PAYLOAD_LEN // 256 + 1)
    payload = payload[:PAYLOAD_LEN]
    pieces = b"".join(
        hashlib.sha1(payload[i : i + PIECE_LEN]).digest() for i in range(0, PAYLOAD_LEN, PIECE_LEN)
    )
    info: dict[bytes, Any] = {
        b"name": b"payload.bin",
        b"piece length": PIECE_LEN,
        b"pieces": pieces,
        b"length": PAYLOAD_LEN,
    }
    for k, v in over.items():
        key = k.replace("_", " ").encode()
        if v is None:
            info.pop(key, None)
        else:
            info[key] = v
    return info


def _multi(*paths: list[bytes]) -> dict[bytes, Any]:
    """A multi-file info dict whose files have the given path lists (1 piece each, lengths add up)."""
    n = len(paths)
    return {
        b"name": b"dir",
        b"piece length": PIECE_LEN,
        b"pieces": b"\x11" * 20 * n,
        b"files": [{b"length": PIECE_LEN, b"path": p} for p in paths],
    }


def _torrent(info: Any, **top: Any) -> bytes:
    d: dict[bytes, Any] = {b"announce": b"http://127.0.0.1:1/announce", b"info": info}
    d.update({k.encode(): v for k, v in top.items()})
    out: bytes = bencode2.bencode(d)
    return out


VALID = _torrent(_info())

# name -> (builder of the file at the given path, a word the error line must contain)
Maker = Callable[[Path], None]


def _bytes(data: bytes) -> Maker:
    def make(p: Path) -> None:
        p.write_bytes(data)

    return make


def _sparse(size: int) -> Maker:
    def make(p: Path) -> None:
        with open(p, "wb") as f:
            f.truncate(size)

    return make


CASES: dict[str, tuple[Maker, str]] = {
    "truncated_half": (_bytes(VALID[: len(VALID) // 2]), "bencode"),
    "truncated_last_byte": (_bytes(VALID[:-1]), "truncated"),
    "empty_file": (_bytes(b""), "empty"),
    "not_bencode_text": (_bytes(b"this is not a torrent file\n"), "bencode"),
    "not_bencode_binary": (_bytes(bytes(range(256)) * 8), "bencode"),
    "top_level_list": (_bytes(bencode2.bencode([b"info", 1])), "dictionary"),
    "info_missing": (_bytes(bencode2.bencode({b"announce": b"x"})), "info"),
    "info_is_list": (_bytes(_torrent([1, 2, 3])), "info"),
    "info_is_int": (_bytes(_torrent(7)), "info"),
    "piece_length_is_string": (_bytes(_torrent(_info(piece_length=b"16384"))), "piece length"),
    "piece_length_zero": (_bytes(_torrent(_info(piece_length=0))), "piece length"),
    "piece_length_negative": (_bytes(_torrent(_info(piece_length=-16384))), "piece length"),
    "length_is_string": (_bytes(_torrent(_info(length=b"49252"))), "length"),
    "length_negative": (_bytes(_torrent(_info(length=-1))), "length"),
    "length_zero": (_bytes(_torrent(_info(length=0, pieces=b""))), "length"),
    "name_is_int": (_bytes(_torrent(_info(name=5))), "name"),
    "name_is_list": (_bytes(_torrent(_info(name=[b"a"]))), "name"),
    "name_missing": (_bytes(_torrent(_info(name=None))), "name"),
    "name_not_utf8": (_bytes(_torrent(_info(name=b"\xff\xfe.bin"))), "UTF-8"),
    "pieces_is_list": (_bytes(_torrent(_info(pieces=[b"x" * 20]))), "pieces"),
    "pieces_missing": (_bytes(_torrent(_info(pieces=None))), "pieces"),
    "files_is_dict": (_bytes(_torrent({**_multi([b"a"]), b"files": {b"a": 1}})), "files"),
    "files_entry_is_string": (_bytes(_torrent({**_multi([b"a"]), b"files": [b"a"]})), "files"),
    "files_path_is_string": (_bytes(_torrent(_multi(b"a"))), "path"),  # type: ignore[arg-type]
    "announce_is_int": (_bytes(_torrent(_info(), announce=1)), "announce"),
    "announce_list_is_string": (_bytes(_torrent(_info(), **{"announce-list": b"x"})), "announce-list"),
    # Path traversal and absolute paths.
    "dotdot_path_element": (_bytes(_torrent(_multi([b"..", b"escaped.bin"]))), ".."),
    "dotdot_deep": (_bytes(_torrent(_multi([b"a", b"..", b"..", b"escaped.bin"]))), ".."),
    "dotdot_name": (_bytes(_torrent(_info(name=b".."))), ".."),
    "dot_name": (_bytes(_torrent(_info(name=b"."))), "'.'"),
    "absolute_path_element": (_bytes(_torrent(_multi([b"/tmp", b"escaped.bin"]))), "separator"),
    "absolute_name": (_bytes(_torrent(_info(name=b"/tmp/escaped.bin"))), "separator"),
    "embedded_slash": (_bytes(_torrent(_multi([b"../escaped.bin"]))), "separator"),
    "backslash_traversal": (_bytes(_torrent(_multi([b"..\\escaped.bin"]))), "separator"),
    "empty_path_element": (_bytes(_torrent(_multi([b"a", b"", b"b"]))), "empty"),
    "empty_path_list": (_bytes(_torrent(_multi([]))), "empty"),
    "huge_hostile_name": (_bytes(_torrent(_info(name=b"/" + b"a" * 100_000))), "separator"),
    "huge_hostile_path": (_bytes(_torrent(_multi([b"x\\" * 50_000]))), "separator"),
    "newline_in_bad_name": (_bytes(_torrent(_info(name=b"a\nb/c"))), "separator"),
    "nul_in_name": (_bytes(_torrent(_info(name=b"pay\x00load.bin"))), "NUL"),
    "nul_in_path": (_bytes(_torrent(_multi([b"a\x00b"]))), "NUL"),
    "duplicate_file_paths": (_bytes(_torrent(_multi([b"a"], [b"a"]))), "duplicate"),
    "file_is_also_dir": (_bytes(_torrent(_multi([b"a"], [b"a", b"b"]))), "directory"),
    # Piece table does not match the length.
    "huge_piece_count": (_bytes(_torrent(_info(pieces=b"\x22" * 20 * 50_000))), "piece hashes"),
    "too_few_pieces": (_bytes(_torrent(_info(length=1 << 40))), "piece hashes"),
    "pieces_not_multiple_of_20": (_bytes(_torrent(_info(pieces=b"\x33" * 79))), "multiple of 20"),
    "pieces_empty": (_bytes(_torrent(_info(pieces=b""))), "piece hashes"),
    "length_beyond_limit": (_bytes(_torrent(_info(length=1 << 62))), "length"),
    "piece_length_beyond_limit": (_bytes(_torrent(_info(piece_length=1 << 40, pieces=b"\x44" * 20))),
                                  "piece length"),
    # Resource exhaustion.
    "deep_nesting_list": (_bytes(b"d4:info" + b"l" * 100_000 + b"e" * 100_000 + b"e"), "nesting"),
    "deep_nesting_dict": (_bytes(b"d4:info" + b"d1:a" * 10_000 + b"i0e" + b"e" * 10_000 + b"e"), "nesting"),
    "huge_string_length": (_bytes(b"d4:info99999999999999999999:xe"), "bencode"),
    "huge_integer": (_bytes(b"d4:infoi" + b"9" * 5000 + b"ee"), "bencode"),
    "file_over_size_limit": (_sparse(65 * 1024 * 1024), "limit"),
    # Non-canonical bencode that stays refused (other clients refuse it too, or it is ambiguous).
    "leading_zero_int": (_bytes(b"d4:infod6:lengthi01eee"), "bencode"),
    "duplicate_key": (_bytes(VALID[:-1] + b"4:infoi1ee"), "duplicate"),
    # Paths too deep or too long for any disk (2000 levels killed os.makedirs with RecursionError).
    "path_2000_levels": (_bytes(_torrent(_multi([b"d"] * 1999 + [b"f"]))), "levels"),
    "path_over_path_max": (_bytes(_torrent(_multi([b"d" * 200] * 30))), "4096"),
    # BEP 47 symlinks: the target must stay inside the torrent, and a pad file cannot be one.
    "symlink_escapes": (_bytes(_torrent({**_multi([b"a"], [b"l"]), b"files": [
        {b"length": 2 * PIECE_LEN, b"path": [b"a"]},
        {b"attr": b"l", b"path": [b"l"], b"symlink path": [b"..", b"..", b"etc", b"passwd"]}]})), "symlink path"),
    "symlink_without_target": (_bytes(_torrent({**_multi([b"a"], [b"l"]), b"files": [
        {b"length": 2 * PIECE_LEN, b"path": [b"a"]}, {b"attr": b"l", b"path": [b"l"]}]})), "symlink path"),
    "pad_and_symlink": (_bytes(_torrent({**_multi([b"a"], [b"l"]), b"files": [
        {b"length": 2 * PIECE_LEN, b"path": [b"a"]},
        {b"attr": b"pl", b"path": [b"l"], b"symlink path": [b"a"]}]})), "symlink"),
    # BEP 52 hybrid whose v2 half is malformed or lists other files than the v1 half.
    "hybrid_inconsistent": (_bytes(_torrent(_info(meta_version=2, file_tree={
        b"other.bin": {b"": {b"length": PAYLOAD_LEN, b"pieces root": b"\x01" * 32}}}))), "inconsistent"),
    "hybrid_wrong_length": (_bytes(_torrent(_info(meta_version=2, file_tree={
        b"payload.bin": {b"": {b"length": 1, b"pieces root": b"\x01" * 32}}}))), "inconsistent"),
    "hybrid_malformed_tree": (_bytes(_torrent(_info(meta_version=2, file_tree={
        b"payload.bin": {b"": {b"length": PAYLOAD_LEN}}}))), "pieces root"),
    "hybrid_tree_not_dict": (_bytes(_torrent(_info(meta_version=2, file_tree=[1]))), "file tree"),
}

# Files other clients (libtorrent, Transmission) open: minibt reads them too (names as in libtorrent's
# test/test_torrents where one exists).
ACCEPTED: dict[str, bytes] = {
    "trailing_garbage": VALID + b"xx",
    "unordered": b"d4:info" + VALID.split(b"4:info", 1)[1][:-1] + b"8:announce27:http://127.0.0.1:1/announcee",
    "pad_file_no_path": _torrent({**_multi([b"a"], [b"b"]), b"files": [
        {b"length": PIECE_LEN - 1, b"path": [b"a"]}, {b"attr": b"p", b"length": 1},
        {b"length": PIECE_LEN, b"path": [b"b"]}]}),
    "symlink_zero_size": _torrent({**_multi([b"a"]), b"files": [
        {b"length": PIECE_LEN, b"path": [b"a"]}, {b"attr": b"l", b"path": [b"l"], b"symlink path": [b"a"]}]}),
    "large_piece_size": _torrent(_info(piece_length=256 * 1024 * 1024, pieces=b"\x22" * 20)),
    # A drive-like element is an ordinary name on Linux; on exFAT/NTFS/Samba ':' becomes '_'.
    "drive_like_name": _torrent(_info(name=b"C:escaped.bin")),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_info_accepts_what_other_clients_open(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = tmp_path / f"{name}.torrent"
    t.write_bytes(ACCEPTED[name])
    assert main(["info", str(t)]) == 0
    out, err = capsys.readouterr()
    assert "info hash:" in out and err == ""


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _make(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """Write the hostile torrent; returns (torrent, download dir, state dir), neither dir created."""
    maker, _ = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    torrent = work / f"{name}.torrent"
    maker(torrent)
    return torrent, work / "dl", tmp_path / "state"


def _assert_one_line_error(err: str, word: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("minibt: "), lines[0]
    assert "Traceback" not in err
    assert word.lower() in lines[0].lower(), f"{word!r} not named in {lines[0]!r}"
    assert len(lines[0]) < 500, "error line should be short"


def test_valid_torrent_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Control: the builders make a valid torrent when nothing is broken (so the cases test one defect each)."""
    t = tmp_path / "ok.torrent"
    t.write_bytes(VALID)
    assert main(["info", str(t)]) == 0
    out, err = capsys.readouterr()
    assert "payload.bin" in out and err == ""
    m = tmp_path / "multi.torrent"
    m.write_bytes(_torrent(_multi([b"a"], [b"sub", b"b"])))
    assert main(["info", str(m)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("name", sorted(CASES))
def test_info_rejects_hostile_torrent(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torrent, _, _ = _make(tmp_path, name)
    before = _tree(tmp_path)
    assert main(["info", str(torrent)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    _assert_one_line_error(err, CASES[name][1])
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("name", sorted(CASES))
def test_download_rejects_hostile_torrent_and_writes_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torrent, dl, state = _make(tmp_path, name)
    before = _tree(tmp_path)
    rc = main(["download", str(torrent), "--dir", str(dl), "--port", "0", "--bind", "127.0.0.1",
               "--state-dir", str(state), "--quiet", "--timeout", "5"])
    assert rc == 2
    out, err = capsys.readouterr()
    assert out == ""
    _assert_one_line_error(err, CASES[name][1])
    # Nothing created: not the download dir, not the state dir, not an escaped file anywhere in tmp.
    assert _tree(tmp_path) == before
    assert not dl.exists() and not state.exists()


def test_missing_torrent_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.torrent"
    assert main(["info", str(missing)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "no such file")
    dl = tmp_path / "dl"
    assert main(["download", str(missing), "--dir", str(dl), "--port", "0", "--bind", "127.0.0.1",
                 "--state-dir", str(tmp_path / "state")]) == 2
    _assert_one_line_error(capsys.readouterr().err, "no such file")
    assert _tree(tmp_path) == set()


def test_newline_in_torrent_path_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = tmp_path / "two\nlines.torrent"
    t.write_bytes(b"not bencode")
    assert main(["info", str(t)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "bencode")


def test_directory_instead_of_torrent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "a.torrent"
    d.mkdir()
    assert main(["info", str(d)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "directory")


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minibt", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)


def test_subprocess_info_truncated_torrent(tmp_path: Path) -> None:
    torrent, _, _ = _make(tmp_path, "truncated_half")
    r = _run_cli("info", str(torrent), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    _assert_one_line_error(r.stderr, "bencode")


def test_subprocess_download_path_traversal_writes_nothing(tmp_path: Path) -> None:
    torrent, dl, state = _make(tmp_path, "dotdot_path_element")
    before = _tree(tmp_path)
    r = _run_cli("download", str(torrent), "--dir", str(dl), "--port", "0", "--bind", "127.0.0.1",
                 "--peer", "127.0.0.1:9", "--state-dir", str(state), "--timeout", "5", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    _assert_one_line_error(r.stderr, "..")
    assert _tree(tmp_path) == before
    assert not (tmp_path / "work" / "escaped.bin").exists() and not (tmp_path / "escaped.bin").exists()
