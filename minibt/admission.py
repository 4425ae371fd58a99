"""The end of a connection's handshake phase: may it go on, and with which machine.

Pure decisions over plain state (STYLE.md): the session asks at the two moments a BT handshake
(handshake.py) gives it something to decide -- an incoming peer named an info-hash, a handshake
completed -- and carries out the answer: close with the :class:`Refuse` reason, or hand the
connection to its next phase (peer.py): ``Active`` with a :class:`~minibt.wire.PeerWire` for a
torrent, ``FetchingMetadata`` for a magnet link still without its info dict.  Also here: the
machines a connection gets, built with our peer id and reserved bits.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from minibt.errors import CloseReason, EncryptionUnavailable, MseError, RemoteProtocolError
from minibt.handshake import Handshake, HandshakeReceived, supports_extension, supports_fast
from minibt.peer import Encrypting, Handshaking, PeerConnection, Phase
from minibt.pex import PexFlag
from minibt.reputation import Reputation
from minibt.settings import Encryption, TorrentConfig, TorrentState
from minibt.torrent import Torrent
from minibt.urls import Addr
from minibt.wire import PeerWire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from minibt.magnetfetch import MagnetFetch  # loaded by the first magnet link (session.py)

log = logging.getLogger(__name__)

NO_PEER_ID = bytes(20)  # some clients send all zeroes: never a duplicate
# An outgoing connection closed by the peer before the BT handshake completed may be redialled:
# on its next transport (PROTOCOL.md 7.9: a uTP-only libtorrent accepts TCP and closes it at once),
# or (policy preferred, the connection was up) once with the other encryption.
FALLBACK_REASONS = frozenset({CloseReason.CONNECT_FAILED, CloseReason.CLOSED_BY_REMOTE, CloseReason.IO_ERROR})
# An outgoing connect not finished by then counts as failed (a NAT or firewall that drops SYNs: the
# kernel would wait ~127 s); libtorrent's peer_connect_timeout is 15 s.
CONNECT_TIMEOUT_S = 10.0
SWITCH_REASONS = frozenset({CloseReason.CLOSED_BY_REMOTE, CloseReason.IO_ERROR})  # refused after connecting
# An outgoing MSE handshake not done by then is given up (libtorrent's handshake_timeout is 10 s too);
# under preferred the peer is redialled in plaintext at once.
MSE_DIAL_TIMEOUT_S = 10.0
PLAIN_ONLY_MAX = 1024  # peers remembered as refusing MSE (policy preferred dials them in plaintext first)


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the connection with this reason."""

    reason: CloseReason
    detail: str


def usable_policy(policy: Encryption) -> Encryption:
    """``policy`` if this install can encrypt; without the RC4 back end ``preferred`` falls back to
    plaintext (logged) and ``required`` raises EncryptionUnavailable naming ``minibt[mse]``."""
    if policy is Encryption.NONE:  # MSE/PE (mse.py, rc4.py) only for a policy that may encrypt
        return policy
    from minibt.mse import rc4_available

    if rc4_available():
        return policy
    if policy is Encryption.REQUIRED:
        raise EncryptionUnavailable("encryption 'required' needs RC4: pip install 'minibt[mse]' (cryptography)")
    log.warning("encryption 'preferred' without RC4 (pip install 'minibt[mse]'): connections stay plaintext")
    return Encryption.NONE


def own_config(c: TorrentConfig) -> TorrentConfig:
    """A torrent's config with an encryption policy this install can keep (``required`` without RC4
    raises EncryptionUnavailable)."""
    return c if c.encryption is None else dataclasses.replace(c, encryption=usable_policy(c.encryption))


def req2_lookup(info_hashes: list[bytes]) -> dict[bytes, bytes]:
    """MSE responder lookup: SHA1('req2', info-hash) -> info-hash (one listening port, every torrent)."""
    from minibt.mse import req2_hash

    return {req2_hash(ih): ih for ih in info_hashes}


