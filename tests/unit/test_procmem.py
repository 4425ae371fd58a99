from __future__ import annotations

import sys
from pathlib import Path

import pytest

from minibt.procmem import peak_rss_bytes, proc_status_bytes, process_sample

MIB = 1 << 20


def test_proc_status_fields_are_read_in_bytes(tmp_path: Path) -> None:
    p = tmp_path / "status"
    p.write_text("Name:\tpython\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nRssAnon:\t 1024 kB\nThreads:\t2\n")
    assert proc_status_bytes(str(p)) == {"VmHWM": 40 * MIB, "VmRSS": 30 * MIB, "RssAnon": MIB}
    assert peak_rss_bytes(str(p)) == 40 * MIB


def test_peak_falls_back_to_getrusage_without_proc(tmp_path: Path) -> None:
    pytest.importorskip("resource")
    assert proc_status_bytes(str(tmp_path / "absent")) == {}
    assert peak_rss_bytes(str(tmp_path / "absent")) > 8 * MIB  # an interpreter is bigger than that


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux")
def test_peak_keeps_a_burst_that_is_already_freed() -> None:
    """The kernel's high-water mark, not the current RSS: a 48 MiB burst freed again still counts."""
    import mmap

    before = proc_status_bytes()["VmRSS"]
    # Pages of a fresh anonymous mapping, each written once: resident whatever the allocator holds (a
    # bytearray this big came from memory freed earlier in the run once and left VmRSS as it was).
    burst = mmap.mmap(-1, 48 * MIB)
    for off in range(0, 48 * MIB, mmap.PAGESIZE):
        burst[off] = 1
    during = proc_status_bytes()["VmRSS"]
    burst.close()
    after = proc_status_bytes()["VmRSS"]
    assert during >= before + 40 * MIB
    assert after < during - 40 * MIB  # unmapped: back at once
    assert peak_rss_bytes() >= before + 40 * MIB  # VmHWM trails VmRSS by a few per-thread pages


def platform_libc() -> str:
    import platform

    return platform.libc_ver()[0]


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform_libc() == "glibc"), reason="glibc's malloc_trim")
def test_free_heap_pages_go_back_to_the_kernel() -> None:
    """Heap memory freed below a live block stays resident until release_free_memory() hands it back."""
    import subprocess

    # A fresh interpreter, so the heap is this test's alone: 24 MiB of 96 KB blocks (each below the mmap threshold,
    # so from the heap), one more block above them, then the 24 MiB freed: the top can't shrink past that block.
    code = (
        "from minibt.procmem import proc_status_bytes, release_free_memory\n"
        "blocks = [bytes(96_000) for _ in range(256)]\n"
        "top = bytes(96_000)\n"
        "del blocks\n"
        "before = proc_status_bytes()['RssAnon']\n"
        "ok = release_free_memory()\n"
        "print(before, proc_status_bytes()['RssAnon'], ok, len(top))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, ok = int(out[0]), int(out[1]), out[2] == "True"
    assert ok and before - after > 16 * MIB, (before, after)


def test_process_sample_reads_what_psutil_reads(tmp_path: Path) -> None:
    import threading

    import psutil

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        sample = process_sample()
        p = psutil.Process()
        rss, cpu = p.memory_info().rss, p.cpu_times()
        threads = p.num_threads()
    finally:
        stop.set()
        worker.join()
    assert sample is not None
    assert sample[2] == threads >= 2  # the OS threads, this one's included
    assert abs(sample[0] - rss) <= 1 << 20  # the same counter, read a moment apart
    assert 0 <= (cpu.user + cpu.system) - sample[1] <= 0.05
    assert process_sample(str(tmp_path / "missing")) is None  # no /proc: the runner asks psutil
    (tmp_path / "status").write_text("Name:\tx\nThreads:\t3\n")  # no VmRSS (a kernel thread's file)
    assert process_sample(str(tmp_path / "status")) is None
    (tmp_path / "status").write_text("Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t3\n")
    got = process_sample(str(tmp_path / "status"))
    assert got is not None and (got[0], got[2]) == (2048 * 1024, 3)
