"""Pausing the network while the bound interface is down or gone (``interface = "wg0"``).

Pure: the loop reads the interface's state (netif.py) at most once per ``interval_s`` and hands it
to :meth:`InterfaceWatch.observe` with ``now``; the returned :class:`LinkDecision` says whether
traffic is paused (and why), and whether the listener/UDP sockets must be closed (the device they
were bound to is gone or was replaced: SO_BINDTODEVICE keeps the old index) or (re)opened.

    no sockets --index exists--> open_sockets, then sockets_opened(index)
    bound(i)   --index != i-----> close_sockets (gone/replaced), then as "no sockets"
    paused     <=> no such device, device not up and running, or no sockets bound to it
"""

from __future__ import annotations

from dataclasses import dataclass

CHECK_INTERVAL_S = 1.0  # read the interface state at most once per second (cheap, yet a prompt pause)
IFNAMSIZ = 16  # linux/if.h: names are at most 15 bytes plus NUL


def valid_interface_name(name: str) -> bool:
    """A Linux interface name: 1..15 bytes, no '/', whitespace, ':' or NUL (dev_valid_name)."""
    raw = name.encode("utf-8", "surrogateescape")
    if not 0 < len(raw) < IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c in name for c in "/: \t\n\r\0") and name.isprintable()


@dataclass(frozen=True, slots=True)
class LinkState:
    """What the kernel says about the interface: ``index`` None means there is no such device."""

    index: int | None
    up: bool  # IFF_UP and IFF_RUNNING


@dataclass(frozen=True, slots=True)
class LinkDecision:
    """What to do after looking at the bound interface."""

    paused: str | None  # why traffic is paused; None while it may flow
    close_sockets: bool  # sockets bound to the old device are useless: close them
    open_sockets: bool  # (re)create the listener and UDP socket, bound to the device


class InterfaceWatch:
    """Decides, from periodic observations, when networking pauses and resumes."""

    def __init__(self, name: str, *, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.name = name
        self.interval_s = interval_s
        self.bound_index: int | None = None  # ifindex the open sockets are bound to
        self.paused: str | None = f"interface {name}: not checked yet"
        self._next_at: float | None = None  # None: check at the first opportunity
        self._index: int | None = None
        self._up = False
        self._open_error: str | None = None

    def due(self, now: float) -> bool:
        return self._next_at is None or now >= self._next_at

    def next_deadline(self, now: float) -> float:
        """When the interface state is next read (the loop polls it: no netlink socket)."""
        return now if self._next_at is None else self._next_at

    def observe(self, state: LinkState, *, now: float) -> LinkDecision:
        """Take one observation; the caller acts on the decision, then reports sockets_opened/failed."""
        self._next_at = now + self.interval_s
        self._index, self._up = state.index, state.up
        close = self.bound_index is not None and state.index != self.bound_index
        if close:
            self.bound_index = None
        if state.index is None:
            self._open_error = None
        return self._decide(close, state.index is not None and self.bound_index is None)

    def sockets_opened(self, index: int) -> LinkDecision:
        """The listener and UDP socket are now bound to the device with ``index``."""
        self.bound_index = index
        self._open_error = None
        return self._decide(False, False)

    def sockets_failed(self, error: str) -> LinkDecision:
        """Opening the sockets failed (e.g. the address is not on the device yet): stay paused, retry."""
        self._open_error = f"interface {self.name}: cannot listen: {error}"
        return self._decide(False, False)

    def _reason(self) -> str | None:
        if self._index is None:
            return f"interface {self.name} is gone"
        if not self._up:
            return f"interface {self.name} is down"
        if self.bound_index is None:
            return self._open_error or f"interface {self.name}: opening sockets"
        return None

    def _decide(self, close: bool, open_: bool) -> LinkDecision:
        self.paused = self._reason()
        return LinkDecision(self.paused, close, open_)
