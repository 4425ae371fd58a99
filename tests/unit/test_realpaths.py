"""RealPaths gives what os.path.realpath gives, for paths of plain elements, through every kind of symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minibt.realpaths import RealPaths


def make_tree(tmp: Path) -> Path:
    base = tmp / "base"
    (base / "a" / "b").mkdir(parents=True)
    (tmp / "outside" / "sub").mkdir(parents=True)
    (base / "a" / "file").write_bytes(b"x")
    (base / "dirlink").symlink_to(tmp / "outside")  # a directory symlink out of the tree
    (base / "a" / "rel").symlink_to("../../outside/sub")  # relative, out of the tree
    (base / "a" / "filelink").symlink_to(base / "a" / "file")
    (base / "chain").symlink_to(base / "dirlink")  # a symlink to a symlink
    (base / "dangling").symlink_to(tmp / "nowhere" / "at" / "all")
    (base / "loop").symlink_to(base / "loop")
    return base


ELEMENTS = [
    ("a", "file"), ("a", "b", "new"), ("a", "missing", "deeper"), ("nodir", "f"), ("dirlink", "f"),
    ("dirlink", "sub", "f"), ("a", "rel"), ("a", "rel", "f"), ("a", "filelink"), ("chain", "sub"),
    ("dangling",), ("dangling", "f"), ("loop",), ("loop", "f"), ("a",), (),
]


@pytest.mark.parametrize("shared", [False, True])
def test_same_as_os_realpath(tmp_path: Path, shared: bool) -> None:
    base = make_tree(tmp_path)
    one = RealPaths()
    for parts in ELEMENTS:
        path = os.path.join(str(base), *parts)
        got = (one if shared else RealPaths()).real(path)
        assert got == os.path.realpath(path), parts


def test_each_directory_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_tree(tmp_path)
    walked: list[str] = []
    realpath = os.path.realpath

    def counting(path: str) -> str:
        walked.append(path)
        return realpath(path)

    monkeypatch.setattr(os.path, "realpath", counting)
    one = RealPaths()
    for i in range(50):
        assert one.real(os.path.join(str(base), "a", "b", f"f{i}")) == os.path.join(str(base), "a", "b", f"f{i}")
    assert walked == [os.path.join(str(base), "a", "b")]
    one.real(os.path.join(str(base), "a", "filelink"))  # the last element a symlink: resolved in full
    assert walked[1:] == [os.path.join(str(base), "a"), os.path.join(str(base), "a", "filelink")]
