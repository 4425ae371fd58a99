"""Who can read the state files, and `minibt status` with an invalid config file."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from minibt.cli import main
from minibt.errors import ConfigError
from minibt.statusfile import (
    RunLock,
    permission_advice,
    pid_alive,
    read_status,
    status_state_dir,
    write_json_atomic,
)

DOC = {"mode": "daemon", "pid": 1, "running": True, "listen_port": 6881, "updated_at": 0.0, "torrents": []}


def test_state_dir_is_0750_and_state_files_0640_resume_style_files_stay_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        lock = RunLock(str(tmp_path / "state"))
        assert lock.acquire()
        lock.release()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o750
    write_json_atomic(str(tmp_path / "state" / "status.json"), DOC)
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "status.json").st_mode) == 0o640
    from minibt.durable import write_atomic

    write_atomic(str(tmp_path / "state" / "x.resume"), b"d")
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "x.resume").st_mode) == 0o600


def test_existing_state_dir_keeps_its_mode_and_gives_files_its_group(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    other = next((g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid()), None)
    if other is None or os.geteuid() != 0:
        pytest.skip("needs root and a second group to hand the state dir to")
    os.chown(d, -1, other)
    RunLock(str(d)).acquire()
    write_json_atomic(str(d / "status.json"), DOC)
    st = os.stat(d / "status.json")
    assert st.st_gid == other and stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755


def test_permission_advice_names_the_group_and_the_command(tmp_path: Path) -> None:
    write_json_atomic(str(tmp_path / "status.json"), DOC)
    group = grp.getgrgid(os.stat(tmp_path / "status.json").st_gid).gr_name
    assert permission_advice(str(tmp_path / "status.json")) == (
        f"permission denied reading {tmp_path / 'status.json'}: add your user to group {group} "
        f"(sudo usermod -aG {group} $USER, then log in again)"
    )
    # A member of the group facing a 0600 file (written by an older minibt): joining would not help.
    os.chmod(tmp_path / "status.json", 0o600)
    assert "it is mode 0600, not readable by group" in permission_advice(str(tmp_path / "status.json"))
    # The file cannot be looked at (a state dir closed to us): the directory's group is named.
    (tmp_path / "sub").mkdir()
    assert f"add your user to group {group} " in permission_advice(str(tmp_path / "sub" / "status.json"))


def test_read_status_missing_and_damaged_are_none(tmp_path: Path) -> None:
    assert read_status(str(tmp_path / "status.json")) is None
    (tmp_path / "status.json").write_text("[1, 2]")
    assert read_status(str(tmp_path / "status.json")) is None
    write_json_atomic(str(tmp_path / "status.json"), DOC)
    assert read_status(str(tmp_path / "status.json")) == DOC


@pytest.mark.parametrize(
    ("text", "state_dir"),
    [
        ('[client]\nstate_dir = "st"\nlisten_port = 99999\n', "st"),  # valid TOML, a bad value
        ('[client]\nstate_dir = "st"\nlisten_port = \n', "st"),  # not TOML: the one state_dir line counts
        ("[client]\nstate_dir = 'st' # comment\n[log\n", "st"),
        ("[client]\nlisten_prot = 1\n", None),  # no state_dir: the default
        ("[client\n", None),
    ],
)
def test_invalid_config_still_gives_its_state_dir_with_a_warning(tmp_path: Path, text: str, state_dir: str | None) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    got, warning = status_state_dir(str(cfg), cwd="/")
    want = str(tmp_path / state_dir) if state_dir else os.path.expanduser("~/.local/state/minibt")
    assert got == want
    assert warning is not None and warning.startswith(f"warning: {cfg}") and "\n" not in warning


@pytest.mark.parametrize(
    "text",
    [
        '[client]\nstate_dir = 3\nlisten_port = 99999\n',  # valid TOML, state_dir not a string
        '[client]\nstate_dir = "a\\tb"\n[log\n',  # an escape the line scan does not interpret
        '[client]\nstate_dir = "a"\nstate_dir = "b"\n',  # a duplicate key: which one?
        'client = 3\n',
    ],
)
def test_invalid_config_without_a_usable_state_dir_is_a_clear_error(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="state dir cannot be told from it"):
        status_state_dir(str(cfg), cwd="/")


def test_status_command_warns_about_an_invalid_config_and_shows_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[client]\nstate_dir = "state"\n')
    (tmp_path / "state").mkdir()
    write_json_atomic(str(tmp_path / "state" / "status.json"), {**DOC, "pid": os.getpid()})
    cfg.write_text('[client]\nstate_dir = "state"\nupload_limit = "fast"\n')  # edited while the daemon runs
    assert main(["status", "-c", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("minibt: warning: ") and "client.upload_limit" in err
    assert f"minibt daemon pid {os.getpid()}: running" in out
    cfg.write_text("[client]\nstate_dir = 3\nbad = 1\n")
    assert main(["status", "-c", str(cfg)]) == 2
    assert "state dir cannot be told from it" in capsys.readouterr().err
    assert main(["status", "-c", str(tmp_path / "absent.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_pid_alive_tells_a_live_process_from_a_gone_one_and_refuses_group_ids() -> None:
    import subprocess
    import sys

    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    assert not pid_alive(child.pid)
    assert not pid_alive(2**22 + 1)  # above Linux's largest pid
    # 0 and -1 would signal a process group or every process; a bool or a string is not a pid
    assert [p for p in (0, -1, True, "1", None, 1.0) if pid_alive(p)] == []
    if os.geteuid() != 0:
        assert pid_alive(1)  # init: another user's process answers EPERM, and it exists
