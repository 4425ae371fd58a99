"""What .torrent files minibt opens and refuses, next to libtorrent (test/test_torrents cases).

Lenient where the meaning is unambiguous (unsorted keys, trailing bytes, path-less pad files,
length-less symlinks, pieces up to 512 MiB); strict where it protects (deep or long paths,
symlinks leaving the tree, inconsistent hybrids); peer metadata (metainfo_from_info, checked against the
info-hash first) takes unsorted keys as the file would, and nothing after the dictionary.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import bencode2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.bencode import decode, decode_lenient_with_span, encode
from minibt.errors import BencodeError, MetainfoError
from minibt.filenames import MAX_PATH_DEPTH, FsRules, map_paths
from minibt.metainfo import FileEntry, metainfo_from_info, parse_metainfo

PL = 16384
ROOT = b"\x01" * 32


def tor(info: dict[bytes, Any], **top: Any) -> bytes:
    d: dict[bytes, Any] = {b"info": info}
    d.update({k.encode(): v for k, v in top.items()})
    out: bytes = bencode2.bencode(d)
    return out


def multi(files: list[dict[bytes, Any]], pieces: int = 1, **extra: Any) -> dict[bytes, Any]:
    info: dict[bytes, Any] = {b"name": b"d", b"piece length": PL, b"pieces": b"\x01" * 20 * pieces, b"files": files}
    info.update({k.replace("_", " ").encode(): v for k, v in extra.items()})
    return info


def single(**extra: Any) -> dict[bytes, Any]:
    info: dict[bytes, Any] = {b"name": b"x", b"piece length": PL, b"pieces": b"\x01" * 20, b"length": 100}
    info.update({k.replace("_", " ").encode(): v for k, v in extra.items()})
    return info


# -- lenient bencode (disk files only) -----------------------------------------------------------

values: st.SearchStrategy[Any] = st.recursive(
    st.integers(min_value=-(2**63), max_value=2**63) | st.binary(max_size=20),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.binary(max_size=6), c, max_size=5),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(values, st.binary(max_size=5))
def test_lenient_decode_equals_strict_on_canonical_input_and_ignores_trailing_bytes(v: Any, tail: bytes) -> None:
    data = encode(v)
    got, span, end = decode_lenient_with_span(data + tail, None)
    assert got == decode(data) and span is None and end == len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_lenient_decode_garbage_gives_value_or_bencode_error(data: bytes) -> None:
    try:
        decode_lenient_with_span(data, b"info")
    except BencodeError:
        pass


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"", "empty"),
        (b"d1:ai1e1:ai2ee", "duplicate dict key"),
        (b"di1ei2ee", "key must be a string"),
        (b"d1:ae", "without a value"),
        (b"l" * 65 + b"e" * 65, "nesting deeper than 64"),
        (b"i01e", "invalid integer"),
        (b"5:ab", "truncated string"),
        (b"l", "truncated input"),
        (b"e", "unexpected 'e'"),
        (b"x", "unexpected byte"),
    ],
)
def test_lenient_decode_still_refuses(data: bytes, pattern: str) -> None:
    with pytest.raises(BencodeError, match=pattern):
        decode_lenient_with_span(data, None)


def test_lenient_decode_token_limit() -> None:
    with pytest.raises(BencodeError, match="more than 10 tokens"):
        decode_lenient_with_span(b"l" + b"i1e" * 20 + b"e", None, max_tokens=10)


def test_lenient_decode_span_of_unsorted_top_level_key() -> None:
    data = b"d4:infod1:bi1e1:ai2ee1:ai0ee"
    v, span, end = decode_lenient_with_span(data, b"info")
    assert v == {b"info": {b"b": 1, b"a": 2}, b"a": 0} and end == len(data)
    assert span is not None and data[span[0] : span[1]] == b"d1:bi1e1:ai2ee"


# -- accepted: what libtorrent and Transmission open ---------------------------------------------

UNSORTED_INFO = b"d4:name1:x6:lengthi100e12:piece lengthi16384e6:pieces20:" + b"\x01" * 20 + b"e"


def test_unsorted_keys_accepted_and_hashed_as_written() -> None:
    m = parse_metainfo(b"d4:info" + UNSORTED_INFO + b"8:announce9:http://t/e")
    assert m.info_hash == hashlib.sha1(UNSORTED_INFO).digest()  # never re-encoded (sorted) bytes
    assert m.name == "x" and m.total_length == 100 and m.announce_tiers == (("http://t/",),)


def test_trailing_bytes_after_the_torrent_are_ignored() -> None:
    data = tor(single())
    assert parse_metainfo(data + b"\n").info_hash == parse_metainfo(data).info_hash


def test_peer_metadata_reads_as_the_file_but_takes_nothing_after_the_dict() -> None:
    # ut_metadata info dicts (magnet links) are the torrent's own bytes (they matched the info-hash): unsorted
    # keys as in the .torrent file that minibt seeds from (libtorrent takes them too), else a torrent minibt
    # seeds could not be fetched from it by magnet.  Nothing after the dict; a repeated key stays an error.
    from_file = parse_metainfo(b"d4:info" + UNSORTED_INFO + b"8:announce9:http://t/e")
    fetched = metainfo_from_info(UNSORTED_INFO)
    assert (fetched.info_hash, fetched.files, fetched.pieces) == (from_file.info_hash, from_file.files, from_file.pieces)
    assert fetched.info_hash == hashlib.sha1(UNSORTED_INFO).digest()
    for tail in (b"x", b"e", b"de"):
        with pytest.raises(MetainfoError, match="trailing data"):
            metainfo_from_info(UNSORTED_INFO + tail)
        with pytest.raises(MetainfoError, match="trailing data"):
            metainfo_from_info(encode(single()) + tail)
    with pytest.raises(MetainfoError, match="not valid bencode"):
        metainfo_from_info(UNSORTED_INFO[:-1] + b"4:name1:ye")  # 'name' twice


def test_pad_file_without_path_accepted() -> None:
    m = parse_metainfo(tor(multi([
        {b"length": PL - 1, b"path": [b"a"]}, {b"attr": b"p", b"length": 1}, {b"length": PL, b"path": [b"b"]},
    ], pieces=2)))
    assert m.files[1] == FileEntry(path=(".pad", "1"), length=1, offset=PL - 1, pad=True)
    assert m.files[2].offset == PL and m.total_length == 2 * PL
    assert m.torrent_paths() == (("d", "a"), None, ("d", "b"))


def test_symlink_length_is_not_data() -> None:
    # libtorrent counts a symlink as 0 bytes whatever its 'length' says; counting it shifted every piece.
    m = parse_metainfo(tor(multi([
        {b"attr": b"l", b"length": 100, b"path": [b"l"], b"symlink path": [b"sub", b"a"]},
        {b"length": PL, b"path": [b"sub", b"a"]},
    ])))
    assert m.files[0] == FileEntry(path=("l",), length=0, offset=0, symlink=("sub", "a"))
    assert m.files[1].offset == 0 and m.total_length == PL
    assert not m.files[0].on_disk and m.torrent_paths() == (None, ("d", "sub", "a"))


def test_symlink_without_length_accepted() -> None:
    m = parse_metainfo(tor(multi([
        {b"length": PL, b"path": [b"a"]}, {b"attr": b"l", b"path": [b"l"], b"symlink path": [b"a"]},
    ])))
    assert m.files[1].length == 0 and m.files[1].symlink == ("a",)


def test_piece_length_up_to_512_mib_accepted() -> None:
    assert parse_metainfo(tor(single(piece_length=512 << 20))).piece_length == 512 << 20
    with pytest.raises(MetainfoError, match="info.piece length"):
        parse_metainfo(tor(single(piece_length=1 << 30)))


def test_long_name_kept_in_metainfo_and_shortened_on_disk() -> None:
    name = "y" * 300 + ".mkv"
    m = parse_metainfo(tor(single(name=name.encode())))
    assert m.name == name
    disk = map_paths(m.torrent_paths(), FsRules.POSIX)
    assert disk == (("y" * 251 + ".mkv",),)


def test_hybrid_consistent_multi_file_with_pads_accepted() -> None:
    files = [{b"length": PL - 10, b"path": [b"b", b"x"]}, {b"attr": b"p", b"length": 10, b"path": [b".pad", b"10"]},
             {b"length": 5, b"path": [b"c"]}]
    tree = {b"b": {b"x": {b"": {b"length": PL - 10, b"pieces root": ROOT}}}, b"c": {b"": {b"length": 5, b"pieces root": ROOT}}}
    m = parse_metainfo(tor(multi(files, pieces=2, meta_version=2, file_tree=tree)))
    assert [f.path for f in m.files if not f.pad] == [("b", "x"), ("c",)]


# -- refused: strict where it protects -----------------------------------------------------------

HYBRID_FILES = [{b"length": PL, b"path": [b"a"]}, {b"length": 0, b"path": [b"b"]}]


def hybrid(tree: Any, **over: Any) -> bytes:
    return tor(multi(HYBRID_FILES, **{"meta_version": 2, "file_tree": tree, **over}))


GOOD_TREE = {b"a": {b"": {b"length": PL, b"pieces root": ROOT}}, b"b": {b"": {b"length": 0}}}

REFUSED: list[tuple[str, bytes, str]] = [
    ("path deeper than the limit", tor(multi([{b"length": PL, b"path": [b"d"] * (MAX_PATH_DEPTH + 1)}])),
     f"more than the limit of {MAX_PATH_DEPTH}"),
    ("path longer than PATH_MAX", tor(multi([{b"length": PL, b"path": [b"e" * 250] * 17}])), "limit of 4096"),
    ("name longer than PATH_MAX", tor(single(name=b"n" * 4097)), "info.name: 4097 bytes"),
    ("symlink target with ..", tor(multi([{b"length": PL, b"path": [b"a"]},
                                          {b"attr": b"l", b"path": [b"l"], b"symlink path": [b"..", b"x"]}])),
     r"symlink path\[0\]: '..' is not allowed"),
    ("symlink target absolute", tor(multi([{b"length": PL, b"path": [b"a"]},
                                           {b"attr": b"l", b"path": [b"l"], b"symlink path": [b"/etc"]}])),
     "separators"),
    ("symlink target missing", tor(multi([{b"length": PL, b"path": [b"a"]}, {b"attr": b"l", b"path": [b"l"]}])),
     "symlink path: expected"),
    ("pad file that is a symlink", tor(multi([{b"length": PL, b"path": [b"a"]},
                                              {b"attr": b"lp", b"path": [b"l"], b"symlink path": [b"a"]}])),
     "both a pad file and a symlink"),
    ("hybrid other name", hybrid({b"a": GOOD_TREE[b"a"], b"c": GOOD_TREE[b"b"]}),
     "inconsistent"),
    ("hybrid other length", hybrid({**GOOD_TREE, b"a": {b"": {b"length": 1, b"pieces root": ROOT}}}), "inconsistent"),
    ("hybrid missing file", hybrid({b"a": GOOD_TREE[b"a"]}), "1 in the v2 file tree"),
    ("hybrid no pieces root", hybrid({**GOOD_TREE, b"a": {b"": {b"length": PL}}}), "pieces root"),
    ("hybrid tree empty", hybrid({}), "non-empty dictionary"),
    ("hybrid tree missing", tor(multi(HYBRID_FILES, meta_version=2)), "file tree: missing"),
    ("hybrid meta version 3", hybrid(GOOD_TREE, meta_version=3), "meta version: expected 2"),
    ("hybrid piece length not 2^n", hybrid(GOOD_TREE, piece_length=3 * PL), "power of two"),
    ("hybrid file is also dir", hybrid({**GOOD_TREE, b"a": {b"": GOOD_TREE[b"a"][b""], b"x": GOOD_TREE[b"b"]}}),
     "also a directory"),
    ("hybrid bad element", hybrid({**GOOD_TREE, b"..": GOOD_TREE[b"b"]}), "'..' is not allowed"),
    ("hybrid pad in tree", hybrid({**GOOD_TREE, b"b": {b"": {b"length": 0, b"attr": b"p"}}}), "pad files"),
    ("hybrid length negative", hybrid({**GOOD_TREE, b"b": {b"": {b"length": -1}}}), "length: expected"),
]


@pytest.mark.parametrize(("case", "data", "pattern"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_a_message_naming_the_problem(case: str, data: bytes, pattern: str) -> None:
    with pytest.raises(MetainfoError, match=pattern) as exc:
        parse_metainfo(data)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 400


def test_hybrid_tree_keys_out_of_order_refused() -> None:
    # The v2 file order is the key order, so an unsorted tree is ambiguous (libtorrent: v2_unordered_files).
    good = hybrid(GOOD_TREE)
    swapped = good.replace(
        b"1:ad0:d6:lengthi16384e11:pieces root32:" + ROOT + b"ee1:bd0:d6:lengthi0eee",
        b"1:bd0:d6:lengthi0eee1:ad0:d6:lengthi16384e11:pieces root32:" + ROOT + b"ee",
    )
    assert swapped != good and parse_metainfo(good).num_pieces == 1
    with pytest.raises(MetainfoError, match="keys not in sorted order"):
        parse_metainfo(swapped)


def test_same_checks_apply_to_peer_metadata() -> None:
    with pytest.raises(MetainfoError, match="inconsistent"):
        metainfo_from_info(encode(multi(HYBRID_FILES, meta_version=2, file_tree={b"a": GOOD_TREE[b"a"]})))
    deep = multi([{b"length": PL, b"path": [b"d"] * 2000}])
    with pytest.raises(MetainfoError, match="levels"):
        metainfo_from_info(encode(deep))


# -- cross-check with libtorrent (pip package) ---------------------------------------------------


def _lt_load(tmp_path: Path, data: bytes) -> Any:
    lt = pytest.importorskip("libtorrent")
    p = tmp_path / "t.torrent"
    p.write_bytes(data)
    return lt.torrent_info(str(p))


@pytest.mark.parametrize(
    "data",
    [
        b"d4:info" + UNSORTED_INFO + b"e",
        tor(single()) + b"x",
        tor(multi([{b"length": PL, b"path": [b"a"]},
                   {b"attr": b"l", b"length": 100, b"path": [b"l"], b"symlink path": [b"a"]}])),
        tor(multi([{b"length": PL - 1, b"path": [b"a"]}, {b"attr": b"p", b"length": 1},
                   {b"length": PL, b"path": [b"b"]}], pieces=2)),
        tor(single(piece_length=256 << 20)),
        hybrid(GOOD_TREE),
    ],
    ids=["unsorted", "trailing", "symlink", "pad_no_path", "large_piece", "hybrid"],
)
def test_same_hash_and_layout_as_libtorrent(tmp_path: Path, data: bytes) -> None:
    ti = _lt_load(tmp_path, data)
    m = parse_metainfo(data)
    assert str(ti.info_hashes().v1) == m.info_hash_hex
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # files() is deprecated in libtorrent 2
        fs = ti.files()
    assert [fs.file_size(i) for i in range(fs.num_files())] == [f.length for f in m.files]
    assert [fs.file_offset(i) for i in range(fs.num_files())] == [f.offset for f in m.files]
    assert ti.total_size() == m.total_length and ti.num_pieces() == m.num_pieces


@pytest.mark.parametrize("case", ["hybrid other length", "hybrid missing file", "hybrid no pieces root"])
def test_libtorrent_refuses_the_hybrids_we_refuse(tmp_path: Path, case: str) -> None:
    data = next(d for c, d, _ in REFUSED if c == case)
    with pytest.raises(RuntimeError):
        _lt_load(tmp_path, data)
