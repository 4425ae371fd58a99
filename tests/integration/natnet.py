"""Two home NATs and a public segment in network namespaces, for holepunching (BEP 55) tests.

Topology (``NatNet()``; every box is a network namespace the harness creates and deletes)::

                         "internet": namespace <p>-inet, bridge br0, 198.18.0.0/15 on-link
        +------------------+------------------+--------------------+
        |                  |                  |                    |
   pub1 198.18.101.1  pub2 198.18.102.1   nat-a wan 198.18.1.1   nat-b wan 198.18.2.1
   (relay, seeds...)  (more public hosts)  |  masquerade          |  masquerade
                                           lan 10.0.1.1/24        lan 10.0.2.1/24
                                           |                      |
                                           a1 10.0.1.2            b1 10.0.2.2
                                           (a2 10.0.1.3 ...)      (b2 10.0.2.3 ...)

- Public hosts ``pub<i>`` (198.18.<100+i>.1) and the routers' WAN ports (198.18.<k>.1 for the k-th NAT)
  hang on one bridge: a flat /15, every address on-link, each host in its own /24 as on the internet
  (DHT /24 restrictions, see dhtnet.py). 198.18.0.0/15 is the RFC 2544 benchmarking range: libtorrent
  does not treat it as local or private, so it relays holepunches between these addresses and applies
  its normal (not "local network") rules, while nothing here can reach a real network.
- Router ``nat-<x>``: WAN port ``wan``, a LAN bridge ``lan`` (10.0.<k>.1/24), IPv4 forwarding on, no
  default route (it knows 198.18.0.0/15 and its LAN only). LAN hosts ``<x><j>`` (10.0.<k>.<1+j>) have
  a default route via the router. No namespace has a link to the host's network or a route out: the
  whole thing is sealed by construction (``assert_sealed()``). IPv6 is disabled everywhere (no
  link-local chatter, no way around the IPv4 NAT).

The NAT (nftables, table ``ip natnet`` in each router; ``counters()`` reads it):
- ``oifname "wan" masquerade``: source NAT to the WAN address. What Linux does (nf_nat_core: the
  original source port is kept unless the resulting conntrack tuple is already taken, then another
  port is picked; measured in test_natnet_harness.py): a conntrack tuple includes the remote address
  and port, so one LAN socket talking to many remote endpoints keeps ITS port number towards all of
  them. The mapping is *port-preserving* and, as long as two LAN hosts don't use the same source port,
  *endpoint-independent* (RFC 4787 EIM) -- what home routers typically do for UDP and what BEP 55
  needs: the endpoint the relay sees (and announces by PEX, where libtorrent uses the listen port from
  the extension handshake) is the one the other peer must dial. ``persistent`` only matters with a
  range of NAT addresses (same address per client) and is not used. ``mapping="random"`` uses
  ``masquerade fully-random``: a new random port per flow, endpoint-dependent ("symmetric") mapping.
- Filtering, address- and port-dependent (RFC 4787 APDF, conntrack): from the WAN only packets of a
  flow the LAN opened get in (``ct state established,related``), to the router itself (input) or
  through it (forward); everything else is counted (``wan_in_dropped``, ``wan_fwd_dropped``) and
  dropped silently (no RST, no ICMP). No port forwards, no UPnP/NAT-PMP. ``ct state invalid`` is
  dropped on the way out (``lan_invalid``), so a stray RST or a datagram of an expired flow never
  leaves with a private source address.
- Unsolicited inbound packets are dropped in the filter hooks, so their conntrack entries are never
  confirmed: a peer's punch packet that arrives before our own outgoing one leaves no state behind
  (tested). Had the router accepted it (a rule accepting that port, an input policy accept), the tuple
  would be taken and the kernel maps our own later packet to that peer to ANOTHER port (tried once by
  hand: 7003 became 6357), and the punch fails.
- Conntrack UDP timeouts are the kernel's (30 s unreplied, 120 s once both directions were seen);
  ``udp_timeout_s`` overrides the first. The routers' LAN bridges send IGMP reports to 224.0.0.22
  (harmless, visible in ``conntrack()``).
Nothing had to be changed to make libtorrent's holepunch work through this NAT: the plain masquerade
with drop-unsolicited filtering was enough on the first try; the symmetric variant (``mapping="random"``)
makes it fail, as it does on the internet.

libtorrent 2.1 holepunching through it (test_natnet_harness.py; ``start_lt``, ``start_lt_relay``):
relay on pub1 (``want_nothing``: the torrent, no data, every file priority 0, so it can never be the
source of a byte), seed on b1 and leecher on a1, each told only the relay's address, uTP only.
- Seed and leecher reach the relay over uTP from their listen port (libtorrent's outgoing uTP uses its
  listen socket), NAT-preserved: the relay sees 198.18.2.1:6881 and 198.18.1.1:6881. The relay's PEX
  (about 0.7 s after the leecher's handshake) gives the leecher the seed's endpoint with flags
  utp + holepunch; it dials uTP, NAT-B drops it; after two uTP connect timeouts (utp_connect_timeout 3 s
  each, peer_connection::connect_failed retries uTP once before anything else) it sends the relay a
  rendezvous, the relay sends ``connect`` to both, both dial uTP at once, one connection survives
  ("duplicate peer-id" closes the other). Measured (9 runs): rendezvous 7.50 s after the leecher's
  session started (3.5 s after the first failed dial), first block from the seed 2-6 ms after the
  rendezvous (once 1.3 s; not investigated), 4 MiB complete 7.8-9.1 s
  after the leecher was started. With TCP on as well (``enable_tcp=True``, measured once) libtorrent
  tries TCP after uTP and asks the relay only after the TCP connect times out too
  (peer_connect_timeout 15 s): first data after 19.5 s.
- The seed must run without PEX (``pex=False``) to prove BEP 55: with PEX it learns the leecher from
  the relay and dials it while the leecher dials it, and the two uTP SYNs cross the NATs by themselves
  (simultaneous open through EIM/APDF NATs): data after 0.9 s, no holepunch message at all.
- A seed and a relay that wants nothing close their connection as "redundant" (neither is interested)
  unless ``close_redundant_connections`` is off; ``start_lt`` turns it off (LT_NAT_SETTINGS).
- libtorrent's relay lists the recipient's own endpoint in its PEX: the leecher dials itself (NAT-A
  refuses: nothing listens on the router), then sends a rendezvous for itself, answered NoSelf (4).
- With symmetric NATs the relay sees the seed on a random port while PEX says 6881: the leecher's
  rendezvous for 198.18.2.1:6881 is answered NotConnected (2), nothing flows (PROTOCOL.md 7.7: the
  relay matches the target by connection endpoint).
- ``alert_categories=["peer_log"]`` logs every peer message, HOLEPUNCH ones included; ``lt_log(peer,
  regex)`` returns (time, line) pairs from it.

Processes: ``exec_argv(host, argv)`` wraps a command in ``ip netns exec`` (which execs it: the PID is
the command's); ``wrap(host)`` is the same as a one-argument function for ``wrap_argv=``. ``spawn()``
starts a command as a harness ``Client``; ``start(client)``/``adopt(client)`` do that for any client
built with ``wrap_argv=net.wrap(host)``. ``destroy()`` stops them (by PID), kills by PID anything still
inside any of the namespaces (``ip netns pids``) and deletes the namespaces; idempotent, also run when
``create()`` fails halfway. Use it as a context manager or through the ``nat_net`` / ``make_natnet(**kw)``
fixtures (conftest.py).

Usage::

    with NatNet() as net:                                  # or the nat_net fixture
        relay = start_lt_relay(net, tmp / "relay", torrent=t)                     # pub1:6881
        seed = start_lt(net, net.b, tmp / "seed", torrent=t, save_dir=..., seed=True, pex=False,
                        peers=[(net.relay.ip, BT_PORT)], alert_categories=["peer_log"])
        wait_lt_connected(relay, net.nat_b.ip, BT_PORT)      # the seed, as the relay will match it
        m = start_minibt(net, net.a, tmp / "m", command="download", torrent=t, data_dir=...,
                         peers=[(net.relay.ip, BT_PORT)], extra_args=["--transport", "utp"])
        lt_log(relay, r"<== HOLEPUNCH")                      # [(t, line), ...]
        net.probe_tcp(net.a, net.relay.ip, 7000)             # {"ok": True, ...}
        net.counters("b")["wan_fwd_dropped"]                  # unsolicited packets NAT-B dropped
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from clients import (
    START_TIMEOUT_S,
    Client,
    LibtorrentPeer,
    MadeTorrent,
    wait_until,
)
from dhtnet import NsProcess, need_netns
from dhtnet import wait_until_or_timeout as wait_for  # poll, no failure: for "never" checks
from minibt_proc import MinibtProc

NET = "198.18.0.0/15"  # benchmarking range (RFC 2544): only ever configured inside our namespaces
WAN_PREFIX = 15
NAME_PREFIX = "mbnat"
CMD_TIMEOUT_S = 20
BT_PORT = 6881  # every host has its own address, so every client can use the usual port
NAT_NAMES = "abcdefgh"
MAX_PUBLIC_HOSTS = 99
MAX_LAN_HOSTS = 200
MAPPINGS = {"preserve": "masquerade", "random": "masquerade fully-random"}
PROBE_SCRIPT = Path(__file__).resolve().parent / "netprobe.py"
PROBE_TIMEOUT_S = 1.0  # a probe across veths answers in well under a millisecond


def public_ip(i: int) -> str:
    """The i-th public host (1-based): 198.18.101.1, 198.18.102.1, ..."""
    if not 1 <= i <= MAX_PUBLIC_HOSTS:
        raise ValueError(f"public host index {i} not in 1..{MAX_PUBLIC_HOSTS}")
    return f"198.18.{100 + i}.1"


def wan_ip(k: int) -> str:
    """WAN address of the k-th NAT (1-based: "a" is 1): 198.18.1.1, 198.18.2.1, ..."""
    return f"198.18.{k}.1"


def lan_ip(k: int, j: int) -> str:
    """LAN address of host j (1-based) behind the k-th NAT: 10.0.k.(1+j); the router is 10.0.k.1."""
    if not 1 <= j <= MAX_LAN_HOSTS:
        raise ValueError(f"LAN host index {j} not in 1..{MAX_LAN_HOSTS}")
    return f"10.0.{k}.{1 + j}"


def need_libtorrent() -> None:
    """Skip unless the libtorrent Python bindings import; with CI set fail instead."""
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        _skip_or_fail("needs the libtorrent Python bindings")


def _skip_or_fail(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True,
         timeout_s: float = CMD_TIMEOUT_S) -> str:
    r = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout_s)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace of the topology."""

    name: str           # "pub1", "nat-a", "a1", "inet"
    ns: str             # the network namespace's name
    kind: str           # "public", "router", "lan", "internet"
    ip: str             # its own address (a router's: the WAN one; "inet" has none)
    public_ip: str      # where the public side sees its packets from: own ip, or its NAT's WAN address
    nat: str | None = None  # "a", "b", ... for routers and LAN hosts


