#!/usr/bin/env python3
"""One libtorrent session in its own process, driven by tests/integration/clients.py.

Runs as a subprocess (not in the test process) so the GIL is not shared with the code under test and the
harness can stop it by PID. Loopback only: DHT, LSD, UPnP and NAT-PMP are off and no DHT bootstrap node
is configured, so it never leaves 127.0.0.0/8.

Opt-in DHT (BEP 5), for tests inside a sealed namespace (tests/integration/dhtnet.py) only:
  --dht                     start the DHT; its ONLY bootstrap nodes are the --dht-bootstrap ones (none: it
                            waits to be contacted, e.g. as the swarm's "router" node)
  --dht-bootstrap HOST:PORT repeatable; libtorrent's default (dht.libtorrent.org) is never used
  --info-hash HEX           add the torrent by v1 info-hash only (a magnet with nothing but xt): peers and
                            metadata must come from the DHT
  neither --torrent nor --info-hash (with --dht): a DHT node without torrents
  The torrent is announced (force_dht_announce) as soon as the DHT has bootstrapped (PROTOCOL.md 7.4)
  and on the "dht-announce" command. The status line gains "dht": routing-table size, bootstrap state
  and the announce_peer/get_peers messages this node received.

Holepunch relays (tests/integration/natnet.py): --want-nothing sets every file priority to 0, so the
session has nothing and downloads nothing but still connects, sends PEX and relays BEP 55 messages.

stdout: one JSON object per line: {"type": "status", ...} every --status-interval seconds.
stderr: a log of libtorrent alerts (error/status/tracker/connect/storage categories; with --dht also
        dht; --alert-categories adds more, e.g. peer_log for every peer message incl. HOLEPUNCH) with
        timestamps (seconds since the session was created, when libtorrent posted the alert).
stdin:  commands, one per line: "connect IP PORT", "reannounce", "recheck", "pause", "resume",
        "dht-announce", "dht-add-node IP PORT", "quit".
        EOF on stdin (the harness died) also ends the process.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import signal
import sys
import time
from typing import Any

import libtorrent as lt

ENC_POLICIES = {"disabled": lt.enc_policy.pe_disabled, "enabled": lt.enc_policy.pe_enabled,
                "forced": lt.enc_policy.pe_forced}
MAX_ERRORS = 20  # only the most recent errors are reported in each status line
MAX_SEEN_PEERS = 200  # bound on the "seen_peers" history in the status line
MAX_DHT_EVENTS = 100  # bound on the announce_peer / get_peers history in the "dht" status object
# session_stats_alert counters copied into the "dht" status object (without the "dht." prefix)
DHT_COUNTERS = ("dht_nodes", "dht_node_cache", "dht_torrents", "dht_peers", "dht_messages_in",
                "dht_messages_out", "dht_messages_in_dropped", "dht_announce_peer_in",
                "dht_get_peers_in", "dht_get_peers_out", "dht_announce_peer_out")
# peer_info::utp_socket (bit 17 of peer_info::flags, libtorrent peer_info.hpp) is not exported by the
# Python bindings of 2.1; the other flags are.
PEER_FLAG_UTP = 1 << 17
ALERT_MASK = (lt.alert_category.error | lt.alert_category.status | lt.alert_category.tracker
              | lt.alert_category.connect | lt.alert_category.storage)
PEER_SOURCES = {"tracker": lt.peer_info.tracker, "dht": lt.peer_info.dht, "pex": lt.peer_info.pex,
                "lsd": lt.peer_info.lsd, "resume": lt.peer_info.resume_data}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--torrent", help=".torrent file to add")
    what.add_argument("--info-hash", help="add by v1 info-hash only (40 hex digits); peers from --dht or --peer")
    p.add_argument("--save-dir", help="required with --torrent or --info-hash")
    p.add_argument("--seed", action="store_true", help="data is already in save-dir; check it and seed")
    p.add_argument("--listen-ip", default="127.0.0.1")
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--peer", action="append", default=[], help="HOST:PORT to connect to (repeatable)")
    p.add_argument("--utp", action="store_true", help="enable uTP (off by default)")
    p.add_argument("--no-tcp", action="store_true", help="disable TCP peer connections")
    p.add_argument("--out-enc", choices=sorted(ENC_POLICIES), default="enabled")
    p.add_argument("--in-enc", choices=sorted(ENC_POLICIES), default="enabled")
    p.add_argument("--no-pex", action="store_true", help="create the session without the ut_pex plugin")
    p.add_argument("--want-nothing", action="store_true",
                   help="every file priority 0: download nothing (e.g. a holepunch relay that has no data)")
    p.add_argument("--alert-categories", default="",
                   help="comma-separated extra alert categories to log (names of lt.alert_category, e.g. "
                        "peer_log,peer: the peer_log category shows the HOLEPUNCH messages)")
    p.add_argument("--settings", default="{}", help="JSON object of extra libtorrent settings")
    p.add_argument("--status-interval", type=float, default=0.25)
    p.add_argument("--dht", action="store_true", help="enable the DHT (off by default)")
    p.add_argument("--dht-bootstrap", action="append", default=[], metavar="HOST:PORT",
                   help="DHT bootstrap node (repeatable; the only ones used; needs --dht)")
    ns = p.parse_args(argv)
    if ns.dht_bootstrap and not ns.dht:
        p.error("--dht-bootstrap needs --dht")
    if ns.torrent is None and ns.info_hash is None and not ns.dht:
        p.error("one of --torrent or --info-hash is required (without them only a --dht node makes sense)")
    if (ns.torrent is not None or ns.info_hash is not None) and ns.save_dir is None:
        p.error("--save-dir is required with --torrent or --info-hash")
    for cat in filter(None, ns.alert_categories.split(",")):
        if not isinstance(getattr(lt.alert_category, cat, None), int):
            p.error(f"--alert-categories: no alert category {cat!r}")
    if ns.info_hash is not None:
        try:
            ok = len(bytes.fromhex(ns.info_hash)) == 20
        except ValueError:
            ok = False
        if not ok:
            p.error("--info-hash must be 40 hex digits")
    for node in ns.dht_bootstrap:
        try:
            parse_hostport(node)
        except ValueError:
            p.error(f"--dht-bootstrap {node!r} is not HOST:PORT")
    return ns


def session_settings(ns: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "listen_interfaces": f"{ns.listen_ip}:{ns.listen_port}",
        "listen_system_port_fallback": False,
        "enable_dht": False,
        "dht_bootstrap_nodes": "",
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_ip_notifier": False,
        "enable_outgoing_utp": ns.utp,
        "enable_incoming_utp": ns.utp,
        "enable_outgoing_tcp": not ns.no_tcp,
        "enable_incoming_tcp": not ns.no_tcp,
        # PROTOCOL.md 7.8: libtorrent tries encryption first when out_enc_policy is "enabled".
        "out_enc_policy": ENC_POLICIES[ns.out_enc],
        "in_enc_policy": ENC_POLICIES[ns.in_enc],
        "allowed_enc_level": lt.enc_level.pe_both,
        "prefer_rc4": False,
        # Every peer is on 127.0.0.1, so several connections per IP must be allowed.
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": 0,
        "download_rate_limit": 0,
        "ignore_limits_on_local_network": True,
        # Both HTTP and UDP trackers of a torrent are announced to, each in its own tier.
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # Tests want quick retries, not the internet-friendly 60 s.
        "min_reconnect_time": 1,
        "stop_tracker_timeout": 1,
        "alert_mask": ALERT_MASK,
    }
    if ns.dht:
        settings.update(dht_settings(ns))
    for cat in filter(None, ns.alert_categories.split(",")):
        settings["alert_mask"] |= getattr(lt.alert_category, cat)
    extra = json.loads(ns.settings)
    if not isinstance(extra, dict):
        raise SystemExit("--settings must be a JSON object")
    settings.update(extra)
    return settings


def dht_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """DHT on with exactly the --dht-bootstrap nodes; libtorrent's DHT defaults otherwise.

    No DHT protection is relaxed: in the namespace each node has its own address in its own /24, so
    the per-IP and per-/24 restrictions (dht_restrict_routing_ips, dht_restrict_search_ips) and the
    dark-internet filter (198.18.0.0/15 is not on its list) hold as on the internet.
    """
    nodes = [parse_hostport(n) for n in ns.dht_bootstrap]
    return {
        "enable_dht": True,
        # Replaces the default "dht.libtorrent.org:25401"; empty means no bootstrap node at all.
        "dht_bootstrap_nodes": ",".join(f"{h}:{p}" for h, p in nodes),
        # Each DHT peer plays one host: outgoing TCP connections leave from its own address. Unbound,
        # they would leave from the address they go to (all addresses are on lo: the kernel picks the
        # destination as source) and the remote would see a connection from itself.
        "outgoing_interfaces": ns.listen_ip,
        "alert_mask": ALERT_MASK | lt.alert_category.dht,
    }


def make_session(ns: argparse.Namespace) -> Any:
    settings = session_settings(ns)
    # The bundled stubs type settings as settings_pack; the bindings accept a plain dict with flags.
    new_session: Any = lt.session
    if ns.no_pex:
        # PROTOCOL.md 7.5: the disable_pex torrent flag does not remove ut_pex; leave the plugin out.
        ses = new_session(settings, flags=0)
        ses.add_extension("ut_metadata")
        ses.add_extension("smart_ban")
    else:
        ses = new_session(settings, flags=lt.session_flags_t.add_default_plugins)
    return ses


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def client_name(raw: object) -> str:
    # The 2.1 bindings return peer_info.client as bytes.
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw)


def peer_id_text(pid: Any) -> str:
    """The 20-byte peer id as printable ASCII ("." for other bytes): "-TR3000-...", "A2-1-36-0-..."."""
    raw = pid.to_bytes() if hasattr(pid, "to_bytes") else bytes(pid)
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in raw)


def peer_json(p: Any) -> dict[str, Any]:
    ip, port = p.ip
    flags = int(p.flags)
    source = int(p.source)
    return {
        "ip": ip,
        "port": port,
        "client": client_name(p.client),
        "peer_id": peer_id_text(p.pid),
        "utp": bool(flags & PEER_FLAG_UTP),
        "rc4": bool(flags & int(lt.peer_info.rc4_encrypted)),
        "outgoing": bool(flags & int(lt.peer_info.outgoing_connection)),
        "seed": bool(flags & int(lt.peer_info.seed)),
        "holepunched": bool(flags & int(lt.peer_info.holepunched)),
        "connecting": bool(flags & int(lt.peer_info.connecting)),
        "handshake": bool(flags & int(lt.peer_info.handshake)),
        "interested": bool(flags & int(lt.peer_info.interesting)),  # we are interested in them
        "choked": bool(flags & int(lt.peer_info.choked)),  # we choke them
        "remote_interested": bool(flags & int(lt.peer_info.remote_interested)),
        "remote_choked": bool(flags & int(lt.peer_info.remote_choked)),  # they choke us
        "total_download": p.total_download,
        "total_upload": p.total_upload,
        "sources": sorted(name for name, bit in PEER_SOURCES.items() if source & int(bit)),
    }


class SeenPeers:
    """Every peer connected at some point (bounded): survives disconnects, e.g. seed-to-seed closes.

    Updated from get_peer_info() on every loop iteration (~20 Hz) and from peer alerts, so a transfer
    that starts and ends between two status lines is still recorded with its peer id.
    """

    KEYS = ("client", "peer_id", "utp", "rc4", "outgoing", "holepunched", "sources", "total_download",
            "total_upload")

    def __init__(self) -> None:
        self.by_addr: dict[str, dict[str, Any]] = {}

    def _entry(self, ip: str, port: int) -> dict[str, Any] | None:
        key = f"{ip}:{port}"
        entry = self.by_addr.get(key)
        if entry is None and len(self.by_addr) < MAX_SEEN_PEERS:
            entry = self.by_addr[key] = {"ip": ip, "port": port}
        return entry

    def update(self, peers: list[dict[str, Any]]) -> None:
        for p in peers:
            entry = self._entry(p["ip"], p["port"])
            if entry is not None:
                entry.update({k: p[k] for k in self.KEYS if p[k] or k not in entry})

    def alert(self, a: Any) -> None:
        if not isinstance(a, (lt.peer_connect_alert, lt.peer_disconnected_alert)):
            return
        ip, port = a.ip
        entry = self._entry(ip, port)
        if entry is None:
            return
        pid = peer_id_text(a.pid)
        if pid.strip("."):
            entry["peer_id"] = pid
        if isinstance(a, lt.peer_disconnected_alert):
            entry["disconnect"] = a.message()
            # A transfer shorter than one poll of get_peer_info (50 ms) leaves no peer flags: the alert
            # still names the transport.
            entry.setdefault("utp", a.socket_type in (lt.socket_type_t.utp, lt.socket_type_t.utp_ssl))

    def json(self) -> list[dict[str, Any]]:
        return list(self.by_addr.values())


def current_peers(h: Any) -> list[dict[str, Any]]:
    try:
        return [peer_json(p) for p in h.get_peer_info()]
    except RuntimeError:
        return []


class DhtView:
    """What the "dht" status object reports, gathered from alerts (dht category) and session stats."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.bootstrapped = False
        self.external_ip: str | None = None
        self.announces: list[dict[str, Any]] = []  # announce_peer received: info_hash, ip, port
        self.get_peers: list[str] = []  # info-hashes of get_peers received
        self.replies = 0  # dht_reply_alert: get_peers replies with peers for our torrent
        self.reply_peers = 0

    def alert(self, a: Any) -> bool:
        """Record a DHT alert; True when it is the bootstrap-complete alert."""
        if isinstance(a, lt.session_stats_alert):
            values = a.values
            self.counters = {k: int(values.get(f"dht.{k}", 0)) for k in DHT_COUNTERS}
        elif isinstance(a, lt.dht_bootstrap_alert):
            self.bootstrapped = True
            return True
        elif isinstance(a, lt.external_ip_alert):
            # BEP 42: libtorrent derives its node ID from this address and changes it once it is known.
            self.external_ip = str(a.external_address)
        elif isinstance(a, lt.dht_announce_alert):
            if len(self.announces) < MAX_DHT_EVENTS:
                self.announces.append({"info_hash": str(a.info_hash), "ip": str(a.ip), "port": int(a.port)})
        elif isinstance(a, lt.dht_get_peers_alert):
            if len(self.get_peers) < MAX_DHT_EVENTS:
                self.get_peers.append(str(a.info_hash))
        elif isinstance(a, lt.dht_reply_alert):
            self.replies += 1
            self.reply_peers += int(a.num_peers)
        return False

    def json(self, ses: Any) -> dict[str, Any]:
        return {"running": bool(ses.is_dht_running()), "bootstrapped": self.bootstrapped,
                "external_ip": self.external_ip,
                "nodes": self.counters.get("dht_nodes", 0), "node_cache": self.counters.get("dht_node_cache", 0),
                "counters": self.counters, "announces_received": self.announces,
                "get_peers_received": self.get_peers, "replies": self.replies, "reply_peers": self.reply_peers}


