"""``minibt run`` from a config file, as real processes against libtorrent on loopback (issue 5).

Daemon seeding, cron-style ``--once`` runs and their exit codes, the run lock, kill -9 and resume,
a corrupt resume file, a full disk (a small tmpfs), SIGHUP reload, the watch dir, bad configs and
the memory budget with five torrents.  Every process is stopped by PID (clients.running).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from clients import (
    LOOPBACK,
    LibtorrentPeer,
    MadeTorrent,
    Opentracker,
    assert_same_tree,
    make_payload,
    make_torrent,
    running,
    wait_until,
)
from runner_proc import RunnerProc, base_client, run_cli, write_config

from minibt.cli import verify_pieces
from minibt.metainfo import load_metainfo
from minibt.storage import load_resume

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reference_clients")]

KIB = 1 << 10
MIB = 1 << 20
PIECE_LEN = 256 * KIB
LAYOUT = {"a.bin": 2 * MIB + 12345, "sub/b.bin": 3 * MIB - 777, "sub/c.txt": 1000}  # ~5 MiB, 3 files
TRANSFER_DEADLINE_S = 40.0
EXIT_DEADLINE_S = 10.0


def make_seed(tmp_path: Path, name: str = "payload", layout: dict[str, int] = LAYOUT, seed: int = 21,
              trackers: list[str] | None = None) -> MadeTorrent:
    src = make_payload(tmp_path / "seed" / name, layout, seed)
    return make_torrent(src, tmp_path / f"{name}.torrent", trackers or [], PIECE_LEN)


def slow_seeder(tmp_path: Path, t: MadeTorrent, rate: int, label: str = "lt-seed") -> LibtorrentPeer:
    # PROTOCOL.md 7.10: session limits skip loopback peers unless ignore_limits_on_local_network is off.
    return LibtorrentPeer(tmp_path / label, torrent_path=t.path, save_dir=tmp_path / "seed", seed=True,
                          extra_settings={"upload_rate_limit": rate, "ignore_limits_on_local_network": False})


def resume_pieces(state: Path, t: MadeTorrent, data: Path) -> set[int]:
    files = sorted(state.glob(f"{t.info_hash}-*.resume"))
    assert len(files) == 1, files
    meta = load_metainfo(str(t.path))
    rd, warning = load_resume(str(files[0]), meta, str(data))
    assert rd is not None, warning
    claimed = bytes(a | b for a, b in zip(rd.have, rd.pending or bytes(len(rd.have)), strict=True))  # pending: written, not flushed
    return {i for i in range(meta.num_pieces) if claimed[i // 8] & (0x80 >> (i % 8))}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------------------------- daemon


def test_daemon_seeds_config_entry_to_libtorrent_and_status_reports_it(tmp_path: Path, opentracker: Opentracker) -> None:
    t = make_seed(tmp_path, trackers=[opentracker.announce_url_http])
    opentracker.whitelist(t.info_hash)
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "minibt.toml", client=base_client(state, tmp_path / "dl"),
                       torrents=[{"source": str(t.path), "dir": str(tmp_path / "seed"), "mode": "seed"}])
    runner = RunnerProc(tmp_path / "run", cfg, state)
    with running(runner):
        opentracker.wait_seeders(t.info_hash, 1)
        leecher = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False,
                                 peers=[(LOOPBACK, runner.port)])
        with running(leecher):
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "leech" / t.name)
            runner.wait_until(lambda: runner.torrent_status(t.name).get("uploaded", 0) >= t.total_size, 10,
                              "status.json shows the upload")
        st = runner.status()
        ts = runner.torrent_status(t.name)
        assert st["running"] is True and st["mode"] == "daemon" and st["pid"] == runner.pid
        assert ts["state"] == "seeding" and ts["progress"] == 1.0 and ts["ratio"] >= 1.0
        assert st["process"]["rss_bytes"] > 0 and st["process"]["cpu_seconds"] > 0
        human = run_cli(["status", "-c", str(cfg)])
        assert human.returncode == 0, human.stderr
        assert f"{t.name}: seeding" in human.stdout and "running, port" in human.stdout
        raw = run_cli(["status", "-c", str(cfg), "--json"])
        assert json.loads(raw.stdout)["torrents"][0]["info_hash"] == t.info_hash
        rc, took = runner.terminate(EXIT_DEADLINE_S)
        assert rc == 0, runner.log_tail()
        # The 'stopped' announce went out before the exit: opentracker lists no seeder any more.
        assert opentracker.scrape(t.info_hash).get("complete", 0) == 0, runner.log_tail()
    assert "SIGTERM: announcing 'stopped' and saving state" in runner.log_text()
    final = runner.status()
    assert final["running"] is False
    assert resume_pieces(state, t, tmp_path / "seed") == set(range(t.num_pieces))


# --------------------------------------------------------------------------------------------- --once


def test_once_max_time_exits_3_then_rerun_exits_0_byte_exact_and_runs_hook(tmp_path: Path) -> None:
    t = make_seed(tmp_path, layout={"one.bin": 3 * MIB + 5555, "two/two.bin": 3 * MIB - 5555})
    state, data = tmp_path / "state", tmp_path / "data"
    hook_out = tmp_path / "hook.txt"
    hook = tmp_path / "hook.py"
    hook.write_text("import sys, pathlib\npathlib.Path(sys.argv[1]).write_text('\\n'.join(sys.argv[2:]))\n")
    seeder = slow_seeder(tmp_path, t, 1024 * KIB)  # ~6 s for the whole payload
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        cfg = write_config(tmp_path / "cron.toml", client=base_client(state, data),
                           torrents=[{"source": str(t.path), "mode": "download",
                                      "peers": [f"{LOOPBACK}:{seeder.port}"],
                                      "on_complete": [sys.executable, str(hook), str(hook_out)]}])
        first = RunnerProc(tmp_path / "run1", cfg, state, once=True, args=["--max-time", "2s"], label="once-1")
        with running(first):
            rc = first.wait_exit(20)
        assert rc == 3, first.log_tail()
        assert f"{t.name}: incomplete, progress saved" in first.log_text()
        kept = resume_pieces(state, t, data)
        assert 0 < len(kept) < t.num_pieces
        assert not hook_out.exists()
        second = RunnerProc(tmp_path / "run2", cfg, state, once=True, args=["--max-time", "60s"], label="once-2")
        with running(second):
            rc = second.wait_exit(TRANSFER_DEADLINE_S)
        assert rc == 0, second.log_tail()
        assert f"{t.name}: complete" in second.log_text()
        assert_same_tree(tmp_path / "seed" / t.name, data / t.name)
        ts = second.torrent_status(t.name)
        assert ts["checked"] == 0  # resumed from the record, nothing re-hashed
        assert ts["downloaded"] <= t.total_size - len(kept) * PIECE_LEN + PIECE_LEN
        wait_until(hook_out.exists, 10, "the on_complete hook to run")
        assert hook_out.read_text().split("\n") == [t.name, str(data / t.name)]
        third = run_cli(["run", "-c", str(cfg), "--once", "--max-time", "30s"])
        assert third.returncode == 0, third.stderr  # already complete: exits 0 at once


def test_two_once_runs_second_exits_75_at_once_and_touches_nothing(tmp_path: Path) -> None:
    t = make_seed(tmp_path)
    state, data = tmp_path / "state", tmp_path / "data"
    cfg = write_config(tmp_path / "cron.toml",
                       client={**base_client(state, data), "status_interval": 3600, "resume_interval": 3600},
                       torrents=[{"source": str(t.path), "mode": "download"}])  # no peers: never finishes
    first = RunnerProc(tmp_path / "run1", cfg, state, once=True, args=["--max-time", "60s"], label="once-1")
    with running(first):
        first.wait_until(lambda: all((state / n).exists() for n in ("status.json", "runner-state.json", "bans.json")),
                         10, "first status")  # written at start (bans.json last); the next ones are an hour away
        before_state, before_data = snapshot(state), snapshot(data)
        t0 = time.monotonic()
        second = run_cli(["run", "-c", str(cfg), "--once", "--max-time", "60s"], timeout_s=20)
        took = time.monotonic() - t0
        assert second.returncode == 75, second.stderr
        assert "another minibt run holds" in second.stderr
        assert took < 5.0, f"the second run took {took:.1f} s to give up"
        assert snapshot(state) == before_state and snapshot(data) == before_data
        assert first.returncode() is None
        first.signal(signal.SIGTERM)
        assert first.wait_exit(EXIT_DEADLINE_S) == 3  # interrupted: progress saved, a rerun resumes


def test_two_once_runs_started_at_the_same_moment_one_exits_75(tmp_path: Path) -> None:
    t = make_seed(tmp_path)
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "cron.toml", client=base_client(state, tmp_path / "data"),
                       torrents=[{"source": str(t.path)}])  # no peers: runs until its time is up
    a = RunnerProc(tmp_path / "a", cfg, state, once=True, args=["--max-time", "5s"], label="once-a")
    b = RunnerProc(tmp_path / "b", cfg, state, once=True, args=["--max-time", "5s"], label="once-b")
    a.spawn()  # both started back to back, neither waited for
    b.spawn()
    try:
        wait_until(lambda: a.returncode() is not None or b.returncode() is not None, 10, "one run to give up")
        first = a if a.returncode() is not None else b
        other = b if first is a else a
        assert first.returncode() == 75, first.log_tail()
        assert other.returncode() is None  # the lock holder goes on
        assert other.wait_exit(15) == 3, other.log_tail()
    finally:
        a.stop()
        b.stop()


# --------------------------------------------------------------------------------------------- durability


def test_kill9_mid_download_restart_resumes_without_redownload_or_rehash(tmp_path: Path) -> None:
    t = make_seed(tmp_path, layout={"one.bin": 4 * MIB + 111, "two.bin": 2 * MIB - 111})
    state, data = tmp_path / "state", tmp_path / "data"
    seeder = slow_seeder(tmp_path, t, 1024 * KIB)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        cfg = write_config(tmp_path / "cron.toml", client=base_client(state, data),
                           torrents=[{"source": str(t.path), "peers": [f"{LOOPBACK}:{seeder.port}"]}])
        first = RunnerProc(tmp_path / "run1", cfg, state, once=True, label="once-1")
        with running(first):
            first.wait_until(lambda: len(list(state.glob("*.resume"))) == 1
                             and 4 <= len(resume_pieces(state, t, data)) < t.num_pieces - 4,
                             20, "resume data with some pieces")
            first.kill9()
        kept = resume_pieces(state, t, data)
        meta = load_metainfo(str(t.path))
        bad = set(verify_pieces(meta, str(data)))
        assert not kept & bad, f"resume data claims pieces that are not on disk: {sorted(kept & bad)}"
        second = RunnerProc(tmp_path / "run2", cfg, state, once=True, args=["--max-time", "60s"], label="once-2")
        with running(second):
            assert second.wait_exit(TRANSFER_DEADLINE_S) == 0, second.log_tail()
        ts = second.torrent_status(t.name)
        missing = sum(meta.piece_size(i) for i in range(meta.num_pieces) if i not in kept)
        print(f"\nkill -9: {len(kept)}/{meta.num_pieces} pieces kept; rerun downloaded {ts['downloaded']} B "
              f"for {missing} B missing, checked {ts['checked']} pieces")
        assert ts["checked"] == 0
        assert ts["downloaded"] == missing  # verified pieces of the rerun: exactly the ones not recorded
        assert_same_tree(tmp_path / "seed" / t.name, data / t.name)


def test_corrupt_resume_file_falls_back_to_recheck_with_warning(tmp_path: Path) -> None:
    t = make_seed(tmp_path)
    state, data = tmp_path / "state", tmp_path / "seed"
    cfg = write_config(tmp_path / "cron.toml", client=base_client(state, tmp_path / "dl"),
                       torrents=[{"source": str(t.path), "dir": str(data)}])
    assert run_cli(["run", "-c", str(cfg), "--once", "--max-time", "30s"]).returncode == 0
    (res,) = state.glob("*.resume")
    raw = res.read_bytes()
    res.write_bytes(raw[: len(raw) // 2])  # a power cut mid-write without the atomic rename
    again = RunnerProc(tmp_path / "run", cfg, state, once=True, args=["--max-time", "30s"])
    with running(again):
        assert again.wait_exit(30) == 0, again.log_tail()
    assert "corrupt resume file" in again.log_text() and "checking data on disk" in again.log_text()
    ts = again.torrent_status(t.name)
    assert ts["checked"] == t.num_pieces and ts["downloaded"] == 0
    assert resume_pieces(state, t, data) == set(range(t.num_pieces))  # rewritten, atomically


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


STILL_FULL = "still no room on disk"  # download.py logs this on each retry that finds no room


def test_disk_full_pauses_with_error_then_continues_when_space_returns(tmp_path: Path, small_tmpfs: Path) -> None:
    t = make_seed(tmp_path, layout={"big.bin": 5 * MIB + 3})
    state, data = tmp_path / "state", small_tmpfs
    seeder = slow_seeder(tmp_path, t, 4 * MIB)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        cfg = write_config(tmp_path / "minibt.toml", client=base_client(state, data),
                           torrents=[{"source": str(t.path), "peers": [f"{LOOPBACK}:{seeder.port}"]}])
        runner = RunnerProc(tmp_path / "run", cfg, state)
        with running(runner):
            runner.wait_until(lambda: runner.torrent_status(t.name).get("disk_error"), 30, "disk-full pause")
            ts = runner.torrent_status(t.name)
            assert "No space left on device" in ts["disk_error"] and ts["state"] == "downloading"
            assert "disk full, download paused" in runner.log_text()
            got = ts["have_pieces"]
            assert 0 < got < t.num_pieces
            # A few retries (disk_retry_interval = 1 s) while the disk stays full, each one logged.
            retries = runner.log_text().count(STILL_FULL)
            runner.wait_until(lambda: runner.log_text().count(STILL_FULL) >= retries + 2, 15,
                              "two disk-space retries while the disk stays full")
            still = runner.torrent_status(t.name)
            assert still["disk_error"] and still["have_pieces"] == got and runner.returncode() is None
            r = subprocess.run(["mount", "-o", "remount,size=16m", str(data)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            runner.wait_until(lambda: runner.torrent_status(t.name).get("state") == "seeding", TRANSFER_DEADLINE_S,
                              "download finished after space returned")
            assert runner.torrent_status(t.name)["disk_error"] is None
            assert "download resumed" in runner.log_text()
            assert_same_tree(tmp_path / "seed" / t.name, data / t.name)
            rc, _ = runner.terminate(EXIT_DEADLINE_S)
            assert rc == 0


def test_once_with_file_selection_fetches_only_the_selected_file(tmp_path: Path) -> None:
    t = make_seed(tmp_path, layout={"a.bin": 2 * MIB + 100, "b.bin": 1 * MIB, "c.bin": 2 * MIB - 100})
    state, data = tmp_path / "state", tmp_path / "data"
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        cfg = write_config(tmp_path / "cron.toml", client=base_client(state, data),
                           torrents=[{"source": str(t.path), "files": ["c.bin"], "peers": [f"{LOOPBACK}:{seeder.port}"]}])
        r = run_cli(["run", "-c", str(cfg), "--once", "--max-time", "60s"])
        assert r.returncode == 0, r.stderr
    assert (data / t.name / "c.bin").read_bytes() == (tmp_path / "seed" / t.name / "c.bin").read_bytes()
    assert not (data / t.name / "a.bin").exists()
    st = json.loads((state / "status.json").read_text())["torrents"][0]
    # c.bin starts inside the piece that ends b.bin: that piece and c.bin's own are all that was fetched.
    assert st["downloaded"] == st["wanted_bytes"] < 2 * MIB + PIECE_LEN and st["progress"] == 1.0


# --------------------------------------------------------------------------------------------- reload, watch dir


def test_sighup_adds_a_torrent_without_dropping_the_running_one(tmp_path: Path) -> None:
    a = make_seed(tmp_path, "alpha", {"a.bin": 3 * MIB}, seed=1)
    b = make_seed(tmp_path, "beta", {"b.bin": 1 * MIB}, seed=2)
    state = tmp_path / "state"
    seed_a = {"source": str(a.path), "dir": str(tmp_path / "seed"), "mode": "seed"}
    cfg = write_config(tmp_path / "minibt.toml", client=base_client(state, tmp_path / "dl"), torrents=[seed_a])
    runner = RunnerProc(tmp_path / "run", cfg, state)
    with running(runner):
        leecher = LibtorrentPeer(tmp_path / "lt-a", torrent_path=a.path, save_dir=tmp_path / "leech-a", seed=False,
                                 peers=[(LOOPBACK, runner.port)],
                                 extra_settings={"download_rate_limit": 512 * KIB, "ignore_limits_on_local_network": False})
        with running(leecher):
            leecher.wait_peers(1)
            runner.wait_until(lambda: runner.torrent_status(a.name).get("uploaded", 0) > 0, 10, "alpha uploading")
            up_before = runner.torrent_status(a.name)["uploaded"]
            log_before = len(runner.log_text())
            write_config(cfg, client=base_client(state, tmp_path / "dl"),
                         torrents=[seed_a, {"source": str(b.path), "dir": str(tmp_path / "seed"), "mode": "seed"}])
            runner.signal(signal.SIGHUP)
            runner.wait_until(lambda: runner.torrent_status(b.name).get("state") == "seeding", 10, "beta seeding")
            assert "reloaded" in runner.log_text() and "1 added" in runner.log_text()
            assert runner.log_text().count("alpha: added") == 1  # never restarted
            st = runner.torrent_status(a.name)
            assert st["peers"] == 1 and st["uploaded"] >= up_before  # same connection, counters kept
            assert not leecher.status().get("is_seeding"), "the leecher finished before the reload was checked"
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            after = runner.log_text()[log_before:]
            # The reload dropped no connection of the unaffected torrent: the one connection ended only when
            # the leecher completed, closed by whichever side saw first that both are seeds.
            ends = [ln for ln in after.splitlines() if "disconnected" in ln]
            assert len(ends) <= 1 and all("BOTH_SEEDS" in ln or "CLOSED_BY_REMOTE" in ln for ln in ends), ends
            assert_same_tree(tmp_path / "seed" / a.name, tmp_path / "leech-a" / a.name)
            write_config(cfg, client={**base_client(state, tmp_path / "dl"), "nonsense": 1}, torrents=[seed_a])
            runner.signal(signal.SIGHUP)
            runner.wait_until(lambda: "reload refused" in runner.log_text(), 10, "bad reload refused")
            assert runner.torrent_status(b.name).get("state") == "seeding"  # the old config stays
        assert runner.terminate(EXIT_DEADLINE_S)[0] == 0


def test_watch_dir_torrent_is_picked_up_and_downloaded(tmp_path: Path) -> None:
    t = make_seed(tmp_path, layout={"w.bin": 2 * MIB + 7})
    state, data, watch = tmp_path / "state", tmp_path / "data", tmp_path / "watch"
    watch.mkdir()
    cfg = write_config(tmp_path / "minibt.toml", client=base_client(state, data, watch_dir=str(watch)))
    runner = RunnerProc(tmp_path / "run", cfg, state)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(runner, seeder):
        seeder.wait_complete(timeout_s=20)
        (watch / "new.torrent").write_bytes(t.path.read_bytes())
        runner.wait_until(lambda: (watch / "new.torrent.added").exists(), 10, "watch dir pick-up")
        seeder.connect(LOOPBACK, runner.port)
        runner.wait_until(lambda: runner.torrent_status(t.name).get("state") == "seeding", TRANSFER_DEADLINE_S,
                          "watch-dir download complete")
        assert_same_tree(tmp_path / "seed" / t.name, data / t.name)
        assert (state / "watched" / f"{t.info_hash}.torrent").exists()
        assert runner.terminate(EXIT_DEADLINE_S)[0] == 0


# --------------------------------------------------------------------------------------------- magnets


def test_once_magnet_entry_fetches_metadata_downloads_and_rerun_starts_from_saved_metadata(tmp_path: Path) -> None:
    t = make_seed(tmp_path, layout={"m.bin": 2 * MIB + 99, "sub/n.bin": MIB - 7})
    state, data = tmp_path / "state", tmp_path / "data"
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        uri = f"magnet:?xt=urn:btih:{t.info_hash}&dn=shown-name&x.pe={LOOPBACK}:{seeder.port}"
        cfg = write_config(tmp_path / "cron.toml", client=base_client(state, data),
                           torrents=[{"source": uri, "mode": "download"}])
        first = RunnerProc(tmp_path / "run1", cfg, state, once=True, args=["--max-time", "60s"], label="once-1")
        with running(first):
            rc = first.wait_exit(TRANSFER_DEADLINE_S)
        assert rc == 0, first.log_tail()
        assert "fetching the metadata" in first.log_text() and "metadata received" in first.log_text()
        assert f"{t.name}: complete" in first.log_text()
        assert_same_tree(tmp_path / "seed" / t.name, data / t.name)
        saved = state / "magnets" / f"{t.info_hash}.torrent"
        assert load_metainfo(str(saved)).info_hash.hex() == t.info_hash
    # The seeder is gone: the rerun needs no metadata from anyone and finds the data complete.
    second = run_cli(["run", "-c", str(cfg), "--once", "--max-time", "30s"])
    assert second.returncode == 0, second.stderr
    assert f"{t.name}: complete" in second.stderr


def test_watch_dir_magnet_file_is_fetched_and_downloaded(tmp_path: Path) -> None:
    t = make_seed(tmp_path, layout={"wm.bin": MIB + 3})
    state, data, watch = tmp_path / "state", tmp_path / "data", tmp_path / "watch"
    watch.mkdir()
    cfg = write_config(tmp_path / "minibt.toml", client=base_client(state, data, watch_dir=str(watch)))
    runner = RunnerProc(tmp_path / "run", cfg, state)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(runner, seeder):
        seeder.wait_complete(timeout_s=20)
        (watch / "bad.magnet").write_text("magnet:?xt=urn:btih:nothex\n")
        (watch / "new.magnet").write_text(f"magnet:?xt=urn:btih:{t.info_hash}&x.pe={LOOPBACK}:{seeder.port}\n")
        runner.wait_until(lambda: (watch / "new.magnet.added").exists(), 10, "watch dir pick-up")
        runner.wait_until(lambda: runner.torrent_status(t.name).get("state") == "seeding", TRANSFER_DEADLINE_S,
                          "watch-dir magnet download complete")
        assert_same_tree(tmp_path / "seed" / t.name, data / t.name)
        assert (watch / "bad.magnet.invalid").exists()
        assert (state / "watched" / f"{t.info_hash}.magnet").exists()
        assert runner.terminate(EXIT_DEADLINE_S)[0] == 0


# --------------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("[client]\nlisten_prot = 1\n", "client.listen_prot", "unknown key"),
        ("[client]\nlisten_port = \"x\"\n", "client.listen_port", "expected a port number"),
        ("[client]\nmemory_budget = \"1MiB\"\n", "client.memory_budget", "at least 32MiB"),
        ("[[torrent]]\nsource = \"nope.torrent\"\n", "torrent[0].source", "no such file"),
        ("[[torrent]]\nsource = \"magnet:?xt=urn:btih:" + "ab" * 20 + "\"\nmode = \"seed\"\ndir = \".\"\n", "torrent[0].mode",
         "magnet source cannot be seeded"),
        ("[schedule]\ndownload_windows = [\"25:00-26:00\"]\n", "schedule.download_windows", "HH:MM"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key_and_starts_nothing(
    tmp_path: Path, body: str, key: str, expected: str
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[log]\nlevel = \"info\"\n{body}".replace("[log]\nlevel = \"info\"\n[client]\n",
                                                            f"[client]\nstate_dir = \"{state}\"\n"))
    r = run_cli(["run", "-c", str(cfg), "--once"])
    assert r.returncode == 2, r.stderr
    assert str(cfg) in r.stderr and key in r.stderr and expected in r.stderr, r.stderr
    assert not state.exists()


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    r = run_cli(["run", "-c", str(tmp_path / "absent.toml")])
    assert r.returncode == 2 and "absent.toml" in r.stderr and "no such file" in r.stderr


# --------------------------------------------------------------------------------------------- memory


def test_five_torrents_seeded_to_libtorrent_stay_under_the_memory_budget(tmp_path: Path) -> None:
    budget = 96 * MIB  # the default, sized for a 512 MiB Pi Zero 2
    ts = [make_seed(tmp_path, f"t{i}", {f"f{i}.bin": 6 * MIB + i}, seed=100 + i) for i in range(5)]
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "minibt.toml", client={**base_client(state, tmp_path / "dl"), "memory_budget": "96MiB"},
                       torrents=[{"source": str(t.path), "dir": str(tmp_path / "seed"), "mode": "seed"} for t in ts])
    runner = RunnerProc(tmp_path / "run", cfg, state, verbose=0)
    with running(runner):
        proc = psutil.Process(runner.pid)
        runner.wait_until(lambda: len([x for x in runner.status().get("torrents", []) if x["state"] == "seeding"]) == 5,
                          30, "five torrents seeding")
        leechers = [LibtorrentPeer(tmp_path / f"lt{i}", torrent_path=t.path, save_dir=tmp_path / f"leech{i}",
                                   seed=False, peers=[(LOOPBACK, runner.port)]) for i, t in enumerate(ts)]
        peak = 0
        with running(*leechers):
            deadline = time.monotonic() + 90
            while not all(lt.status().get("is_seeding") for lt in leechers):
                peak = max(peak, proc.memory_info().rss)
                assert time.monotonic() < deadline, "leechers did not finish in 90 s\n" + runner.log_tail()
                time.sleep(0.05)
            peak = max(peak, proc.memory_info().rss)
        for i, t in enumerate(ts):
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / f"leech{i}" / t.name)
        # The status reports the kernel's peak (VmHWM), so no sample taken before it can be higher.
        # (The status file is rewritten when a figure in it changed, the peak RSS included: wait for that.)
        runner.wait_until(lambda: runner.status()["process"]["peak_rss_bytes"] >= peak - 512 * KIB, 10,
                          "a status with the peak")  # VmHWM trails the RSS by a few per-thread page counts
        reported = runner.status()["process"]["peak_rss_bytes"]
        print(f"\nmemory: 5 torrents x 6 MiB seeded to 5 libtorrent leechers: peak RSS {peak / MIB:.1f} MiB "
              f"(runner's own sample {reported / MIB:.1f} MiB), budget {budget / MIB:.0f} MiB")
        assert peak < budget
        assert runner.terminate(EXIT_DEADLINE_S)[0] == 0
    assert os.path.exists(state / "status.json")


@pytest.mark.parametrize("budget_mib", [40, 96])
def test_download_peak_rss_stays_under_the_memory_budget(tmp_path: Path, budget_mib: int) -> None:
    """The budget shrinks the write cache: a 48 MiB download fits a 40 MiB budget as it does the default."""
    t = make_seed(tmp_path, layout={"big.bin": 48 * MIB + 1})
    state, data = tmp_path / "state", tmp_path / "data"
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=30)
        cfg = write_config(tmp_path / "cron.toml",
                           client={**base_client(state, data), "memory_budget": f"{budget_mib}MiB"},
                           torrents=[{"source": str(t.path), "peers": [f"{LOOPBACK}:{seeder.port}"]}])
        run = RunnerProc(tmp_path / "run", cfg, state, once=True, args=["--max-time", "120s"], verbose=0)
        peak = 0
        with running(run):
            proc = psutil.Process(run.pid)
            while run.returncode() is None:
                try:
                    peak = max(peak, proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.02)
            assert run.wait_exit(5) == 0, run.log_tail()
    lim = run.status()["limits"]
    print(f"\nmemory: 48 MiB download with memory_budget {budget_mib} MiB: peak RSS {peak / MIB:.1f} MiB "
          f"(write cache {lim['cache_bytes'] / MIB:.1f} MiB, {lim['max_connections']} connections, "
          f"outbox {lim['outbox_bytes'] // KIB} KiB)")
    assert peak < budget_mib * MIB
    assert_same_tree(tmp_path / "seed" / t.name, data / t.name)
