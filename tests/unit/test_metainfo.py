from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.bencode import decode, encode
from minibt.errors import MetainfoError
from minibt.metainfo import (
    FileEntry,
    Metainfo,
    auto_piece_length,
    create_torrent,
    describe,
    load_metainfo,
    metainfo_from_info,
    parse_metainfo,
    safe_join,
)
from minibt.realpaths import RealPaths

PL = 16384


def pieces_for(total: int, pl: int = PL) -> bytes:
    return b"".join(hashlib.sha1(b"%d" % i).digest() for i in range(-(-total // pl)))


def single_info(**over: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": "file.bin",
        "piece length": PL,
        "length": 40000,
        "pieces": pieces_for(40000),
    }
    info.update(over)
    return {k: v for k, v in info.items() if v is not None}


def multi_info(**over: Any) -> dict[str, Any]:
    files = [
        {"length": 30000, "path": ["a", "x.bin"]},
        {"length": 0, "path": ["b.txt"]},
        {"length": 5000, "path": ["c"]},
    ]
    info: dict[str, Any] = {"name": "root", "piece length": PL, "files": files, "pieces": pieces_for(35000)}
    info.update(over)
    return {k: v for k, v in info.items() if v is not None}


def torrent(info: Any, **top: Any) -> bytes:
    d: dict[str, Any] = {"announce": "http://tracker.example/announce", "info": info}
    d.update(top)
    return encode({k: v for k, v in d.items() if v is not None})


def test_single_file_fields() -> None:
    info_enc = encode(single_info())
    # Built by hand so the raw info bytes are known exactly.
    data = b"d8:announce31:http://tracker.example/announce7:comment2:hi4:info" + info_enc + b"e"
    m = parse_metainfo(data)
    assert m.info_bytes == info_enc
    assert m.info_hash == hashlib.sha1(info_enc).digest()
    assert m.info_hash_hex == hashlib.sha1(info_enc).hexdigest()
    assert m.name == "file.bin" and not m.multi_file
    assert m.files == (FileEntry(path=("file.bin",), length=40000, offset=0),)
    assert m.total_length == 40000 and m.piece_length == PL and m.num_pieces == 3
    assert [m.piece_size(i) for i in range(3)] == [PL, PL, 40000 - 2 * PL]
    assert m.piece_hash(2) == hashlib.sha1(b"2").digest()
    assert m.announce_tiers == (("http://tracker.example/announce",),)
    assert m.comment == "hi" and m.created_by is None and m.creation_date is None
    assert not m.private and m.url_list == ()
    with pytest.raises(IndexError):
        m.piece_hash(3)
    with pytest.raises(IndexError):
        m.piece_size(-1)


def test_multi_file_offsets_and_paths(tmp_path: Path) -> None:
    m = parse_metainfo(torrent(multi_info()))
    assert m.multi_file and m.name == "root"
    assert [(f.path, f.length, f.offset) for f in m.files] == [
        (("a", "x.bin"), 30000, 0),
        (("b.txt",), 0, 30000),
        (("c",), 5000, 30000),
    ]
    assert m.total_length == 35000
    base = os.path.abspath(tmp_path)
    assert m.file_path(str(tmp_path), 0) == os.path.join(base, "root", "a", "x.bin")
    single = parse_metainfo(torrent(single_info()))
    assert single.file_path(str(tmp_path), 0) == os.path.join(base, "file.bin")


def test_pad_files_are_kept_and_may_repeat() -> None:
    files = [
        {"length": 10000, "path": ["a"]},
        {"length": PL - 10000, "path": [".pad", str(PL - 10000)], "attr": "p"},
        {"length": 10000, "path": ["b"]},
        {"length": PL - 10000, "path": [".pad", str(PL - 10000)], "attr": "p"},
        {"length": 1, "path": ["c"]},
    ]
    m = parse_metainfo(torrent(multi_info(files=files, pieces=pieces_for(2 * PL + 1))))
    assert [f.pad for f in m.files] == [False, True, False, True, False]
    assert m.files[2].offset == PL and m.files[4].offset == 2 * PL


def test_announce_list_tiers_take_precedence_and_skip_junk() -> None:
    al = [["udp://a:1", 5, "udp://a:1", "http://b/"], [], ["http://c/"], [b"\xff\xfe"]]
    m = parse_metainfo(torrent(single_info(), **{"announce-list": al}))
    assert m.announce_tiers == (("udp://a:1", "http://b/"), ("http://c/",))


def test_empty_announce_list_falls_back_to_announce() -> None:
    m = parse_metainfo(torrent(single_info(), **{"announce-list": [[]]}))
    assert m.announce_tiers == (("http://tracker.example/announce",),)
    assert parse_metainfo(torrent(single_info(), announce=None)).announce_tiers == ()


def test_url_list_string_or_list() -> None:
    assert parse_metainfo(torrent(single_info(), **{"url-list": "http://w/"})).url_list == ("http://w/",)
    m = parse_metainfo(torrent(single_info(), **{"url-list": ["http://w/", 3, "http://v/"]}))
    assert m.url_list == ("http://w/", "http://v/")


def test_private_and_text_fields() -> None:
    data = torrent(
        single_info(private=1), comment=b"caf\xe9", **{"created by": "me", "creation date": 1700000000}
    )
    m = parse_metainfo(data)
    assert m.private
    assert m.comment == "caf\ufffd" and m.created_by == "me" and m.creation_date == 1700000000
    assert not parse_metainfo(torrent(single_info(private=0))).private


def test_utf8_variants_preferred_when_valid() -> None:
    files = [{"length": 35000, "path": [b"\xe9t\xe9"], "path.utf-8": ["été"]}]
    m = parse_metainfo(torrent(multi_info(name=b"\xff", files=files, **{"name.utf-8": "racine"})))
    assert m.name == "racine" and m.files[0].path == ("été",)
    # An invalid name.utf-8 falls back to a valid name.
    m = parse_metainfo(torrent(single_info(**{"name.utf-8": ".."})))
    assert m.name == "file.bin"


def test_hybrid_torrent_parses_v1_part() -> None:
    tree = {"file.bin": {"": {"length": 40000, "pieces root": bytes(32)}}}
    info = single_info(**{"meta version": 2, "file tree": tree})
    assert parse_metainfo(torrent(info)).total_length == 40000


def file_entry(path: Any, length: Any = 35000) -> dict[str, Any]:
    return {"length": length, "path": path}


HOSTILE: list[tuple[str, Any, str]] = [
    ("not a dict", [1, 2], "expected a dictionary at top level, got a list"),
    ("no info", {"announce": "x"}, "info: missing"),
    ("info is a list", {"info": []}, "info: expected a dictionary, got a list"),
    (
        "negative piece length",
        single_info(**{"piece length": -5}),
        "info.piece length: expected a positive integer",
    ),
    ("zero piece length", single_info(**{"piece length": 0}), "got 0"),
    ("huge piece length", single_info(**{"piece length": 1 << 30}), "info.piece length"),
    ("piece length string", single_info(**{"piece length": "16384"}), "info.piece length: .* got a string"),
    ("no piece length", single_info(**{"piece length": None}), "info.piece length: missing"),
    ("pieces not multiple of 20", single_info(pieces=pieces_for(40000)[:-1]), "not a multiple of 20"),
    ("pieces int", single_info(pieces=5), "info.pieces: expected a string"),
    ("no pieces", single_info(pieces=None), "info.pieces: missing"),
    ("huge piece count", single_info(pieces=bytes(20 * 100000)), "100000 piece hashes"),
    ("too few pieces", single_info(pieces=bytes(40)), "2 piece hashes"),
    ("negative length", single_info(length=-1), "info.length: expected an integer"),
    ("length too large", single_info(length=1 << 51), "info.length"),
    ("zero total", single_info(length=0, pieces=b""), "total length must be positive"),
    ("no length", single_info(length=None), "info.length: missing"),
    ("both length and files", multi_info(length=35000), "both 'length' and 'files'"),
    ("name missing", single_info(name=None), "info.name: missing"),
    ("name dotdot", single_info(name=".."), "info.name: '..' is not allowed"),
    ("name dot", single_info(name="."), "info.name: '.' is not allowed"),
    ("name empty", single_info(name=""), "info.name: empty"),
    ("name absolute", single_info(name="/etc/passwd"), "info.name: .*separators"),
    ("name backslash", single_info(name="a\\b"), "separators"),
    ("name NUL", single_info(name="a\x00b"), "NUL"),
    ("name bad utf-8", single_info(name=b"\xff\xfe"), "info.name: not valid UTF-8"),
    ("name int", single_info(name=3), "info.name: expected a string, got 3"),
    ("files not list", multi_info(files={}), "info.files: expected a list"),
    ("zero files", multi_info(files=[]), "at least one file"),
    ("file not dict", multi_info(files=[7]), r"info.files\[0\]: expected a dictionary, got 7"),
    (
        "file dotdot",
        multi_info(files=[file_entry(["a", ".."])]),
        r"info.files\[0\].path\[1\]: '..' is not allowed",
    ),
    ("file empty elem", multi_info(files=[file_entry(["a", ""])]), r"path\[1\]: empty"),
    ("file abs", multi_info(files=[file_entry(["/etc", "x"])]), r"path\[0\]: .*separators"),
    ("file slash", multi_info(files=[file_entry(["a/b"])]), "separators"),
    ("file backslash", multi_info(files=[file_entry(["..\\x"])]), "separators"),
    ("file NUL", multi_info(files=[file_entry(["a\x00"])]), "NUL"),
    ("file empty path", multi_info(files=[file_entry([])]), "empty path"),
    ("file path string", multi_info(files=[file_entry("a")]), r"info.files\[0\].path: expected a list"),
    ("file path int elem", multi_info(files=[file_entry([1])]), r"path\[0\]: expected a string, got 1"),
    ("file no path", multi_info(files=[{"length": 35000}]), r"info.files\[0\].path: missing"),
    (
        "file negative",
        multi_info(files=[file_entry(["a"], -1)]),
        r"info.files\[0\].length: expected an integer",
    ),
    ("file length str", multi_info(files=[file_entry(["a"], "1")]), "got a string"),
    (
        "duplicate paths",
        multi_info(files=[file_entry(["a"], 1), file_entry(["a"], 34999)]),
        r"info.files\[1\].path: duplicate of info.files\[0\]",
    ),
    (
        "file is dir of later file",
        multi_info(files=[file_entry(["a"], 1), file_entry(["a", "b"], 34999)]),
        r"directory 'a' is also info.files\[0\]",
    ),
    (
        "dir is later file",
        multi_info(files=[file_entry(["a", "b"], 1), file_entry(["a"], 34999)]),
        r"info.files\[1\].path: also a directory",
    ),
    ("v2 only", {"meta version": 2, "name": "x", "piece length": PL, "file tree": {}}, "v2-only torrents"),
]


@pytest.mark.parametrize(("case", "obj", "pattern"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_metainfo_rejected_with_field_name(case: str, obj: Any, pattern: str) -> None:
    data = encode(obj) if case in ("not a dict", "no info", "info is a list") else torrent(obj)
    with pytest.raises(MetainfoError, match=pattern) as exc:
        parse_metainfo(data)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("top", "pattern"),
    [
        ({"announce": 5}, "announce: expected a string URL"),
        ({"announce-list": "udp://x"}, "announce-list: expected a list of lists"),
        ({"announce-list": [["udp://x"], "udp://y"]}, r"announce-list\[1\]: expected a list of strings"),
    ],
)
def test_wrong_tracker_containers_rejected(top: dict[str, Any], pattern: str) -> None:
    with pytest.raises(MetainfoError, match=pattern):
        parse_metainfo(torrent(single_info(), **top))


def test_every_truncation_rejected() -> None:
    data = torrent(multi_info())
    for n in range(len(data)):
        with pytest.raises(MetainfoError):
            parse_metainfo(data[:n])


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"d4:infod4:name1:x4:name1:yee", "not valid bencode: duplicate dict key"),
        (b"d4:infod4:name1:xe4:infod4:name1:yee", "not valid bencode: duplicate dict key"),
        (b"d4:info" + b"l" * 10000 + b"e" * 10000 + b"e", "nesting deeper"),
    ],
)
def test_bencode_level_problems_become_metainfo_error(data: bytes, pattern: str) -> None:
    with pytest.raises(MetainfoError, match=pattern):
        parse_metainfo(data)


def test_max_size_enforced() -> None:
    data = torrent(single_info())
    assert parse_metainfo(data, max_size=len(data)).name == "file.bin"
    with pytest.raises(MetainfoError, match="exceeds the limit"):
        parse_metainfo(data, max_size=len(data) - 1)


def test_large_piece_count_parses() -> None:
    total = 100_000 * PL
    m = parse_metainfo(torrent(single_info(length=total, pieces=bytes(20 * 100_000))))
    assert m.num_pieces == 100_000 and m.piece_size(99_999) == PL


def test_metainfo_from_info_matches_parse() -> None:
    info_enc = encode(multi_info())
    m = metainfo_from_info(info_enc, announce_tiers=[["udp://t:1"]])
    assert m.info_hash == hashlib.sha1(info_enc).digest()
    assert m.announce_tiers == (("udp://t:1",),)
    assert m.files == parse_metainfo(torrent(multi_info())).files
    with pytest.raises(MetainfoError):
        metainfo_from_info(info_enc + b"e")


@given(st.binary(max_size=300))
def test_random_bytes_give_metainfo_or_error(data: bytes) -> None:
    try:
        assert isinstance(parse_metainfo(data), Metainfo)
    except MetainfoError:
        pass


VALID = torrent(multi_info(), **{"announce-list": [["udp://a:1"]], "url-list": "http://w/"})


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.binary(max_size=3)), min_size=1, max_size=4))
def test_mutated_torrent_gives_metainfo_or_error(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(VALID)
    for at, repl in edits:
        data[at : at + len(repl) // 2 + 1] = repl
    try:
        m = parse_metainfo(bytes(data))
    except MetainfoError:
        return
    assert m.total_length == sum(f.length for f in m.files)


def test_load_metainfo(tmp_path: Path) -> None:
    p = tmp_path / "t.torrent"
    p.write_bytes(torrent(single_info()))
    assert load_metainfo(str(p)).name == "file.bin"
    with pytest.raises(MetainfoError, match="missing.torrent"):
        load_metainfo(str(tmp_path / "missing.torrent"))
    with pytest.raises(MetainfoError, match="t.torrent: larger than"):
        load_metainfo(str(p), max_size=10)
    p.write_bytes(torrent(single_info(name="..")))
    with pytest.raises(MetainfoError, match="t.torrent: info.name"):
        load_metainfo(str(p))


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "one RealPaths for every call"])
def test_safe_join_refuses_escapes(tmp_path: Path, shared: bool) -> None:
    base = tmp_path / "dl"
    base.mkdir()
    (base / "inside").mkdir()
    (base / "out").symlink_to(tmp_path)
    (base / "alias").symlink_to(base / "inside")
    (base / "inside" / "leaves").symlink_to(tmp_path / "x")  # the last element a symlink out of the tree
    paths = RealPaths() if shared else None
    real = os.path.abspath(base)
    assert safe_join(str(base), ["a", "b"], paths) == os.path.join(real, "a", "b")
    assert safe_join(str(base), ["alias", "f"], paths) == os.path.join(real, "alias", "f")
    assert safe_join(str(base), ["inside", "f"], paths) == os.path.join(real, "inside", "f")
    for parts in (["out", "f"], ["inside", "leaves"], ["alias", "leaves"], [".."], ["a", "..", ".."], ["/etc"],
                  ["a\x00"], [""], []):
        with pytest.raises(MetainfoError):
            safe_join(str(base), parts, paths)