class NatNet:
    """Public hosts, ``len(nats)`` home NATs with ``lan_hosts`` hosts each, all in namespaces."""

    def __init__(self, *, nats: Sequence[str] = ("a", "b"), lan_hosts: int = 1, public_hosts: int = 2,
                 mapping: str = "preserve", udp_timeout_s: int | None = None) -> None:
        if not nats or len(set(nats)) != len(nats) or any(n not in NAT_NAMES for n in nats):
            raise ValueError(f"nats must be distinct letters from {NAT_NAMES!r}")
        if not 1 <= lan_hosts <= MAX_LAN_HOSTS or not 0 <= public_hosts <= MAX_PUBLIC_HOSTS:
            raise ValueError("lan_hosts must be in 1..200 and public_hosts in 0..99")
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {sorted(MAPPINGS)}")
        self.prefix = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"
        self.mapping = mapping
        self.udp_timeout_s = udp_timeout_s
        self.nats = list(nats)
        self.hosts: dict[str, Host] = {}
        self._add(Host("inet", f"{self.prefix}-inet", "internet", "", ""))
        for i in range(1, public_hosts + 1):
            ip = public_ip(i)
            self._add(Host(f"pub{i}", f"{self.prefix}-pub{i}", "public", ip, ip))
        for x in self.nats:
            k = NAT_NAMES.index(x) + 1
            wan = wan_ip(k)
            self._add(Host(f"nat-{x}", f"{self.prefix}-nat-{x}", "router", wan, wan, x))
            for j in range(1, lan_hosts + 1):
                self._add(Host(f"{x}{j}", f"{self.prefix}-{x}{j}", "lan", lan_ip(k, j), wan, x))
        self._clients: list[Client] = []
        self._created: list[str] = []  # namespaces that exist (to delete)

    def _add(self, h: Host) -> None:
        self.hosts[h.name] = h

    # -- addresses
    def host(self, name: str | Host) -> Host:
        if isinstance(name, Host):
            return name
        try:
            return self.hosts[name]
        except KeyError:
            raise ValueError(f"no host {name!r} in this NatNet: {sorted(self.hosts)}") from None

    def public(self, i: int = 1) -> Host:
        return self.host(f"pub{i}")

    def lan(self, nat: str, j: int = 1) -> Host:
        return self.host(f"{nat}{j}")

    def router(self, nat: str) -> Host:
        return self.host(f"nat-{nat}")

    @property
    def relay(self) -> Host:
        """pub1, the usual place for a holepunch relay."""
        return self.public(1)

    @property
    def a(self) -> Host:
        """a1: the first host behind NAT-A (10.0.1.2)."""
        return self.lan("a")

    @property
    def b(self) -> Host:
        """b1: the first host behind NAT-B (10.0.2.2)."""
        return self.lan("b")

    @property
    def nat_a(self) -> Host:
        return self.router("a")

    @property
    def nat_b(self) -> Host:
        return self.router("b")

    @property
    def namespaces(self) -> list[str]:
        return [h.ns for h in self.hosts.values()]

    def endpoint(self, host: str | Host, port: int) -> tuple[str, int]:
        """(ip, port) of a listener on ``host`` as the public side reaches it, assuming port preservation."""
        return (self.host(host).public_ip, port)

    # -- lifecycle
    def create(self) -> None:
        """Create every namespace, link and address, the routers' nftables and sysctls."""
        if self._created:
            raise RuntimeError(f"{self.prefix} already created")
        try:
            for h in self.hosts.values():
                _run(["ip", "netns", "add", h.ns])
                self._created.append(h.ns)
                # Before any link exists, so that new interfaces inherit it.
                self._sysctl(h, {"net/ipv6/conf/all/disable_ipv6": 1, "net/ipv6/conf/default/disable_ipv6": 1})
            self._setup()
        except BaseException:
            self.destroy()
            raise

    def _sysctl(self, h: Host, values: Mapping[str, int]) -> None:
        script = "".join(f"echo {v} > /proc/sys/{k}\n" for k, v in values.items())
        _run(self.exec_argv(h, ["sh", "-e", "-c", script]))

    def _setup(self) -> None:
        inet = self.host("inet")
        links = []  # one root-level ip batch: every veth pair created directly inside its namespaces
        per_ns: dict[str, list[str]] = {h.ns: ["link set lo up"] for h in self.hosts.values()}
        per_ns[inet.ns].append("link add br0 type bridge")
        per_ns[inet.ns].append("link set br0 up")
        for h in self.hosts.values():
            if h.kind == "public":
                links.append(f"link add p-{h.name} netns {inet.ns} type veth peer name eth0 netns {h.ns}")
                per_ns[h.ns] += [f"addr add {h.ip}/{WAN_PREFIX} dev eth0", "link set eth0 up"]
                per_ns[inet.ns] += [f"link set p-{h.name} master br0", f"link set p-{h.name} up"]
            elif h.kind == "router":
                assert h.nat is not None
                k = NAT_NAMES.index(h.nat) + 1
                links.append(f"link add p-{h.name} netns {inet.ns} type veth peer name wan netns {h.ns}")
                per_ns[h.ns] += [f"addr add {h.ip}/{WAN_PREFIX} dev wan", "link set wan up",
                                 "link add lan type bridge", f"addr add 10.0.{k}.1/24 dev lan", "link set lan up"]
                per_ns[inet.ns] += [f"link set p-{h.name} master br0", f"link set p-{h.name} up"]
            elif h.kind == "lan":
                assert h.nat is not None
                k = NAT_NAMES.index(h.nat) + 1
                router = self.router(h.nat)
                links.append(f"link add p-{h.name} netns {router.ns} type veth peer name eth0 netns {h.ns}")
                per_ns[h.ns] += [f"addr add {h.ip}/24 dev eth0", "link set eth0 up",
                                 f"route add default via 10.0.{k}.1"]
        # Routers get their LAN bridge before the LAN ports are attached to it.
        _run(["ip", "-batch", "-"], stdin="".join(line + "\n" for line in links))
        order = [h for h in self.hosts.values() if h.kind in ("internet", "router")]
        order += [h for h in self.hosts.values() if h.kind not in ("internet", "router")]
        for h in order:
            _run(["ip", "-n", h.ns, "-batch", "-"], stdin="".join(line + "\n" for line in per_ns[h.ns]))
        for h in self.hosts.values():
            if h.kind == "lan":
                router = self.router(str(h.nat))
                _run(["ip", "-n", router.ns, "-batch", "-"],
                     stdin=f"link set p-{h.name} master lan\nlink set p-{h.name} up\n")
        for h in self.hosts.values():
            if h.kind == "router":
                values = {"net/ipv4/ip_forward": 1}
                if self.udp_timeout_s is not None:
                    values["net/netfilter/nf_conntrack_udp_timeout"] = self.udp_timeout_s
                _run(self.exec_argv(h, ["nft", "-f", "-"]), stdin=self._router_ruleset())
                self._sysctl(h, values)

    def _router_ruleset(self) -> str:
        return f"""
table ip natnet {{
    counter lan_out {{ }}
    counter lan_invalid {{ }}
    counter wan_in_dropped {{ }}
    counter wan_fwd_dropped {{ }}
    chain postnat {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {MAPPINGS[self.mapping]}
    }}
    chain inbound {{
        type filter hook input priority filter; policy accept;
        iifname != "wan" accept
        ct state established,related accept
        counter name "wan_in_dropped" drop
    }}
    chain through {{
        type filter hook forward priority filter; policy drop;
        ct state invalid counter name "lan_invalid" drop
        iifname "lan" oifname "wan" counter name "lan_out" accept
        iifname "wan" oifname "lan" ct state established,related accept
        iifname "wan" counter name "wan_fwd_dropped" drop
    }}
}}
"""

    def destroy(self) -> None:
        """Stop every adopted/spawned process (by PID), kill anything left inside, delete the namespaces.

        Idempotent; never raises for namespaces that are already gone.
        """
        for c in reversed(self._clients):
            with contextlib.suppress(Exception):
                c.stop()
        self._clients.clear()
        for ns in self._created:
            for pid in self._ns_pids(ns):  # processes started inside but not registered
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in reversed(self._created):
            _run(["ip", "netns", "del", ns], check=False)
        self._created = []

    def __enter__(self) -> NatNet:
        self.create()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    def existing(self) -> list[str]:
        """Which of this NatNet's namespaces ``ip netns list`` still shows ([] after ``destroy()``)."""
        out = _run(["ip", "-j", "netns", "list"], check=False) or "[]"
        names = {n.get("name") for n in json.loads(out)}
        return [ns for ns in self.namespaces if ns in names]

    @staticmethod
    def _ns_pids(ns: str) -> list[int]:
        out = _run(["ip", "netns", "pids", ns], check=False)
        return [int(p) for p in out.split()]

    def pids(self) -> list[int]:
        """PIDs of all processes inside any of the namespaces."""
        return [pid for ns in self._created for pid in self._ns_pids(ns)]

    # -- running things inside
    def exec_argv(self, host: str | Host, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host``'s namespace (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", self.host(host).ns, *argv]

    def wrap(self, host: str | Host) -> Callable[[list[str]], list[str]]:
        """``exec_argv`` for one host, as ``wrap_argv=`` of LibtorrentPeer and MinibtProc want it."""
        return functools.partial(self.exec_argv, self.host(host))

    def run(self, host: str | Host, argv: Sequence[str], *, check: bool = True,
            timeout_s: float = CMD_TIMEOUT_S) -> str:
        """Run a short command inside and return its stdout."""
        return _run(self.exec_argv(host, argv), check=check, timeout_s=timeout_s)

    def adopt(self, client: Client) -> Client:
        """Register a client started inside (by its own ``wrap_argv``): ``destroy()`` stops it first."""
        self._clients.append(client)
        return client

    def start(self, client: Client) -> Client:
        """Adopt and start a client whose argv is wrapped with ``wrap(host)``."""
        self.adopt(client)
        client.start()
        return client

    def spawn(self, host: str | Host, workdir: Path, argv: Sequence[str], *, name: str,
              ready: str | None = None, ready_timeout_s: float = START_TIMEOUT_S) -> NsProcess:
        """Start ``argv`` inside ``host``; returns once ``ready`` is in its log. ``.stop()`` stops it by PID."""
        proc = NsProcess(workdir, self.exec_argv(host, argv), name=name, ready=ready,
                         ready_timeout_s=ready_timeout_s)
        self.adopt(proc)
        proc.start()
        return proc

    # -- probes (tests/integration/netprobe.py)
    def probe_server(self, host: str | Host, workdir: Path, port: int) -> ProbeServer:
        """A TCP+UDP listener on 0.0.0.0:``port`` in ``host`` that logs what reaches it and echoes UDP."""
        server = ProbeServer(workdir, self.exec_argv(host, [sys.executable, "-u", str(PROBE_SCRIPT),
                                                            "serve", str(port)]),
                             name=f"probe-{self.host(host).name}-{port}")
        self.start(server)
        return server

    def probe_tcp(self, src: str | Host, ip: str, port: int, *, sport: int = 0,
                  timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
        """Connect once from ``src`` to ip:port: {"ok": True, "local": [ip, port]} or {"ok": False, ...}."""
        return self._probe(src, ["tcp", ip, str(port), "--sport", str(sport), "--timeout", str(timeout_s)],
                           timeout_s)

    def probe_udp(self, src: str | Host, ip: str, port: int, *, sport: int = 0, data: str = "probe",
                  timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
        """Send one datagram from ``src`` to ip:port and wait for one reply: {"ok": True, "from": [ip, port]}
        or {"ok": False, "error": "timeout"}."""
        return self._probe(src, ["udp", ip, str(port), "--sport", str(sport), "--timeout", str(timeout_s),
                                 "--data", data], timeout_s)

    def _probe(self, src: str | Host, args: list[str], timeout_s: float) -> dict[str, Any]:
        out = self.run(src, [sys.executable, str(PROBE_SCRIPT), *args], timeout_s=timeout_s + CMD_TIMEOUT_S)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    # -- inspection
    def counters(self, nat: str) -> dict[str, int]:
        """Packets counted by NAT ``nat``'s named counters: lan_out, lan_invalid, wan_in_dropped,
        wan_fwd_dropped."""
        out = self.run(self.router(nat), ["nft", "-j", "list", "counters", "table", "ip", "natnet"])
        return {item["counter"]["name"]: int(item["counter"]["packets"])
                for item in json.loads(out)["nftables"] if "counter" in item}

    def dropped(self, nat: str) -> int:
        """Unsolicited packets from the WAN that NAT ``nat`` dropped (to itself or towards its LAN)."""
        c = self.counters(nat)
        return c["wan_in_dropped"] + c["wan_fwd_dropped"]

    def conntrack(self, nat: str) -> list[str]:
        """The router's conntrack table (``/proc/net/nf_conntrack`` inside it; [] where the kernel lacks it)."""
        return self.run(self.router(nat), ["cat", "/proc/net/nf_conntrack"], check=False).splitlines()

    def interfaces(self, host: str | Host) -> list[str]:
        links: list[dict[str, Any]] = json.loads(_run(["ip", "-n", self.host(host).ns, "-j", "link", "show"]))
        return sorted(str(link["ifname"]) for link in links)

    def routes(self, host: str | Host) -> list[dict[str, Any]]:
        """Every IPv4 route in every table of the host's namespace."""
        out: list[dict[str, Any]] = json.loads(
            _run(["ip", "-n", self.host(host).ns, "-4", "-j", "route", "show", "table", "all"]) or "[]")
        return out

    def assert_sealed(self) -> None:
        """Only the interfaces the harness made, and every gateway is one of our routers."""
        routers = {f"10.0.{NAT_NAMES.index(x) + 1}.1" for x in self.nats}
        for h in self.hosts.values():
            expected = {"internet": {"lo", "br0", *(f"p-{o.name}" for o in self.hosts.values()
                                                     if o.kind in ("public", "router"))},
                        "public": {"lo", "eth0"}, "lan": {"lo", "eth0"},
                        "router": {"lo", "wan", "lan", *(f"p-{o.name}" for o in self.hosts.values()
                                                         if o.kind == "lan" and o.nat == h.nat)}}[h.kind]
            got = set(self.interfaces(h))
            assert got == expected, f"{h.name}: interfaces {sorted(got)}, expected {sorted(expected)}"
            for r in self.routes(h):
                gw = r.get("gateway")
                assert gw is None or gw in routers, f"{h.name}: route via {gw}: {r}"
                if h.kind != "lan":
                    assert r.get("dst") != "default", f"{h.name} has a default route: {r}"


class ProbeServer(Client):
    """``netprobe.py serve PORT`` inside a namespace: what reached it (``events()``), ``send_udp()``."""

    def __init__(self, workdir: Path, argv: list[str], *, name: str) -> None:
        self.name = name
        super().__init__(workdir)
        self.argv = argv

    def _launch(self) -> None:
        self._spawn(self.argv, stdin=subprocess.PIPE)

    def _wait_ready(self) -> None:
        self.wait_until(lambda: '"ready"' in self.log_text(), START_TIMEOUT_S, "probe server ready")

    def _after_stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """{"event": "tcp"|"udp"|"sent", "ip", "port", ...} in arrival order."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                ev = json.loads(line)
                if "event" in ev and (kind is None or ev["event"] == kind):
                    out.append(ev)
        return out

    def send_udp(self, ip: str, port: int, text: str = "hello") -> None:
        """Send a datagram from the served port (opens a NAT mapping from it); returns once it was sent."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RuntimeError(f"{self.name} not started")
        n = len(self.events("sent"))
        proc.stdin.write(f"send {ip} {port} {text}\n".encode())
        proc.stdin.flush()
        self.wait_until(lambda: len(self.events("sent")) > n, START_TIMEOUT_S, f"datagram to {ip}:{port} sent")


# --------------------------------------------------------------------------------------------- clients

# Settings every libtorrent in a NAT scenario gets on top of lt_peer.py's (which already turns off DHT,
# LSD, UPnP, NAT-PMP and the IP notifier).
LT_NAT_SETTINGS: dict[str, Any] = {
    # A seed and the relay (which has nothing and wants nothing) would close their connection as
    # "redundant" (neither wants anything from the other); the relay must keep it to relay.
    "close_redundant_connections": False,
}


def start_lt(net: NatNet, host: str | Host, workdir: Path, *, torrent: MadeTorrent | Path,
             save_dir: Path | None = None, seed: bool = False, want_nothing: bool = False,
             peers: Sequence[tuple[str, int]] = (), port: int = BT_PORT, enable_tcp: bool = False,
             alert_categories: Sequence[str] = (), extra_settings: Mapping[str, Any] | None = None,
             start: bool = True, **kw: Any) -> LibtorrentPeer:
    """A libtorrent peer (lt_peer.py) in ``host`` listening on host.ip:``port``, uTP on, PEX on, holepunch
    on (libtorrent's default), encryption "enabled" (tries RC4, accepts both), started unless
    ``start=False``.

    ``enable_tcp=False`` (default): uTP only, which is what holepunching needs and what makes libtorrent
    send the rendezvous soonest (module docstring). ``want_nothing``: no data and every file priority
    0 (a relay that must not become a source). ``peers``: endpoints it dials (e.g. only the relay's).
    ``alert_categories``: extra alert categories logged to its log (e.g. "peer_log" shows the
    HOLEPUNCH messages). Other ``kw`` go to LibtorrentPeer.
    """
    h = net.host(host)
    t_path = torrent.path if isinstance(torrent, MadeTorrent) else Path(torrent)
    settings = dict(LT_NAT_SETTINGS)
    settings.update(extra_settings or {})
    peer = LibtorrentPeer(workdir, torrent_path=t_path, save_dir=save_dir if save_dir is not None else workdir / "data",
                          seed=seed, listen_ip=h.ip, listen_port=port, peers=list(peers), enable_utp=True,
                          enable_tcp=enable_tcp, extra_settings=settings, want_nothing=want_nothing,
                          alert_categories=list(alert_categories), wrap_argv=net.wrap(h), **kw)
    peer.name = f"lt-{h.name}-{workdir.name}"
    if start:
        net.start(peer)
    else:
        net.adopt(peer)
    return peer


def start_minibt(net: NatNet, host: str | Host, workdir: Path, *, command: str, torrent: MadeTorrent | Path,
                 data_dir: Path, peers: Sequence[tuple[str, int]] = (), port: int = BT_PORT,
                 extra_args: Sequence[str] = (), start: bool = True, **kw: Any) -> MinibtProc:
    """``python -m minibt COMMAND`` in ``host``, bound to host.ip:``port`` (--no-dht added: no public DHT
    routers here), started unless ``start=False``. ``extra_args`` e.g. ["--transport", "utp,tcp"]."""
    h = net.host(host)
    proc = MinibtProc(workdir, command=command, torrent=torrent, data_dir=data_dir, peers=peers, bind=h.ip,
                      port=port, extra_args=["--no-dht", *extra_args], wrap_argv=net.wrap(h),
                      label=kw.pop("label", f"minibt-{command}-{h.name}"), **kw)
    if start:
        net.start(proc)
    else:
        net.adopt(proc)
    return proc


def start_lt_relay(net: NatNet, workdir: Path, *, torrent: MadeTorrent | Path, host: str | Host | None = None,
                   **kw: Any) -> LibtorrentPeer:
    """A libtorrent holepunch relay on ``host`` (default pub1): the torrent, but no data and every file
    priority 0 (it can never be the source of a byte), uTP, PEX, peer_log alerts. Peers behind NATs
    dial it; it tells each about the others by PEX (flags utp + holepunch) and relays rendezvous."""
    kw.setdefault("alert_categories", ["peer_log"])
    return start_lt(net, host if host is not None else net.relay, workdir, torrent=torrent, want_nothing=True, **kw)


def peer_entry(peer: LibtorrentPeer, ip: str, port: int | None = None) -> dict[str, Any] | None:
    """The libtorrent peer's ``seen_peers`` entry for ip (and port), or None."""
    for p in peer.status().get("seen_peers", []):
        if p["ip"] == ip and (port is None or p["port"] == port):
            return dict(p)
    return None


def wait_lt_connected(peer: LibtorrentPeer, ip: str, port: int, *, utp: bool | None = True,
                      timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
    """Wait until ``peer`` has a connection to ip:port that finished the handshake (over uTP unless
    ``utp`` says otherwise; None: either); returns its ``peers`` entry. For a relay: this is the endpoint
    it will match a rendezvous against (PROTOCOL.md 7.7)."""
    found: dict[str, Any] = {}

    def connected() -> bool:
        for p in peer.status().get("peers", []):
            if (p["ip"], p["port"]) == (ip, port) and not p["connecting"] and not p["handshake"] \
                    and (utp is None or p["utp"] == utp):
                found.update(p)
                return True
        return False

    wait_until(connected, timeout_s, f"{peer.name} connected to {ip}:{port}" + ("" if utp is None else
                                                                            f" (utp={utp})"), [peer])
    return found


LOG_LINE_RE = re.compile(r"^\s*(\d+\.\d+) (.*)$")


def lt_log(peer: LibtorrentPeer, pattern: str) -> list[tuple[float, str]]:
    """(seconds since the lt_peer.py session was created, text) of every alert line in its log that
    matches the regular expression ``pattern``. With alert_categories=["peer_log"] the holepunch lines
    are e.g. ``==> HOLEPUNCH [ msg: rendezvous to: 198.18.2.1 ...]`` (sent), ``<== HOLEPUNCH [ msg:connect
    to: 198.18.2.1 ]`` (received), ``<== HOLEPUNCH [ msg:failed ERROR: 2 msg: not connected ]``."""
    rx = re.compile(pattern)
    out = []
    for line in peer.log_text().splitlines():
        m = LOG_LINE_RE.match(line)
        if m and rx.search(m.group(2)):
            out.append((float(m.group(1)), m.group(2)))
    return out


__all__ = ["BT_PORT", "NET", "Host", "NatNet", "ProbeServer", "lan_ip", "need_libtorrent",
           "need_netns", "lt_log", "peer_entry", "public_ip", "start_lt", "start_lt_relay", "start_minibt",
           "wait_for", "wait_lt_connected", "wait_until", "wan_ip"]
