from __future__ import annotations

import hashlib
import queue
import random
import threading
from pathlib import Path

import pytest

from minibt.workers import READ_CHUNK, CallResult, Hasher, HashJob, HashResult, InlineHasher, Result

WAIT_S = 10.0  # generous upper bound on waiting for worker threads; never hit when things work


class Notifier:
    """Counts notify() calls and lets the test wait for them without sleeping."""

    def __init__(self) -> None:
        self.q: queue.SimpleQueue[None] = queue.SimpleQueue()

    def __call__(self) -> None:
        self.q.put(None)

    def wait(self, n: int) -> None:
        for _ in range(n):
            self.q.get(timeout=WAIT_S)


def collect(h: Hasher, notifier: Notifier, n: int) -> list[Result]:
    notifier.wait(n)
    out = h.results()
    assert len(out) == n
    return out


def make_jobs(tmp_path: Path, rng: random.Random, n: int = 50) -> tuple[list[HashJob], dict[int, bool]]:
    """n jobs, alternating in-memory data and on-disk spans; about a third carry a wrong digest."""
    blob = rng.randbytes(3 * READ_CHUNK + 12345)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    jobs: list[HashJob] = []
    want: dict[int, bool] = {}
    for i in range(n):
        start = rng.randrange(len(blob) // 2)
        length = rng.randint(1, len(blob) - start)
        digest = hashlib.sha1(blob[start : start + length]).digest()
        ok = rng.random() > 0.33
        expected = digest if ok else hashlib.sha1(digest).digest()
        if i % 2:
            job = HashJob(i, 7, expected, spans=((str(path), start, length),), tag=("t", i))
        else:
            job = HashJob(i, 7, expected, data=memoryview(blob)[start : start + length], tag=("t", i))
        jobs.append(job)
        want[i] = ok
    return jobs, want


def test_threaded_hasher_returns_all_results(tmp_path: Path, rng: random.Random) -> None:
    jobs, want = make_jobs(tmp_path, rng)
    notifier = Notifier()
    h = Hasher(threads=2, notify=notifier)
    for job in jobs:
        h.submit(job)
    results = collect(h, notifier, len(jobs))
    assert h.pending == 0
    assert all(isinstance(r, HashResult) for r in results)
    got = {r.piece: r for r in results if isinstance(r, HashResult)}
    assert {i: r.ok for i, r in got.items()} == want
    assert all(r.generation == 7 and r.tag == ("t", r.piece) and r.error is None for r in got.values())
    assert sum(want.values()) not in (0, len(want))  # both outcomes were exercised
    h.close()


def test_inline_hasher_gives_the_same_results(tmp_path: Path, rng: random.Random) -> None:
    jobs, want = make_jobs(tmp_path, rng)
    calls: list[None] = []
    inline = InlineHasher(notify=lambda: calls.append(None))
    for job in jobs:
        inline.submit(job)
    assert inline.pending == len(jobs) and len(calls) == len(jobs)
    results = inline.results()
    assert inline.pending == 0 and inline.results() == []
    hashed = [r for r in results if isinstance(r, HashResult)]
    assert [r.piece for r in hashed] == list(range(len(jobs)))  # in order
    assert {r.piece: r.ok for r in hashed} == want


def test_multi_span_and_pad_span(tmp_path: Path, rng: random.Random) -> None:
    a = rng.randbytes(READ_CHUNK + 7)
    b = rng.randbytes(1000)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    pad = 2 * READ_CHUNK + 3
    expected = hashlib.sha1(a[5:] + bytes(pad) + b[:999]).digest()
    spans = ((str(tmp_path / "a"), 5, len(a) - 5), ("", 0, pad), (str(tmp_path / "b"), 0, 999))
    inline = InlineHasher()
    inline.submit(HashJob(3, 1, expected, spans=spans))
    assert inline.results() == [HashResult(3, 1, True, None, None)]


@pytest.mark.parametrize("kind", ["missing", "short"])
def test_unreadable_spans_fail_with_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "f"
    if kind == "short":
        path.write_bytes(b"x" * 100)
    job = HashJob(1, 2, hashlib.sha1(b"x" * 200).digest(), spans=((str(path), 0, 200),), tag="tag")
    notifier = Notifier()
    h = Hasher(threads=1, notify=notifier)
    h.submit(job)
    [res] = collect(h, notifier, 1)
    h.close()
    assert isinstance(res, HashResult)
    assert res.piece == 1 and res.generation == 2 and res.tag == "tag"
    assert not res.ok and res.error is not None and str(path) in res.error
    inline = InlineHasher()
    inline.submit(job)
    assert inline.results() == [res]


def test_run_returns_value_or_exception(rng: random.Random) -> None:
    notifier = Notifier()
    h = Hasher(threads=2, notify=notifier)

    def boom() -> object:
        raise OSError("dns failed")

    h.run(lambda: 6 * 7, "answer")
    h.run(boom, "boom")
    results = {r.tag: r for r in collect(h, notifier, 2) if isinstance(r, CallResult)}
    h.close()
    assert results["answer"] == CallResult("answer", 42, None)
    err = results["boom"].error
    assert isinstance(err, OSError) and results["boom"].value is None
    inline = InlineHasher()
    inline.run(lambda: "x", 1)
    inline.run(boom, 2)
    r1, r2 = inline.results()
    assert r1 == CallResult(1, "x", None)
    assert isinstance(r2, CallResult) and isinstance(r2.error, OSError)


def test_submit_never_blocks_and_is_bounded() -> None:
    release = threading.Event()
    notifier = Notifier()
    h = Hasher(threads=1, notify=notifier, max_pending=3)
    for i in range(3):
        h.run(lambda: release.wait(WAIT_S), i)
    assert h.pending == 3 and not h.can_submit()
    with pytest.raises(RuntimeError, match="pending"):
        h.submit(HashJob(0, 0, bytes(20), data=b""))
    release.set()
    assert len(collect(h, notifier, 3)) == 3
    assert h.pending == 0 and h.can_submit()
    h.close()


def test_close_joins_workers_and_refuses_new_work() -> None:
    notifier = Notifier()
    h = Hasher(threads=2, notify=notifier)
    assert h.alive_threads == 0  # started lazily
    h.submit(HashJob(0, 0, hashlib.sha1(b"abc").digest(), data=b"abc"))
    collect(h, notifier, 1)
    assert h.alive_threads == 2
    h.close()
    assert h.alive_threads == 0
    h.close()
    with pytest.raises(RuntimeError, match="closed"):
        h.submit(HashJob(0, 0, bytes(20), data=b""))
    inline = InlineHasher()
    inline.close()
    with pytest.raises(RuntimeError, match="closed"):
        inline.run(lambda: None, None)


def test_failing_notify_does_not_kill_the_worker() -> None:
    notifier = Notifier()

    def bad_notify() -> None:
        notifier()
        raise OSError("wakeup pipe closed")

    h = Hasher(threads=1, notify=bad_notify)
    h.run(lambda: 1, "a")
    h.run(lambda: 2, "b")
    assert sorted(str(r.tag) for r in collect(h, notifier, 2)) == ["a", "b"]
    h.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expected": b"short", "data": b"x"},
        {"expected": bytes(20)},
        {"expected": bytes(20), "data": b"x", "spans": (("p", 0, 1),)},
    ],
)
def test_hash_job_validates_its_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HashJob(0, 0, **kwargs)  # type: ignore[arg-type]


class _Piece(bytearray):
    """A piece buffer that can be watched with a weak reference."""


def test_idle_worker_keeps_no_piece_buffer_alive() -> None:
    """Peak memory (issue 15): once a job's result is out, the worker holds neither the job nor the
    piece buffer it hashed (the write cache drops the buffer then; an idle worker holding its last
    job kept one piece per thread beyond the cache).  The notify comes after the worker let go."""
    import gc
    import weakref

    notifier = Notifier()
    h = Hasher(threads=1, notify=notifier)
    try:
        piece = _Piece(b"p" * 40000)
        alive = weakref.ref(piece)
        h.submit(HashJob(0, 0, hashlib.sha1(piece).digest(), data=memoryview(piece), tag="t"))
        [r] = collect(h, notifier, 1)
        assert isinstance(r, HashResult) and r.ok
        del piece, r
        gc.collect()
        assert alive() is None
    finally:
        h.close()
