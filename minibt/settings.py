"""Settings: the session's and a torrent's configuration, a torrent's mode and states, its counters."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from minibt.errors import ConfigError
from minibt.pex import PEX_SEND_INTERVAL_S, PexConfig

DEFAULT_MAX_CANDIDATES = 1000  # convention: addresses a torrent keeps to dial (dialer.py)


class Transport(enum.StrEnum):
    """How a peer connection is carried; the value is the name used in config, CLI, events and status."""

    TCP = "tcp"  # BEP 3 over TCP
    UTP = "utp"  # BEP 29 uTP


TRANSPORTS = tuple(t.value for t in Transport)


def valid_transports(names: tuple[str, ...] | list[str]) -> bool:
    """A non-empty preference order of distinct known transports."""
    return bool(names) and all(n in TRANSPORTS for n in names) and len(set(names)) == len(names)


def to_transports(names: tuple[str, ...] | list[str]) -> tuple[Transport, ...]:
    """Transport names (already checked by :func:`valid_transports`) as enum members, order kept."""
    return tuple(Transport(n) for n in names)


class Mode(enum.StrEnum):
    """What a torrent is added for; the value is the name used by Client.add, config files and status."""

    SEED = "seed"  # serve complete data that is already on disk
    DOWNLOAD = "download"  # fetch what is missing, then seed


def parse_mode(name: str) -> Mode:
    """``name`` ("seed"/"download", or a Mode) as a Mode; ValueError for anything else."""
    try:
        return Mode(name)
    except ValueError:
        raise ValueError(f"unknown mode {name!r}") from None


class Encryption(enum.StrEnum):
    """MSE/PE policy (mse.py), as the Peer reference's ENCRYPTION_NONE / _PREFERRED / _REQUIRED."""

    NONE = "none"  # never encrypt; MSE from a peer is refused
    PREFERRED = "preferred"  # dial with MSE (RC4 or plaintext offered), retry plaintext once; accept both
    REQUIRED = "required"  # MSE with RC4 only, both ways


class TorrentState(enum.Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class TorrentConfig:
    """One torrent's settings."""

    max_peers: int = 50
    max_half_open: int = 8
    max_candidates: int = DEFAULT_MAX_CANDIDATES  # addresses kept to dial (dialer.py); budget.py may lower it
    cache_bytes: int | None = None  # None: storage.default_cache_bytes (1 MiB, or 3 pieces if more; why: there)
    request_queue_min: int = 16
    cache_reserve_max: int = 8 << 20  # with cache_bytes None: how far pieces started may go on long paths (download.py)
    request_queue_max: int = 1000  # within libtorrent's and Transmission's 'reqq'; each peer's own bounds it (PROTOCOL.md 7.13)
    request_queue_seconds: float = 1.0  # pipeline depth = rate * this
    max_incoming_requests: int = 500
    check_jobs_in_flight: int = 4
    resume_interval_s: float = 60.0
    numwant: int = 50
    fsync: bool = True
    upload_outbox_bytes: int = 256 * 1024  # serve queued requests while the outbox is below this
    upload_limit_bps: float | None = None  # this torrent's payload bytes/s; None or 0 = unlimited (ratelimit.py)
    download_limit_bps: float | None = None
    auto_choke: bool = True  # False: the built-in choker never runs; library code unchokes (Peer.unchoke)
    auto_request: bool = True  # False: never pick/request by itself; library code calls Peer.request
    super_seed: bool = False  # BEP 16 super-seeding (initial seeder only; minibt/superseed.py)
    disk_retry_s: float = 30.0  # a download paused by a full disk looks for free space this often
    wanted_files: tuple[int, ...] | None = None  # file selection (indexes into meta.files); None = all
    # ut_pex (BEP 11); lower pex.interval_s only in tests whose peer accepts it (PexConfig).
    pex: PexConfig = PexConfig(interval_s=PEX_SEND_INTERVAL_S)
    encryption: Encryption | None = None  # MSE/PE policy of this torrent's connections; None = the session's

    @property
    def reserve_max(self) -> int:
        """Where download.py's reservation for pieces started stops; 0 (the write cache alone) when
        cache_bytes is set: a size the user chose bounds the memory for pieces."""
        return self.cache_reserve_max if self.cache_bytes is None else 0


@dataclass(slots=True)
class TorrentStats:
    """One torrent's counters and times."""

    uploaded: int = 0
    downloaded: int = 0  # payload bytes of verified pieces
    wasted: int = 0
    hash_failures: int = 0
    checked: int = 0
    started_at: float = 0.0
    completed_at: float | None = None


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Settings shared by every torrent of a session."""

    max_connections: int = 200
    upload_limit_bps: float | None = None  # global payload bytes/s; None or 0 = unlimited (ratelimit.py)
    download_limit_bps: float | None = None
    handshake_timeout_s: float = 30.0
    torrent: TorrentConfig = TorrentConfig()
    # Outgoing preference order; incoming connections are accepted on every transport listed.
    # TCP first: on a LAN/loopback it moves data at a fraction of uTP's per-packet CPU cost in CPython,
    # and it keeps the TCP-only behaviour of earlier versions; uTP is the fallback (PROTOCOL.md 7.9).
    # Names ("tcp", "utp") are accepted and stored as Transport members.
    transports: tuple[Transport, ...] = (Transport.TCP, Transport.UTP)
    # Mainline DHT (BEP 5, dht.py): off for library sessions unless asked for; the CLI and the
    # config-file runner turn it on.  ``dht_bootstrap``: (host, port) pairs to join through (names
    # are resolved off the loop); empty = none (only nodes saved in dht.dat and nodes that find us).
    dht: bool = False
    dht_bootstrap: tuple[tuple[str, int], ...] = ()
    dht_read_only: bool = False  # BEP 43: ask, never answer (metered links)
    # MSE/PE (mse.py): dial with MSE offering RC4 and plaintext, accept both (the Peer reference's default).
    encryption: Encryption = Encryption.PREFERRED
    max_mse_handshakes: int = 16  # incoming MSE handshakes at once (each a DH: ms of CPU on a Pi); more are refused
    pex: bool = True  # BEP 11 ut_pex for public torrents (False: neither offered nor used)
    holepunch: bool = True  # BEP 55 ut_holepunch (holepunch.py): relay for others, ask relays, answer connects

    def __post_init__(self) -> None:
        if not valid_transports(self.transports):
            raise ConfigError(None, "transports", f"must be distinct names out of {TRANSPORTS}, got {self.transports}")
        object.__setattr__(self, "transports", to_transports(self.transports))
        object.__setattr__(self, "encryption", Encryption(self.encryption))


BOOTSTRAP_ENV = "MINIBT_DHT_BOOTSTRAP"  # comma-separated HOST:PORT list replacing the default DHT routers ("" = none)


def default_state_dir() -> str:
    """Where resume data lives unless told: $XDG_STATE_HOME/minibt (~/.local/state/minibt)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "minibt")
