"""filenames.py: portable element rules, the collision-free mapping, mountinfo parsing."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.filenames import (
    NAME_MAX_BYTES,
    DiskNames,
    FsRules,
    collision_key,
    fs_type_from_mountinfo,
    map_paths,
    portable_element,
    rules_for_fs_type,
    shorten,
)

W, P = FsRules.WINDOWS, FsRules.POSIX


@pytest.mark.parametrize(
    ("elem", "expected"),
    [
        ("plain.txt", "plain.txt"),
        ('a:b*c?d"e<f>g|h\\i.txt', "a_b_c_d_e_f_g_h_i.txt"),
        ("tab\there\x01.txt", "tab_here_.txt"),
        ("CON", "CON_"),
        ("nul.txt", "nul_.txt"),
        ("Com1.tar.gz", "Com1_.tar.gz"),
        ("LPT9", "LPT9_"),
        ("CONSOLE.txt", "CONSOLE.txt"),  # only the exact device names are reserved
        ("COM10", "COM10"),
        ("trailing. . .", "trailing"),
        ("dots...", "dots"),
        ("...", "_"),
        (" lead space kept", " lead space kept"),
    ],
)
def test_windows_element_rules(elem: str, expected: str) -> None:
    assert portable_element(elem, W) == expected


@pytest.mark.parametrize("elem", ['a:b*c?.txt', "CON", "trailing.", "tab\t"])
def test_posix_rules_keep_what_linux_file_systems_accept(elem: str) -> None:
    assert portable_element(elem, P) == elem


def test_shorten_keeps_extension_and_utf8_boundaries() -> None:
    long = "é" * 200 + ".mkv"  # 404 bytes
    s = shorten(long)
    assert s.endswith(".mkv") and len(s.encode()) <= NAME_MAX_BYTES
    assert s == "é" * 125 + ".mkv"  # 250 + 4 bytes: a 2-byte character is never cut in half
    no_ext = "x" * 300
    assert shorten(no_ext) == "x" * 255
    long_ext = "a." + "b" * 300  # an "extension" this long is not kept
    assert len(shorten(long_ext).encode()) == 255 and shorten(long_ext).startswith("a.b")
    assert shorten("short.txt") == "short.txt"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=400), st.sampled_from([W, P]))
def test_portable_element_is_always_a_safe_name(elem: str, rules: FsRules) -> None:
    elem = elem.replace("/", "x").replace("\x00", "x")
    if elem in (".", ".."):
        return
    out = portable_element(elem, rules)
    assert 0 < len(out.encode("utf-8", "surrogatepass")) <= NAME_MAX_BYTES
    assert "/" not in out and "\x00" not in out
    if rules is W:
        assert not set(out) & set('<>:"\\|?*') and all(ord(c) >= 32 for c in out)
        assert not out.endswith((".", " "))
        assert out.split(".")[0].rstrip(" ").upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}


def test_case_and_nfc_collisions_get_stable_suffixes_on_windows_only() -> None:
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    paths = [("t", "README"), ("t", "readme"), ("t", nfc), ("t", nfd), ("t", "Sub", "a"), ("t", "sub", "b")]
    win = map_paths(paths, W)
    assert win == (
        ("t", "README"),
        ("t", "readme~1"),
        ("t", nfc),
        ("t", nfd.replace(".txt", "~3.txt")),
        ("t", "Sub", "a"),
        ("t", "sub~5", "b"),  # a directory is disambiguated by its first file's index
    )
    assert map_paths(paths, P) == tuple(paths)  # distinct names on a case-sensitive file system
    assert map_paths(paths, W) == win  # deterministic


def test_sanitising_collisions_and_file_dir_clashes_are_disambiguated() -> None:
    paths = [("t", "a:b"), ("t", "a_b"), ("t", "A"), ("t", "a", "x"), None, ("t", "x" * 300 + ".bin"),
             ("t", "x" * 300 + ".bin2"[:4] + "x")]
    out = map_paths(paths, W)
    assert out[0] == ("t", "a_b") and out[1] == ("t", "a_b~1")
    assert out[2] == ("t", "A") and out[3] == ("t", "a~3", "x")
    assert out[4] is None
    keys = [tuple(collision_key(e, W) for e in p) for p in out if p is not None]
    assert len(set(keys)) == len(keys)
    assert all(len(e.encode()) <= NAME_MAX_BYTES for p in out if p is not None for e in p)


def test_shortened_names_that_meet_are_told_apart_on_posix() -> None:
    a, b = "y" * 300 + "1.bin", "y" * 300 + "2.bin"
    out = map_paths([("t", a), ("t", b)], P)
    assert out[0] == ("t", "y" * 251 + ".bin")
    assert out[1] == ("t", "y" * 249 + "~1.bin")


def test_suffix_that_is_itself_taken_gets_a_counter() -> None:
    out = map_paths([("t", "a~1"), ("t", "A"), ("t", "a")], W)
    assert out == (("t", "a~1"), ("t", "A"), ("t", "a~2"))
    out = map_paths([("t", "a"), ("t", "a~1"), ("t", "A")], W)
    assert out == (("t", "a"), ("t", "a~1"), ("t", "A~2"))
    out = map_paths([("t", "b"), ("t", "b~2"), ("t", "B")], W)
    assert out[2] == ("t", "B~2-2")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(["a", "A", "a:", "a_", "CON", "con.txt", "é", "e\u0301", "x" * 260]),
                 min_size=1, max_size=3),
        min_size=1, max_size=12,
    ),
    st.sampled_from([W, P]),
)
def test_mapping_never_puts_two_files_or_a_file_and_a_dir_on_one_path(raw: list[list[str]], rules: FsRules) -> None:
    # Torrent-level duplicates and file/dir clashes are refused at parse time; drop them here.
    seen_files: set[tuple[str, ...]] = set()
    seen_dirs: set[tuple[str, ...]] = set()
    paths: list[tuple[str, ...]] = []
    for p in (("t", *r) for r in raw):
        prefixes = {p[:k] for k in range(1, len(p))}
        if p in seen_files or p in seen_dirs or prefixes & seen_files:
            continue
        seen_files.add(p)
        seen_dirs |= prefixes
        paths.append(p)
    out = map_paths(paths, rules)
    files = {tuple(collision_key(e, rules) for e in p) for p in out if p is not None}
    dirs = {tuple(collision_key(e, rules) for e in p[:k]) for p in out if p is not None for k in range(1, len(p))}
    assert len(files) == len(paths) and not files & dirs
    assert map_paths(paths, rules) == out


def test_disk_names_round_trip_through_the_record() -> None:
    plain = [("t", "CON"), None, ("t", "ok")]
    names = DiskNames.plan(plain, W)
    assert names.paths == (("t", "CON_"), None, ("t", "ok"))
    renamed = names.renamed(plain)
    assert renamed == {0: ("t", "CON_")}
    assert DiskNames.restore(W, plain, renamed) == names


@pytest.mark.parametrize(
    ("renamed", "why"),
    [
        ({1: ("t", "x")}, "not on disk"),
        ({5: ("t", "x")}, "not on disk"),
        ({0: ("t", "..")}, "not a file name"),
        ({0: ("t", "a/b")}, "separator"),
        ({0: ("t", "x" * 256)}, "255"),
        ({0: ()}, "0 elements"),
        ({0: ("t", "OK")}, "same file"),
    ],
)
def test_disk_names_restore_refuses_a_bad_record(renamed: dict[int, tuple[str, ...]], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        DiskNames.restore(W, [("t", "a"), None, ("t", "ok")], renamed)


MOUNTINFO = r"""22 1 179:2 / / rw,relatime shared:1 - ext4 /dev/root rw
23 22 0:5 / /proc rw - proc proc rw
40 22 8:1 / /media/pi/USB\040STICK rw,relatime shared:2 - exfat /dev/sda1 rw
41 40 8:17 / /media/pi/USB\040STICK/inner rw - ext4 /dev/sdb1 rw
42 22 0:40 / /mnt/share rw - cifs //nas/share rw
43 22 8:33 / /mnt/ntfs rw - fuseblk /dev/sdc1 rw
broken line
"""


@pytest.mark.parametrize(
    ("path", "fs_type"),
    [
        ("/home/pi/Downloads", "ext4"),
        ("/media/pi/USB STICK", "exfat"),
        ("/media/pi/USB STICK/films/x", "exfat"),
        ("/media/pi/USB STICK/inner/x", "ext4"),  # the longest mount point wins
        ("/media/pi/USB STICKER", "ext4"),  # a prefix of the name is not a parent directory
        ("/mnt/share/t", "cifs"),
        ("/mnt/ntfs", "fuseblk"),
    ],
)
def test_fs_type_from_mountinfo_longest_prefix(path: str, fs_type: str) -> None:
    assert fs_type_from_mountinfo(MOUNTINFO, path) == fs_type


def test_fs_type_rules_and_unknown_mountinfo() -> None:
    assert fs_type_from_mountinfo("", "/x") is None
    assert [rules_for_fs_type(t) for t in ("vfat", "exfat", "ntfs3", "fuseblk", "cifs", "smb3")] == [W] * 6
    assert [rules_for_fs_type(t) for t in ("ext4", "btrfs", "tmpfs", "f2fs", "nfs4")] == [P] * 5