def status_json(ses: Any, h: Any, errors: collections.deque[str], peers: list[dict[str, Any]],
                seen: SeenPeers, dht: DhtView | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "status", "t": time.monotonic()}
    if dht is not None:
        out["dht"] = dht.json(ses)
    if h is None:  # a DHT node without torrents
        out.update({"listen_port": ses.listen_port(), "errors": list(errors)})
        return out
    st = h.status()
    out.update({
        "info_hash": str(st.info_hashes.v1) if hasattr(st, "info_hashes") else str(st.info_hash),
        "has_metadata": bool(st.has_metadata),
        "state": str(st.state),
        "paused": bool(st.paused),
        "progress": st.progress,
        "total_done": st.total_done,
        "total_wanted": st.total_wanted,
        "num_peers": st.num_peers,
        "num_seeds": st.num_seeds,
        "total_download": st.total_download,
        "total_upload": st.total_upload,
        "total_payload_download": st.total_payload_download,
        "total_payload_upload": st.total_payload_upload,
        "total_failed_bytes": st.total_failed_bytes,
        "is_seeding": bool(st.is_seeding),
        "is_finished": bool(st.is_finished),
        "listen_port": ses.listen_port(),
        "errors": list(errors),
        "peers": peers,
        "seen_peers": seen.json(),
    })
    return out


