"""tools/bench_block_rx.py (issue 15): the in-process download it times completes with the payload's bytes
and reports one figure per received block."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.unit.test_bench_mse_tool import load_tool


def test_one_run_downloads_every_block_byte_exact() -> None:
    tool = load_tool("bench_block_rx")
    us, blocks, ok = tool.one_run(tool.REPO, 2)
    assert ok  # the file the leecher wrote equals the payload
    assert blocks == 2 * 1024 * 1024 // 16384  # each block of 2 MiB asked for and answered once
    assert 0 < us < 10_000


def test_instruction_counts_repeat_and_cover_only_the_session_calls() -> None:
    """``--instructions``: callgrind counts inside the timed calls only (not the start-up, the seeder or the
    hashing), and the count repeats, which is what lets it compare trees below the timing's spread."""
    if shutil.which("valgrind") is None:
        if os.environ.get("CI") == "true" or os.environ.get("MINIBT_REQUIRE_CLIENTS") == "1":
            pytest.fail("valgrind is not installed (.ci/run installs it)")
        pytest.skip("valgrind is not installed")
    tool = load_tool("bench_block_rx")
    first, blocks, ok = tool.count_instructions(tool.REPO, 2)
    again, _, _ = tool.count_instructions(tool.REPO, 2)
    assert ok and blocks == 128
    assert abs(first - again) < 10_000  # of tens of millions
    # Python's start-up alone runs about 600 million instructions here, the SHA-1 of 2 MiB under valgrind
    # tens of millions more: a count this low is the session's calls only.
    assert 1_000 * blocks < first < 300_000 * blocks
