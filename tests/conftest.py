from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# Hypothesis' per-example deadline and its 'too slow' data-generation check measure wall-clock time:
# on a loaded 2-core CI machine they fail tests whose properties hold.  Correctness checks stay on.
settings.register_profile("minibt", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("minibt")

from helpers import FakeClock  # noqa: E402

# No test may reach a public DHT router (brief: network rules).  minibt's CLI and runner use the DHT
# by default, bootstrapping from the public routers unless told otherwise; every process the tests
# start inherits this empty bootstrap list (tests that use the DHT pass their own nodes explicitly).
os.environ["MINIBT_DHT_BOOTSTRAP"] = ""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)