def write_tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (root / "z.bin").write_bytes(os.urandom(50_000))
    (root / "a.txt").write_bytes(b"hello" * 1000)
    (root / "sub" / "empty").write_bytes(b"")
    (root / "sub" / "deep" / "m.bin").write_bytes(os.urandom(70_001))
    (root / "link").symlink_to(root / "a.txt")
    (root / "dirlink").symlink_to(root / "sub")


def expected_pieces(blob: bytes, pl: int) -> bytes:
    return b"".join(hashlib.sha1(blob[i : i + pl]).digest() for i in range(0, len(blob), pl))


def test_create_directory_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tree(root)
    seen: list[tuple[int, int]] = []
    data = create_torrent(
        str(root),
        trackers=["http://t1/announce", "udp://t2:80"],
        private=True,
        comment="c",
        creation_date=1234567890,
        progress=lambda done, total: seen.append((done, total)),
    )
    m = parse_metainfo(data)
    rels = [("a.txt",), ("sub", "deep", "m.bin"), ("sub", "empty"), ("z.bin",)]
    assert [f.path for f in m.files] == rels
    blob = b"".join((root.joinpath(*r)).read_bytes() for r in rels)
    assert [f.length for f in m.files] == [len(root.joinpath(*r).read_bytes()) for r in rels]
    assert m.total_length == len(blob) and m.multi_file and m.name == "tree"
    assert m.piece_length == auto_piece_length(len(blob))
    assert m.pieces == expected_pieces(blob, m.piece_length)
    assert m.private and m.comment == "c" and m.created_by == "minibt/0.1.0" and m.creation_date == 1234567890
    assert m.announce_tiers == (("http://t1/announce",), ("udp://t2:80",))
    assert seen[-1] == (len(blob), len(blob))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    top = decode(data)
    assert top[b"announce"] == b"http://t1/announce"
    assert set(top) == {b"announce", b"announce-list", b"comment", b"created by", b"creation date", b"info"}


