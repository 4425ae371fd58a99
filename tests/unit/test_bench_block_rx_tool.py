"""tools/bench_block_rx.py (issue 15): the in-process download it times completes with the payload's bytes
and reports one figure per received block."""

from __future__ import annotations

from tests.unit.test_bench_mse_tool import load_tool


def test_one_run_downloads_every_block_byte_exact() -> None:
    tool = load_tool("bench_block_rx")
    us, blocks, ok = tool.one_run(tool.REPO, 2)
    assert ok  # the file the leecher wrote equals the payload
    assert blocks == 2 * 1024 * 1024 // 16384  # each block of 2 MiB asked for and answered once
    assert 0 < us < 10_000
