"""A full disk in a simulated swarm: writes fail with ENOSPC, the download pauses (no requests, verified
pieces kept, still seeding), retries every disk_retry_s while there is no room, and completes byte-exact
once space returns.  The real-disk version is tests/integration/test_runner_proc.py (a small tmpfs)."""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from pathlib import Path

from helpers import FakeClock
from simnet import KiB, LinkSpec, MiB, SimNet, make_payload, make_torrent, same_files

from minibt.settings import TorrentConfig, TorrentState
from minibt.workers import HashJob, HashResult, InlineHasher

PIECE_LEN = 32 * KiB
LAYOUT = {"a.bin": MiB + 5000, "b.bin": 700_000}
RETRY_S = 5.0


class FullDiskHasher:
    """InlineHasher whose piece writes fail with ENOSPC while ``full`` is set (nothing is written)."""

    def __init__(self) -> None:
        self.inner = InlineHasher()
        self.full = False
        self.failed_writes = 0
        self._out: list[HashResult] = []

    def submit(self, job: HashJob) -> None:
        if self.full and job.writes is not None:
            self.failed_writes += 1
            self._out.append(HashResult(job.piece, job.generation, True, job.tag,
                                        "write: [Errno 28] No space left on device", False, errno.ENOSPC))
        else:
            self.inner.submit(job)

    def run(self, fn: Callable[[], object], tag: object) -> None:  # a resume save: the disk has room for it
        self.inner.run(fn, tag)

    def has_results(self) -> bool:
        return bool(self._out) or self.inner.has_results()

    def results(self) -> list[object]:
        out: list[object] = [*self._out, *self.inner.results()]
        self._out = []
        return out


def test_disk_full_pauses_then_resumes_when_space_returns(tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    make_payload(tmp_path / "src" / "payload", LAYOUT, seed=9)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE_LEN)
    net = SimNet(clock, rng)
    seed = net.add_peer("seed", "127.0.0.2", link=LinkSpec(up_Bps=2 * MiB))
    st = net.add_torrent(seed, meta, tmp_path / "src", mode="seed")
    assert net.run_until(lambda: st.state is TorrentState.SEEDING, 1.0)
    leech = net.add_peer("leech", "127.0.0.3", 6881)
    hasher = FullDiskHasher()
    leech.hasher = hasher  # type: ignore[assignment]
    t = net.add_torrent(leech, meta, tmp_path / "leech", mode="download", resume_path=tmp_path / "l.resume",
                        config=TorrentConfig(disk_retry_s=RETRY_S))
    net.must_run_until(lambda: t.have.count() >= 10, 30)
    free = [0]
    t.storage.free_bytes = lambda: free[0]  # type: ignore[method-assign]
    hasher.full = True
    net.must_run_until(lambda: t.disk_error is not None, 10)
    assert "No space left on device" in t.disk_error
    assert t.state is TorrentState.DOWNLOADING and not t.downloading
    assert t.status(net.now)["disk_error"] == t.disk_error
    have = t.have.count()
    fails = hasher.failed_writes
    net.run_until(lambda: False, 4 * RETRY_S)  # the disk stays full across several retries
    assert t.have.count() == have and t.disk_error is not None
    assert hasher.failed_writes == fails  # paused: no more pieces completed, so no more writes tried
    assert all(t.picker.num_outstanding(cid) == 0 for cid in t.peers)
    assert 0 < have < meta.num_pieces
    free[0] = 1 << 30
    hasher.full = False
    net.must_run_until(lambda: t.complete, 30)
    assert t.disk_error is None and t.state is TorrentState.SEEDING
    assert same_files(meta, tmp_path / "src", tmp_path / "leech")
    assert t.stats.hash_failures == 0
