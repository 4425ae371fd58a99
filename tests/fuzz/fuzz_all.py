"""Imports every target module so the registry is complete (new target modules go here)."""

from __future__ import annotations

import fuzz_dht_targets  # noqa: F401
import fuzz_krpc_targets  # noqa: F401
import fuzz_mse_targets  # noqa: F401
import fuzz_outside_targets  # noqa: F401
import fuzz_peer_targets  # noqa: F401
import fuzz_session_targets  # noqa: F401
import fuzz_state_targets  # noqa: F401
from fuzzkit import REGISTRY

TARGETS = sorted(REGISTRY)
