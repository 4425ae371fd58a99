"""Memory of a ``minibt run`` process in a loopback swarm of real libtorrent peers (issue 10).

Two shapes, each peer its own libtorrent process on its own loopback address (127.0.0.x):
- ``download_swarm``: N seeders of one torrent; minibt dials them all and downloads it.
- ``seed_swarm``: minibt seeds T torrents; L leechers (spread over the torrents) dial minibt.
A sampler thread reads /proc/PID/status of the minibt process every 20 ms; the result holds the
kernel's peak (VmHWM, read last while the process still runs), the largest RssAnon sample and
what ``minibt status`` reported.  Used by tests/integration/test_memswarm.py and tools/memswarm.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from clients import LibtorrentPeer, MadeTorrent, make_payload, make_torrent, wait_until
from runner_proc import RunnerProc, base_client, write_config

SAMPLE_INTERVAL_S = 0.02
MiB = 1 << 20


def proc_status_kib(pid: int) -> dict[str, int]:
    """The ``kB`` fields of /proc/PID/status (VmHWM, VmRSS, RssAnon, ...), in KiB; {} once gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0])
    except OSError:
        return {}
    return out


class MemSampler:
    """Polls /proc/PID/status in a thread; keeps the largest VmHWM, VmRSS and RssAnon seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[str, int] = {"VmHWM": 0, "VmRSS": 0, "RssAnon": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"memsampler-{pid}")

    def __enter__(self) -> MemSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        st = proc_status_kib(self.pid)
        if not st:
            return
        self.samples += 1
        for k in self.peak:
            self.peak[k] = max(self.peak[k], st.get(k, 0) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()


@dataclass
class SwarmResult:
    case: str
    budget_bytes: int
    vm_hwm: int  # kernel peak RSS of the minibt process
    rss_anon_peak: int  # largest sampled anonymous RSS
    seconds: float
    status_peak: int  # peak_rss_bytes from minibt's status file
    limits: dict[str, int] = field(default_factory=dict)
    bytes_done: int = 0

    def line(self) -> str:
        return (f"{self.case}: VmHWM {self.vm_hwm / MiB:.1f} MiB, RssAnon peak {self.rss_anon_peak / MiB:.1f} MiB, "
                f"status peak {self.status_peak / MiB:.1f} MiB, budget {self.budget_bytes / MiB:.0f} MiB, "
                f"{self.bytes_done / MiB:.0f} MiB in {self.seconds:.1f} s, limits {self.limits}")


def peer_ip(i: int) -> str:
    """Loopback addresses 127.0.0.2, 127.0.0.3, ... (PROTOCOL.md 7.11: each peer its own host)."""
    if not 0 <= i < 250:
        raise ValueError(f"peer index {i} out of range")
    return f"127.0.0.{i + 2}"


def _torrent(root: Path, name: str, size: int, seed: int, piece_length: int) -> MadeTorrent:
    payload = make_payload(root / "seed", {f"{name}.bin": size}, seed)
    return make_torrent(payload / f"{name}.bin", root / f"{name}.torrent", piece_length=piece_length)


def _status_peak(runner: RunnerProc) -> tuple[int, dict[str, int]]:
    st = runner.status()
    proc = st.get("process", {}) or {}
    lim = {k: int(v) for k, v in (st.get("limits", {}) or {}).items() if isinstance(v, int) and not isinstance(v, bool)}
    return int(proc.get("peak_rss_bytes") or 0), lim


def download_swarm(root: Path, *, seeders: int, size: int, budget: str, piece_length: int = 256 * 1024,
                   timeout_s: float = 600.0, seeder_rate: int = 0) -> SwarmResult:
    """minibt (``run --once``, ``memory_budget``) downloads ``size`` bytes from ``seeders`` libtorrent seeders."""
    t = _torrent(root, "payload", size, 1, piece_length)
    settings = {"upload_rate_limit": seeder_rate, "ignore_limits_on_local_network": False} if seeder_rate else {}
    peers = [LibtorrentPeer(root / f"lt{i}", torrent_path=t.path, save_dir=root / "seed", seed=True, pex=False,
                            listen_ip=peer_ip(i), extra_settings=settings) for i in range(seeders)]
    runner: RunnerProc | None = None
    try:
        for p in peers:
            p.start()
        for p in peers:
            p.wait_complete(timeout_s=120)
        state = root / "state"
        cfg = write_config(root / "minibt.toml", client=base_client(state, root / "dl", memory_budget=budget),
                           torrents=[{"source": str(t.path), "mode": "download",
                                      "peers": [f"{p.listen_ip}:{p.port}" for p in peers]}])
        runner = RunnerProc(root / "run", cfg, state, once=True, args=["--max-time", f"{int(timeout_s)}s"], verbose=0)
        runner.start()
        t0 = time.monotonic()
        with MemSampler(runner.pid) as sampler:
            wait_until(lambda: runner is not None and runner.returncode() is not None, timeout_s + 30,
                       "minibt run --once to finish", [runner, *peers])
        seconds = time.monotonic() - t0
        rc = runner.returncode()
        if rc != 0:
            raise AssertionError(f"minibt run --once exited {rc}\n{runner.log_tail()}")
        peak, limits = _status_peak(runner)
        return SwarmResult(f"download {seeders} seeders x {size // MiB} MiB", _budget_bytes(budget),
                           sampler.peak["VmHWM"], sampler.peak["RssAnon"], seconds, peak, limits, size)
    finally:
        if runner is not None:
            runner.stop()
        for p in peers:
            p.stop()


def seed_swarm(root: Path, *, torrents: int, leechers: int, size: int, budget: str,
               piece_length: int = 256 * 1024, timeout_s: float = 600.0) -> SwarmResult:
    """minibt (daemon) seeds ``torrents`` torrents of ``size`` bytes to ``leechers`` libtorrent leechers."""
    made = [_torrent(root, f"t{i}", size, 100 + i, piece_length) for i in range(torrents)]
    state = root / "state"
    cfg = write_config(root / "minibt.toml", client=base_client(state, root / "seed", memory_budget=budget),
                       torrents=[{"source": str(t.path), "mode": "seed"} for t in made])
    runner = RunnerProc(root / "run", cfg, state, verbose=0)
    peers: list[LibtorrentPeer] = []
    try:
        runner.start()
        wait_until(lambda: sum(1 for s in runner.status().get("torrents", []) if s.get("state") == "seeding")
                   == torrents, 120, "every torrent seeding", [runner])
        t0 = time.monotonic()
        with MemSampler(runner.pid) as sampler:
            for i in range(leechers):
                t = made[i % torrents]
                p = LibtorrentPeer(root / f"lt{i}", torrent_path=t.path, save_dir=root / f"leech{i}", seed=False,
                                   pex=False, listen_ip=peer_ip(i), peers=[("127.0.0.1", runner.port)],
                                   # plaintext (minibt has no MSE, PROTOCOL.md 7.8); dial from its own address
                                   out_enc="disabled", extra_settings={"outgoing_interfaces": peer_ip(i)})
                peers.append(p)
                p.start()
            deadline = time.monotonic() + timeout_s
            for p in peers:
                p.wait_complete(timeout_s=max(1.0, deadline - time.monotonic()))
            sampler.sample()
        seconds = time.monotonic() - t0
        peak, limits = _status_peak(runner)
        return SwarmResult(f"seed {torrents} torrents x {size // MiB} MiB to {leechers} leechers",
                           _budget_bytes(budget), sampler.peak["VmHWM"], sampler.peak["RssAnon"], seconds, peak,
                           limits, leechers * size)
    finally:
        for p in peers:
            with contextlib.suppress(Exception):
                p.stop()
        runner.stop()


def idle_base(root: Path, *, budget: str, seconds: float = 3.0) -> SwarmResult:
    """``minibt run`` with one small seeding torrent and no peers: the interpreter's fixed base."""
    t = _torrent(root, "idle", 1 * MiB, 7, 256 * 1024)
    state = root / "state"
    cfg = write_config(root / "minibt.toml", client=base_client(state, root / "seed", memory_budget=budget),
                       torrents=[{"source": str(t.path), "mode": "seed"}])
    runner = RunnerProc(root / "run", cfg, state, verbose=0)
    try:
        runner.start()
        t0 = time.monotonic()
        with MemSampler(runner.pid) as sampler:
            wait_until(lambda: runner.status().get("process", {}).get("peak_rss_bytes"), 30, "status", [runner])
            end = time.monotonic() + seconds
            wait_until(lambda: time.monotonic() >= end, seconds + 5, "idle period", [runner])
        peak, limits = _status_peak(runner)
        return SwarmResult("idle (1 seeding torrent, no peers)", _budget_bytes(budget), sampler.peak["VmHWM"],
                           sampler.peak["RssAnon"], time.monotonic() - t0, peak, limits)
    finally:
        runner.stop()


def _budget_bytes(budget: str) -> int:
    from minibt.units import parse_size

    return parse_size(budget)