def test_create_single_file_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "one.iso"
    content = os.urandom(3 * 32768 + 5)
    f.write_bytes(content)
    data = create_torrent(str(f), piece_length=32768, trackers=["http://t/a"])
    m = parse_metainfo(data)
    assert not m.multi_file and m.name == "one.iso" and m.files[0].path == ("one.iso",)
    assert m.pieces == expected_pieces(content, 32768) and m.num_pieces == 4
    top = decode(data)
    assert b"announce-list" not in top and b"creation date" not in top and b"private" not in top[b"info"]


def test_create_pieces_span_file_boundaries_with_big_reads(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    parts = [os.urandom(n) for n in (1, (1 << 20) + 3, 16383, 16385, 0, 2)]
    for i, p in enumerate(parts):
        (root / f"f{i}").write_bytes(p)
    m = parse_metainfo(create_torrent(str(root), piece_length=16384))
    assert m.pieces == expected_pieces(b"".join(parts), 16384)


@pytest.mark.parametrize("pl", [1000, 8192, 3 * 16384, 1 << 28])
def test_create_rejects_bad_piece_length(tmp_path: Path, pl: int) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(MetainfoError, match="piece length"):
        create_torrent(str(tmp_path / "f"), piece_length=pl)


def test_create_rejects_empty_and_unsafe_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(MetainfoError, match="no files"):
        create_torrent(str(tmp_path / "empty"))
    (tmp_path / "zero").write_bytes(b"")
    with pytest.raises(MetainfoError, match="no data"):
        create_torrent(str(tmp_path / "zero"))
    with pytest.raises(MetainfoError, match="nothere"):
        create_torrent(str(tmp_path / "nothere"))
    (tmp_path / "bs").mkdir()
    (tmp_path / "bs" / "a\\b").write_bytes(b"x")
    with pytest.raises(MetainfoError, match="separators"):
        create_torrent(str(tmp_path / "bs"))


@pytest.mark.parametrize(
    ("total", "expected"),
    [(1, 16384), (2000 * 16384, 16384), (2000 * 16384 + 1, 32768), (1 << 30, 1 << 20), (1 << 40, 16 << 20)],
)
def test_auto_piece_length(total: int, expected: int) -> None:
    assert auto_piece_length(total) == expected


def test_libtorrent_accepts_created_torrent(tmp_path: Path) -> None:
    lt = pytest.importorskip("libtorrent")
    root = tmp_path / "tree"
    write_tree(root)
    data = create_torrent(str(root), trackers=["http://t1/announce", "udp://t2:80"], private=True)
    m = parse_metainfo(data)
    ti = lt.torrent_info(lt.bdecode(data))
    assert str(ti.info_hashes().v1) == m.info_hash_hex
    assert ti.num_pieces() == m.num_pieces and ti.total_size() == m.total_length
    assert ti.priv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # files() is deprecated in libtorrent 2
        fs = ti.files()
    assert [fs.file_path(i) for i in range(fs.num_files())] == [
        os.path.join("tree", *f.path) for f in m.files
    ]


@pytest.mark.skipif(shutil.which("transmission-show") is None, reason="transmission-show not installed")
def test_transmission_accepts_created_torrent(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tree(root)
    out = tmp_path / "t.torrent"
    out.write_bytes(create_torrent(str(root), trackers=["http://t1/announce"]))
    m = load_metainfo(str(out))
    res = subprocess.run(["transmission-show", str(out)], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0
    assert f"Hash: {m.info_hash_hex}" in res.stdout


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c not installed")
def test_aria2_accepts_created_torrent(tmp_path: Path) -> None:
    f = tmp_path / "one.bin"
    f.write_bytes(os.urandom(100_000))
    out = tmp_path / "t.torrent"
    out.write_bytes(create_torrent(str(f), trackers=["http://t1/announce"]))
    m = load_metainfo(str(out))
    res = subprocess.run(["aria2c", "-S", str(out)], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0
    assert f"Info Hash: {m.info_hash_hex}" in res.stdout


def test_describe_lists_everything_and_truncates() -> None:
    files = [{"length": 1, "path": ["d", f"f{i:03}"]} for i in range(250)]
    data = torrent(
        multi_info(files=files, pieces=pieces_for(250), private=1),
        comment="note",
        **{"announce-list": [["udp://a:1", "udp://b:2"], ["http://c/"]], "creation date": 0},
    )
    m = parse_metainfo(data)
    text = describe(m)
    assert "name:          root" in text
    assert m.info_hash_hex in text
    assert "250 B (250 bytes)" in text
    assert "private:       yes" in text
    assert "tier 1: udp://a:1, udp://b:2" in text and "tier 2: http://c/" in text
    assert "comment:       note" in text and "1970-01-01 00:00:00 UTC" in text
    assert "root/d/f199" in text and "root/d/f200" not in text
    assert text.endswith("... and 50 more")


def test_piece_hashes_are_not_held_twice(tmp_path: Path) -> None:
    """Peak memory (issue 15): the hashes of a loaded torrent are read where they lie in the info
    bytes (20 bytes a piece, once); piece_hash still gives bytes."""
    blob = bytes(range(256)) * 1000
    (tmp_path / "f.bin").write_bytes(blob)
    m = parse_metainfo(create_torrent(str(tmp_path / "f.bin"), piece_length=16384))
    assert m.info_bytes is m.info_bytes  # the one bytes object, not a copy per use
    assert m.info_bytes[m.pieces_at : m.pieces_at + 16 * 20] == expected_pieces(blob, 16384)
    assert m.pieces == expected_pieces(blob, 16384) and m.num_pieces == 16
    assert m.piece_hash(15) == hashlib.sha1(blob[15 * 16384 :]).digest() and type(m.piece_hash(15)) is bytes


def test_read_capped_reads_a_file_a_pipe_and_stops_past_the_limit(tmp_path: Path) -> None:
    from minibt.metainfo import read_capped

    p = tmp_path / "f"
    p.write_bytes(b"a" * 1000)
    with open(p, "rb") as f:
        assert read_capped(f, 1000) == b"a" * 1000
    with open(p, "rb") as f:
        assert read_capped(f, 999) == b"a" * 1000  # limit + 1 bytes: "too big"
    with open(p, "rb") as f:
        assert read_capped(f, 10) == b"a" * 11
    p.write_bytes(b"")
    with open(p, "rb") as f:
        assert read_capped(f, 10) == b""
    r, w = os.pipe()  # size unknown (st_size 0): read in chunks, across several writes
    os.write(w, b"b" * 60000)  # below the 64 KiB pipe buffer: no reader is needed for the write
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert read_capped(f, 100000) == b"b" * 60000
    r, w = os.pipe()
    os.write(w, b"c" * 50)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert read_capped(f, 20) == b"c" * 21


def test_parsing_holds_at_most_two_copies_of_the_hashes() -> None:
    """Peak memory (issue 15): the file's bytes plus one more copy of the hashes at any moment (the
    decoded string, dropped before the info bytes are cut out), not three."""
    import tracemalloc

    n = 50_000  # 1 MB of hashes: the rest of the torrent is noise next to it
    info = {b"length": n * 16384, b"name": b"big", b"piece length": 16384, b"pieces": os.urandom(20 * n)}
    data = encode({b"announce": b"http://t/a", b"info": info})
    tracemalloc.start()
    try:
        m = parse_metainfo(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.num_pieces == n and bytes(m.pieces) == info[b"pieces"]
    assert peak < 1.4 * len(data)  # data itself was allocated before tracing: ~1 more copy, not 2
