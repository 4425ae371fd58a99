"""The whole minibt exception hierarchy (STYLE.md section 6).

Remote input never raises anything but :class:`RemoteProtocolError` (or a subclass) out of a
machine's public input method; the loop maps it to ``Close(reason)`` and a reputation penalty
in one place.  Expected outcomes (hash failures, tracker failure reasons) are events, not errors.
"""

from __future__ import annotations

import enum


class CloseReason(enum.IntEnum):
    """Numeric, language-independent reasons a peer connection ends."""

    CLOSED_BY_REMOTE = 1
    SELF_CONNECTION = 2
    UNKNOWN_INFO_HASH = 3
    BAD_HANDSHAKE = 4
    INFO_HASH_MISMATCH = 5
    MALFORMED_MESSAGE = 6
    DUPLICATE_PEER_ID = 7
    TOO_MANY_PEERS = 8
    HASH_CHECKING = 9
    BOTH_SEEDS = 10
    HANDSHAKE_TIMEOUT = 11
    IDLE = 12
    REPUTATION_TOO_LOW = 13
    BANNED = 14
    PROTOCOL_VIOLATION = 15
    ENCRYPTION_FAILED = 16
    MESSAGE_TOO_LARGE = 17
    CONNECT_FAILED = 18
    IO_ERROR = 19
    SHUTDOWN = 20
    TORRENT_REMOVED = 21
    KEEPALIVE_TIMEOUT = 22
    CORRUPT_DATA = 23
    INTERNAL_ERROR = 24  # a contained fault (a bug) while handling this connection (STYLE.md section 13)


class MinibtError(Exception):
    """Base of every error minibt raises on purpose."""


class ConfigError(MinibtError):
    """A configuration file or command-line value is wrong."""

    def __init__(self, file: str | None, key: str | None, msg: str) -> None:
        self.file = file
        self.key = key
        self.msg = msg
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {msg}" if where else msg)


class BencodeError(MinibtError):
    """Bytes are not valid (strict) bencode, or exceed a size/depth limit."""


class MetainfoError(MinibtError):
    """A .torrent file (or fetched info dict) is malformed or hostile."""


class ProtocolError(MinibtError):
    """Abstract: a protocol machine refused some input or command."""

    def __init__(self, reason: CloseReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.name.lower()}: {detail}")


class LocalProtocolError(ProtocolError):
    """We asked a machine for something illegal: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The remote side sent something illegal: close and penalise."""


class HandshakeError(RemoteProtocolError):
    """The BitTorrent handshake was malformed or did not match."""


class MseError(RemoteProtocolError):
    """The MSE/PE encryption handshake failed (minibt.mse); ``detail`` names the failed check."""

    def __init__(self, detail: str, reason: CloseReason = CloseReason.ENCRYPTION_FAILED) -> None:
        super().__init__(reason, detail)


class EncryptionUnavailable(MinibtError):
    """MSE/PE was requested but the optional RC4 back end (the ``mse`` extra) is not installed."""


class WireError(RemoteProtocolError):
    """A peer-wire message was malformed, oversized or not allowed now."""


class UtpError(RemoteProtocolError):
    """A uTP (BEP 29) datagram was malformed or not allowed now."""


class PexError(RemoteProtocolError):
    """A ut_pex (BEP 11) message was malformed, oversized or sent too often."""


class MetadataError(RemoteProtocolError):
    """A ut_metadata (BEP 9) message was malformed or inconsistent."""


class MagnetError(MinibtError):
    """A magnet URI (BEP 9) is malformed or unsupported."""


class TrackerError(MinibtError):
    """A tracker reply was malformed (a 'failure reason' is an event, not this)."""


class StorageError(MinibtError):
    """A file operation failed; wraps the OSError."""

    def __init__(self, op: str, path: str, cause: OSError | None = None) -> None:
        self.op = op
        self.path = path
        self.cause = cause
        msg = f"{op} {path}"
        if cause is not None:
            msg += f": {cause.strerror or cause}"
        super().__init__(msg)