def run_command(line: str, ses: Any, h: Any) -> bool:
    """Apply one stdin command; returns False on "quit"."""
    parts = line.split()
    if not parts:
        return True
    cmd = parts[0]
    if cmd == "dht-add-node" and len(parts) == 3:
        ses.add_dht_node((parts[1], int(parts[2])))  # pings it; added to the routing table on reply
        return True
    if h is None and cmd != "quit":
        print(f"no torrent for command: {line!r}", file=sys.stderr, flush=True)
        return True
    if cmd == "connect" and len(parts) == 3:
        h.connect_peer((parts[1], int(parts[2])))
    elif cmd == "reannounce":
        h.force_reannounce()
    elif cmd == "recheck":
        h.force_recheck()
    elif cmd == "pause":
        h.pause()
    elif cmd == "resume":
        h.resume()
    elif cmd == "dht-announce":
        h.force_dht_announce()
    elif cmd == "quit":
        return False
    else:
        print(f"unknown command: {line!r}", file=sys.stderr, flush=True)
    return True


def add_torrent(ses: Any, ns: argparse.Namespace) -> Any:
    """The one torrent (from --torrent or --info-hash), or None for a DHT node without torrents."""
    if ns.torrent is not None:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(ns.torrent)
    elif ns.info_hash is not None:
        # Only xt: no name, no trackers, no peers, no DHT nodes; everything else must be found.
        atp = lt.parse_magnet_uri(f"magnet:?xt=urn:btih:{ns.info_hash.lower()}")
    else:
        return None
    atp.save_path = ns.save_dir
    # Not auto-managed: the queueing logic must never pause the one torrent under test. Without resume
    # data libtorrent checks the files on add, so a seeder verifies its data and then seeds.
    atp.flags = lt.torrent_flags.default_flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
    if ns.want_nothing:
        if ns.torrent is None:
            raise SystemExit("--want-nothing needs --torrent")
        atp.file_priorities = [0] * atp.ti.num_files()
    return ses.add_torrent(atp)


