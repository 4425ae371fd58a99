"""Packet-size search for uTP (BEP 29 'packet sizes'), as a small pure machine.

BEP 29 leaves the packet size to the sender ("as large as the path MTU allows").  A connection starts
at a conservative payload (``floor``: 1200 bytes fits the 1280-byte IPv6 minimum MTU with IP, UDP and
uTP headers) and searches upward to ``ceiling`` (about 1400 payload bytes: an Ethernet path with room for
the SACK extension) by binary search over probe packets, in the manner of RFC 4821 (packetization-layer
PMTU discovery) and libtorrent's utp mtu floor/ceiling:

* a probe is one ordinary data packet of ``probe_size()`` payload, sent once with the IP don't-fragment
  bit (the loop sets it for the datagrams the multiplexer marks);
* probe acked: ``floor = probe`` (every later packet may be that large);
* probe lost (fast-retransmit evidence or a timeout): the same size is probed once more (random loss
  is not a small MTU; RFC 4821 MAX_PROBES); lost twice, ``ceiling = probe - 1``.  The retransmission
  of a lost probe goes without DF, so the network may fragment it, and its loss is not congestion
  (no window cut);
* the search ends when ``ceiling - floor < MTU_SEARCH_DONE_BYTES``.
"""

from __future__ import annotations

MTU_SEARCH_DONE_BYTES = 16  # minibt convention (RFC 4821 leaves the search resolution to the implementation)
MTU_PROBE_AFTER_BYTES = 64 * 1024  # minibt: probe only once a connection carries bulk data
MTU_PROBE_TRIES = 2  # RFC 4821 MAX_PROBES is 3; minibt: a size fails after 2 lost probes
MTU_PROBE_FAILURES_MAX = 8  # minibt: after this many lost probes in all, stop probing (a lossy path)


class MtuSearch:
    """Binary search of the payload size between a confirmed ``floor`` and a ``ceiling``."""

    __slots__ = ("floor", "ceiling", "probes", "failures", "_tries")

    def __init__(self, floor: int, ceiling: int) -> None:
        if floor > ceiling:
            raise ValueError(f"uTP MTU floor {floor} > ceiling {ceiling}")
        self.floor = floor
        self.ceiling = ceiling
        self.probes = 0
        self.failures = 0
        self._tries = 0  # lost probes of the current probe size

    @property
    def size(self) -> int:
        """Payload bytes of a regular packet: the largest size known to pass."""
        return self.floor

    @property
    def searching(self) -> bool:
        return self.ceiling - self.floor >= MTU_SEARCH_DONE_BYTES and self.failures < MTU_PROBE_FAILURES_MAX

    def probe_size(self) -> int | None:
        """Payload bytes of the next probe, or None once the search is over."""
        if not self.searching:
            return None
        return (self.floor + self.ceiling + 1) // 2

    def probe_sent(self) -> None:
        self.probes += 1

    def probe_acked(self, size: int) -> None:
        self._tries = 0
        if size > self.floor:
            self.floor = min(size, self.ceiling)

    def probe_lost(self, size: int) -> None:
        self.failures += 1
        self._tries += 1
        if self._tries >= MTU_PROBE_TRIES and size - 1 < self.ceiling:
            self.ceiling = max(self.floor, size - 1)
            self._tries = 0
