"""The memory budget is a ceiling with many real peers sending at once (issue 10; memswarm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from memswarm import MiB, download_swarm, seed_swarm

pytestmark = pytest.mark.usefixtures("reference_clients")
BUDGET = "40MiB"


def test_eight_seeders_download_stays_under_a_40_mib_budget(tmp_path: Path) -> None:
    r = download_swarm(tmp_path, seeders=8, size=64 * MiB, budget=BUDGET, timeout_s=120)
    print("\n" + r.line())
    assert r.vm_hwm < r.budget_bytes
    # minibt status reports the kernel's peak, which no sample can exceed
    assert r.status_peak >= r.rss_anon_peak
    assert r.status_peak >= r.vm_hwm - MiB // 2


@pytest.mark.slow
def test_sixteen_seeders_256_mib_stays_under_a_40_mib_budget(tmp_path: Path) -> None:
    r = download_swarm(tmp_path, seeders=16, size=256 * MiB, budget=BUDGET, timeout_s=600)
    print("\n" + r.line())
    assert r.vm_hwm < r.budget_bytes


@pytest.mark.slow
def test_twenty_torrents_seeded_to_forty_leechers_stay_under_a_40_mib_budget(tmp_path: Path) -> None:
    r = seed_swarm(tmp_path, torrents=20, leechers=40, size=8 * MiB, budget=BUDGET, timeout_s=600)
    print("\n" + r.line())
    assert r.vm_hwm < r.budget_bytes