def main(argv: list[str]) -> int:
    ns = parse_args(argv)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    ses = make_session(ns)
    h = add_torrent(ses, ns)
    if h is not None:
        for peer in ns.peer:
            h.connect_peer(parse_hostport(peer))

    errors: collections.deque[str] = collections.deque(maxlen=MAX_ERRORS)
    seen = SeenPeers()
    dht = DhtView() if ns.dht else None
    stdin_fd = sys.stdin.fileno()
    stdin_open = True
    pending = b""
    next_status = 0.0
    t0 = time.monotonic()
    wall_t0 = time.time()  # alert timestamps are wall-clock times
    while not stop:
        now = time.monotonic()
        for a in ses.pop_alerts():
            if dht is not None and dht.alert(a) and h is not None:
                # PROTOCOL.md 7.4: announce now, not 15 minutes after the torrent was added.
                h.force_dht_announce()
                print(f"{now - t0:9.3f} DHT bootstrapped: force_dht_announce", file=sys.stderr, flush=True)
            if isinstance(a, (lt.session_stats_alert, lt.session_stats_header_alert)):
                continue  # requested below for the "dht" status object; too long to log
            # When libtorrent posted it, not when this loop picked it up (up to 50 ms later, in batches).
            msg = f"{a.timestamp().timestamp() - wall_t0:9.3f} {type(a).__name__}: {a.message()}"
            print(msg, file=sys.stderr, flush=True)
            if a.category() & lt.alert_category.error:
                errors.append(msg)
            seen.alert(a)
        peers = current_peers(h) if h is not None else []
        seen.update(peers)
        if now >= next_status:
            print(json.dumps(status_json(ses, h, errors, peers, seen, dht)), flush=True)
            next_status = now + ns.status_interval
            if dht is not None:
                ses.post_session_stats()  # counters arrive as a session_stats_alert for the next line
        timeout = max(0.0, min(next_status - time.monotonic(), 0.05))
        if stdin_open:
            ready, _, _ = select.select([stdin_fd], [], [], timeout)
            if ready:
                chunk = os.read(stdin_fd, 4096)
                if not chunk:
                    stdin_open = False
                    stop = True
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    try:
                        if not run_command(line.decode("utf-8", "replace"), ses, h):
                            stop = True
                    except (ValueError, RuntimeError) as e:
                        print(f"command {line!r} failed: {e}", file=sys.stderr, flush=True)
        else:
            ses.wait_for_alert(int(timeout * 1000))
    ses.pause()
    del ses
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
