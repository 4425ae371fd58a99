"""durable.write_atomic: the file is replaced whole or not at all, with exactly the mode asked for,
and no temporary file is left behind, also when the write fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from minibt import durable


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_replaces_content_with_the_mode_asked_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "x.resume"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        durable.write_atomic(str(target), b"new" * 1000, mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new" * 1000
    assert _mode(target) == 0o644
    durable.write_atomic(str(target), b"again")
    assert target.read_bytes() == b"again" and _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.resume"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.resume"
    target.write_bytes(b"old")

    def full_disk(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        durable.write_atomic(str(target), b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.resume"]


def test_the_temporary_is_created_exclusively_beside_the_target(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the first random name is taken (a file an attacker planted): a second name is drawn, the planted
    # file is neither opened nor touched
    names = iter([b"\x00" * 6, b"\x01" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: next(names))
    planted = tmp_path / f"x.resume.{'00' * 6}.tmp"
    planted.write_bytes(b"planted")
    durable.write_atomic(str(tmp_path / "x.resume"), b"data")
    assert planted.read_bytes() == b"planted"
    assert (tmp_path / "x.resume").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([planted.name, "x.resume"])