class Admission:
    """Who may continue past the BT handshake; the Handshake and PeerWire machines of a connection;
    the encryption policy (session default, per-torrent override) and what it learnt per peer."""

    def __init__(self, *, peer_id: bytes, timeout_s: float, encryption: Encryption = Encryption.NONE,
                 max_mse_handshakes: int = 16) -> None:
        self.peer_id = peer_id
        self.timeout_s = timeout_s
        self.encryption = usable_policy(encryption)
        self.max_mse_handshakes = max_mse_handshakes  # incoming MSE handshakes (DH) at once; more are refused
        self.plain_only: dict[Addr, None] = {}  # insertion-ordered: peers that refused MSE, took plaintext
        self.mse_refused_busy = 0  # incoming MSE handshakes refused by the cap (status)

    # ---------------------------------------------------------------- encryption policy (mse.py)

    def policy(self, owner: Torrent | MagnetFetch | None) -> Encryption:
        """The policy of ``owner``'s connections: its own override, else the session's."""
        own = owner.config.encryption if owner is not None else None
        return own if own is not None else self.encryption

    def incoming_policy(self, owners: list[Torrent | MagnetFetch]) -> Encryption:
        """Before an incoming connection names its torrent: one policy if all agree, else preferred
        (accept both; the torrent's own policy is checked once it is known, :meth:`incoming`)."""
        got = {self.policy(o) for o in owners} | {self.encryption}
        return got.pop() if len(got) == 1 else Encryption.PREFERRED

    def dial_phase(self, conn: PeerConnection, owner: Torrent | MagnetFetch, flags: int, reserved: bytes,
                   now: float, rng: random.Random) -> Phase:
        """The first phase of an outgoing connection.  Policy preferred dials with MSE, except a peer
        that refused MSE before and took plaintext -- unless PEX now says it prefers encryption
        (BEP 11 flag 0x01): then MSE first again."""
        policy = self.policy(owner)
        if flags & PexFlag.ENCRYPTION:
            self.plain_only.pop(conn.addr, None)
        conn.plaintext = policy is Encryption.NONE or (policy is Encryption.PREFERRED and conn.addr in self.plain_only)
        return self.first_phase(owner.info_hash, reserved, now, policy, rng, plaintext=conn.plaintext)

    def redial(self, conn: PeerConnection, owner: Torrent | MagnetFetch, reason: CloseReason, detail: str,
               reserved: bytes, now: float, rng: random.Random) -> bool:
        """An outgoing connection ended before the BT handshake completed: True when it is to be
        dialled again (same cid), its transport and first phase set for that.

        Policy preferred: a connection the peer closed right after it came up (MSE refused, or a
        plaintext handshake refused) is tried once more with the other encryption, same transport.
        Else the next transport of its fallbacks."""
        if not conn.outgoing or not isinstance(conn.phase, (Handshaking, Encrypting)) or reason not in FALLBACK_REASONS:
            return False
        if isinstance(owner, Torrent) and any(p.addr == conn.addr for p in owner.peers.values()):
            return False  # already connected the other way (both dialled at once): this one was the duplicate
        how, transport = "", conn.transport
        if (self.policy(owner) is Encryption.PREFERRED and conn.established and reason in SWITCH_REASONS
                and not conn.crypto_switched):
            conn.crypto_switched = True
            conn.plaintext = not conn.plaintext
            how = " in plaintext" if conn.plaintext else " with MSE"
        elif conn.fallbacks:
            transport = conn.fallbacks.pop(0)
        else:
            return False
        log.info("peer %s:%d (#%d) over %s: %s %s; trying %s%s", conn.ip, conn.port, conn.cid, conn.transport,
                 reason.name, detail, transport, how)
        conn.transport = transport
        conn.enter(self.first_phase(owner.info_hash, reserved, now, self.policy(owner), rng, plaintext=conn.plaintext))
        conn.established, conn.connected_at = False, now
        return True

    def mse_gave_up(self, conn: PeerConnection, owner: Torrent | MagnetFetch, e: RemoteProtocolError) -> bool:
        """An outgoing MSE handshake failed with ``e``: when that was no answer in time, or a plaintext
        BT handshake as the answer (a plaintext-only peer), and the policy is preferred, remember the
        peer as plaintext-only and say to redial it now (once: not after a switch already made)."""
        if not isinstance(e, MseError):  # an MseError comes from mse.py, so it is loaded
            return False
        from minibt.mse import MseFailure

        if (e.detail not in (MseFailure.TIMEOUT, MseFailure.PLAINTEXT_ANSWER)
                or not conn.outgoing or not isinstance(conn.phase, Encrypting) or not conn.established
                or conn.crypto_switched or self.policy(owner) is not Encryption.PREFERRED):
            return False
        self._plain(conn.addr)
        return True

    def _plain(self, addr: Addr) -> None:
        self.plain_only[addr] = None
        while len(self.plain_only) > PLAIN_ONLY_MAX:
            del self.plain_only[next(iter(self.plain_only))]

    def learn(self, conn: PeerConnection) -> None:
        """An outgoing BT handshake completed: remember whether this peer takes MSE (policy preferred)."""
        if not conn.outgoing:
            return
        if conn.plaintext and conn.crypto_switched:  # MSE was refused, plaintext worked
            self._plain(conn.addr)
        elif not conn.plaintext:
            self.plain_only.pop(conn.addr, None)

    def busy(self, conns: list[PeerConnection]) -> bool:
        """As many incoming MSE handshakes running as the cap allows (DH costs milliseconds on a Pi)."""
        n = sum(1 for c in conns if not c.outgoing and isinstance(c.phase, Encrypting) and c.phase.mse is not None)
        return n >= self.max_mse_handshakes

    def handshake(self, info_hash: bytes | None, reserved: bytes, now: float) -> Handshake:
        """A BT handshake machine with our id and reserved bits (``info_hash`` None: incoming, any torrent)."""
        return Handshake(peer_id=self.peer_id, reserved=reserved, info_hash=info_hash, now=now, timeout_s=self.timeout_s)

    @staticmethod
    def wire(t: Torrent, theirs: bytes, ours: bytes, now: float, *, extension: bool) -> PeerWire:
        """The peer wire of an active connection of ``t`` (fast extension if both sides set the bit)."""
        meta = t.meta
        return PeerWire(
            num_pieces=meta.num_pieces,
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            fast=supports_fast(theirs) and supports_fast(ours),
            extension=extension,
            now=now,
        )

    def first_phase(self, info_hash: bytes | None, reserved: bytes, now: float, policy: Encryption,
                    rng: random.Random, *, plaintext: bool = False) -> Phase:
        """A new connection's first phase: the BT handshake, or MSE/PE first (``info_hash`` None:
        incoming, whose first bytes tell which).  Outgoing MSE carries our BT handshake as its IA."""
        hs = self.handshake(info_hash, reserved, now)
        if policy is Encryption.NONE or plaintext:
            return Handshaking(hs)
        if info_hash is None:
            return Encrypting(None, hs)
        hs.start()
        from minibt.mse import CRYPTO_PLAIN, CRYPTO_RC4, MseInitiator

        provide = CRYPTO_RC4 if policy is Encryption.REQUIRED else CRYPTO_RC4 | CRYPTO_PLAIN
        return Encrypting(MseInitiator(info_hash, ia=hs.data_to_send(), rng=rng, now=now, provide=provide,
                                       timeout_s=MSE_DIAL_TIMEOUT_S), hs)

    @staticmethod
    def sniff(ph: Encrypting, data: bytes, policy: Encryption, lookup: dict[bytes, bytes], rng: random.Random,
              now: float) -> bytes | None:
        """An incoming connection's first bytes: None while undecided; else the bytes to feed on.  A
        plaintext one goes on without ``ph.mse``; an MSE one gets a responder.  Raises MseError when
        the policy refuses plaintext."""
        from minibt.mse import CRYPTO_PLAIN, CRYPTO_RC4, MseResponder, looks_plaintext

        ph.sniffed += data
        plain = looks_plaintext(ph.sniffed)
        if plain is None:
            return None
        data, ph.sniffed = ph.sniffed, b""
        if plain and policy is Encryption.REQUIRED:
            raise MseError("plaintext refused: encryption is required")
        if not plain:
            allow = CRYPTO_RC4 if policy is Encryption.REQUIRED else CRYPTO_RC4 | CRYPTO_PLAIN
            ph.mse = MseResponder(lookup.get, rng=rng, now=now, allow=allow)
        return data

    def mse_data(self, conn: PeerConnection, ph: Encrypting, data: bytes, rng: random.Random, now: float,
                 owners: Callable[[], list[Torrent | MagnetFetch]],
                 conns: Callable[[], list[PeerConnection]]) -> bytes | Refuse:
        """Bytes of a connection in phase Encrypting: an incoming one is first told plaintext or MSE;
        when MSE completes the stream goes on the connection and the phase becomes Handshaking.
        Returns what the BT handshake machine (``ph.then``) is to read now (b"": nothing yet), or a
        Refuse when the cap on incoming MSE handshakes is reached (not the peer's fault: no penalty).
        Raises MseError (a RemoteProtocolError) on any failed check."""
        from minibt.mse import CRYPTO_RC4, looks_plaintext

        if ph.mse is None:
            if looks_plaintext(ph.sniffed + data) is False and self.busy(conns()):
                self.mse_refused_busy += 1
                return Refuse(CloseReason.TOO_MANY_PEERS, f"{self.max_mse_handshakes} encryption handshakes at once")
            got = owners()
            policy = self.incoming_policy(got)
            rest = self.sniff(ph, data, policy, req2_lookup([o.info_hash for o in got]), rng, now)
            if rest is None or ph.mse is None:
                if rest is not None:
                    conn.enter(Handshaking(ph.then))
                return rest or b""
            data = rest
        for done in ph.mse.receive_data(data, now=now):
            conn.stream = ph.mse.stream() if done.method == CRYPTO_RC4 else None
            log.info("peer %s:%d (#%d): MSE/PE done: %s", conn.ip, conn.port, conn.cid,
                     "RC4" if conn.stream is not None else "plaintext")
            conn.raw_unsent = ph.mse.data_to_send()  # its last message, encrypted by the machine itself
            conn.enter(Handshaking(ph.then))
            return done.ia + done.leftover
        return b""

    @staticmethod
    def accept(ip: str, open_conns: int, max_conns: int, reputation: Reputation) -> Refuse | None:
        """A connection from ``ip`` was accepted by the loop: None to start its handshake."""
        if open_conns >= max_conns:
            return Refuse(CloseReason.TOO_MANY_PEERS, "global connection limit")
        if reputation.is_banned(ip):  # a banned IP gets no handshake at all
            return Refuse(CloseReason.BANNED, reputation.banned().get(ip, "banned"))
        return None

    def incoming(
        self, info_hash: bytes, t: Torrent | None, f: MagnetFetch | None, conn: PeerConnection, reputation: Reputation
    ) -> Torrent | MagnetFetch | Refuse:
        """An incoming peer named ``info_hash``: the torrent (or magnet fetch) it joins, or why not."""
        refused = self._policy_refuses(t or f, conn)
        if refused is not None:
            return refused
        ip = conn.ip
        if t is None and f is not None and f.can_accept() and not reputation.is_banned(ip):
            return f  # a magnet still fetching metadata: BEP 10 only
        if t is None:
            return Refuse(CloseReason.UNKNOWN_INFO_HASH, info_hash.hex())
        if t.state is TorrentState.CHECKING:
            return Refuse(CloseReason.HASH_CHECKING, "torrent is being checked")
        if reputation.is_banned(ip):
            return Refuse(CloseReason.BANNED, "banned")
        if not t.can_accept_peer():
            return Refuse(CloseReason.TOO_MANY_PEERS, "per-torrent peer limit")
        return t

    def _policy_refuses(self, owner: Torrent | MagnetFetch | None, conn: PeerConnection) -> Refuse | None:
        """A torrent's own policy against an incoming connection (told apart before the torrent was known)."""
        policy = self.policy(owner)
        if policy is Encryption.REQUIRED and not conn.encrypted:
            return Refuse(CloseReason.ENCRYPTION_FAILED, "plaintext refused: this torrent requires encryption")
        if policy is Encryption.NONE and conn.encrypted:
            return Refuse(CloseReason.ENCRYPTION_FAILED, "encryption refused: this torrent's policy is none")
        return None

    def completed(
        self, ev: HandshakeReceived, conn: PeerConnection, owner: Torrent | MagnetFetch | None
    ) -> Refuse | PeerConnection | None:
        """The BT handshake with ``conn`` completed: None if it may go on with ``owner``; a Refuse;
        or the older connection to the same peer that ``conn`` replaces (close that one)."""
        if owner is None:
            return Refuse(CloseReason.UNKNOWN_INFO_HASH, ev.info_hash.hex())
        if ev.peer_id == self.peer_id:
            return Refuse(CloseReason.SELF_CONNECTION, "connected to ourselves")
        if not isinstance(owner, Torrent):  # a magnet link's fetch
            if not supports_extension(ev.reserved):  # BEP 9 needs BEP 10: it cannot give us the metadata
                return Refuse(CloseReason.PROTOCOL_VIOLATION, "no extension protocol (BEP 10): cannot fetch metadata")
            return None
        old = next((p for p in owner.peers.values() if p.peer_id == ev.peer_id), None)
        if ev.peer_id != NO_PEER_ID and old is not None:
            # Both sides dialled each other at once (BEP 55 holepunching does so on purpose): both
            # keep the connection dialled by the side with the lower peer id, so exactly one survives.
            if old.outgoing != conn.outgoing and conn.outgoing == (self.peer_id < ev.peer_id) and not old.closing:
                return old
            return Refuse(CloseReason.DUPLICATE_PEER_ID, ev.peer_id.hex())
        if not conn.outgoing and not owner.can_accept_peer():
            return Refuse(CloseReason.TOO_MANY_PEERS, "per-torrent peer limit")
        return None

    @staticmethod
    def can_hand_over(conn: PeerConnection, t: Torrent) -> bool:
        """A magnet fetch's connection may carry on as a peer connection of the new torrent ``t``."""
        if t.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or not t.can_accept_peer():
            return False
        # the same peer twice (e.g. x.pe by name and by address): keep one
        return not any(p.peer_id == conn.peer_id for p in t.peers.values())
