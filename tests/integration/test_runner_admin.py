"""``minibt run`` as a Pi administers it (issue 10): status read by another user in the daemon's group
(and refused, with advice, outside it), and a seed dir that appears after the daemon started.

The other users are plain uid/gid numbers in a child that drops root (setgroups/setgid/setuid) after
importing minibt, so /root (0700, where the interpreter lives) need not be readable by them.  One
throwaway group with a unique name is created and removed again.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import make_payload, running
from runner_proc import RunnerProc, base_client, run_cli, write_config

from minibt.metainfo import create_torrent

pytestmark = pytest.mark.integration

EXIT_DEADLINE_S = 10.0
STATUS_TIMEOUT_S = 10.0

# Runs `minibt status` as another user: everything is imported first, then root is dropped.
DROP_AND_RUN = """
import json, os, sys
import psutil
import minibt.cli, minibt.configfile, minibt.runner, minibt.statusfile
uid, gid, groups = int(sys.argv[1]), int(sys.argv[2]), [int(g) for g in sys.argv[3].split(",") if g]
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
sys.exit(minibt.cli.main(sys.argv[4:]))
"""


def unused_id(taken: set[int]) -> int:
    for n in range(64000, 65000):
        if n not in taken:
            return n
    raise AssertionError("no free id")


def status_as(uid: int, gid: int, groups: list[int], config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DROP_AND_RUN, str(uid), str(gid), ",".join(map(str, groups)), "status", "-c", str(config)],
        capture_output=True, text=True, cwd=cwd, timeout=60, check=False,
    )


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path sits below a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="minibt-admin-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def daemon_group() -> Iterator[grp.struct_group]:
    if os.geteuid() != 0 or shutil.which("groupadd") is None:
        pytest.skip("needs root and groupadd to make a throwaway group")
    name = "mbt" + uuid.uuid4().hex[:12]
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=True, capture_output=True)


def test_status_is_readable_in_the_daemons_group_and_refused_with_advice_outside_it(
    scratch: Path, daemon_group: grp.struct_group
) -> None:
    gid = daemon_group.gr_gid
    state = scratch / "state"
    state.mkdir(mode=0o750)
    os.chown(state, 0, gid)  # what systemd's StateDirectory= (and tools/install.sh) leave: owner:group 0750
    os.chmod(state, 0o750)
    cfg = write_config(scratch / "minibt.toml", client=base_client(state, scratch / "dl"))
    os.chmod(cfg, 0o644)
    runner = RunnerProc(scratch / "run", cfg, state)
    taken_uids = {p.pw_uid for p in pwd.getpwall()}
    taken_gids = {g.gr_gid for g in grp.getgrall()}
    user = unused_id(taken_uids)
    with running(runner):
        runner.wait_until(lambda: runner.status().get("running") is True, STATUS_TIMEOUT_S, "status.json written")
        runner.wait_until(lambda: (state / "runner-state.json").exists() and (state / "bans.json").exists(),
                          STATUS_TIMEOUT_S, "runner state and bans written")
        for name in ("status.json", "runner-state.json", "bans.json"):
            st = os.stat(state / name)
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid), name

        member = status_as(user, unused_id(taken_gids), [gid], cfg, scratch)
        assert member.returncode == 0, member.stderr
        assert f"pid {runner.pid}: running" in member.stdout and member.stderr == ""

        outsider = status_as(user, unused_id(taken_gids), [], cfg, scratch)
        assert outsider.returncode == 1, outsider.stdout
        name = daemon_group.gr_name
        assert outsider.stderr == (
            f"minibt: permission denied reading {state / 'status.json'}: add your user to group {name} "
            f"(sudo usermod -aG {name} $USER, then log in again)\n"
        )
        assert "is `minibt run` running" not in outsider.stderr
    assert runner.returncode() == 0


def test_seed_dir_missing_at_start_is_waited_for_and_seeded_once_it_appears(tmp_path: Path) -> None:
    src = make_payload(tmp_path / "incoming" / "payload", {"a.bin": 300_000, "sub/b.bin": 70_000}, seed=7)
    torrent = tmp_path / "payload.torrent"
    torrent.write_bytes(create_torrent(str(src), trackers=[], piece_length=65536))
    share = tmp_path / "share"  # a share that mounts after the daemon started
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "minibt.toml",
                       client=base_client(state, tmp_path / "dl", watch_dir=str(share / "watch")),
                       torrents=[{"source": str(torrent), "dir": str(share), "mode": "seed"}])
    runner = RunnerProc(tmp_path / "run", cfg, state)
    with running(runner):
        runner.wait_until(lambda: runner.torrent_status("payload").get("state") == "waiting",
                          STATUS_TIMEOUT_S, "the seed entry waiting for its dir")
        st = runner.status()
        assert st["torrents"][0]["waiting"].startswith(f"waiting: directory {share} missing, retrying every 1 s")
        assert st["watch_dir"]["waiting"].startswith(f"waiting: directory {share / 'watch'} missing")
        shown = run_cli(["status", "-c", str(cfg)])
        assert shown.returncode == 0, shown.stderr
        assert "payload: waiting" in shown.stdout and f"directory {share} missing" in shown.stdout
        assert f"watch dir {share / 'watch'}: waiting" in shown.stdout

        (share / "watch").mkdir(parents=True)
        os.rename(tmp_path / "incoming" / "payload", share / "payload")  # the mount appears with its data
        runner.wait_until(lambda: runner.torrent_status("payload").get("state") == "seeding",
                          STATUS_TIMEOUT_S, "the seed entry seeding once its dir is there")
        runner.wait_until(lambda: runner.status().get("watch_dir", {}).get("waiting", "x") is None,
                          STATUS_TIMEOUT_S, "the watch dir no longer waited for")
        assert runner.torrent_status("payload")["progress"] == 1.0
        assert f"payload: directory {share} is there now: starting" in runner.log_text()
        assert runner.terminate(EXIT_DEADLINE_S)[0] == 0
