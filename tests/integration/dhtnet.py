"""A sealed network namespace for DHT interop tests: many routable-looking hosts, no way out.

``DhtNet`` creates ONE network namespace whose only interface is ``lo``. On ``lo`` it puts one /32
address per "host" from the benchmarking range 198.18.0.0/15 (RFC 2544), each in its own /24:
198.18.1.1, 198.18.2.1, ... Each process binds one of them, so every DHT node has its own IP, as on
the internet. There is no veth pair and nothing is configured outside the namespace: no packet sent
inside can reach the host or any other network.

The trap (``trap_outside=True``, the default): a default route (IPv4 and IPv6) into ``lo`` and an
nftables output chain that counts and drops every packet to an address outside 198.18.0.0/15 and
loopback. Without it a send to a public address (a default bootstrap node, the host's DNS server)
fails in the kernel with ENETUNREACH and nobody sees it; with it the attempt fails with EPERM and is
counted (``outside_packets()``), so a test can assert that nobody even tried. The route leads back
into this namespace's ``lo``: the trap opens no way out. ``assert_sealed()`` checks all of it.

What matters for libtorrent 2.x (read in its settings_pack.hpp, routing_table.cpp, node.cpp,
dos_blocker.cpp; then measured in this namespace: a router and 6 nodes, introduced as in
``start_lt_dht_swarm``, routing-table sizes afterwards):
- ``dht_bootstrap_nodes`` defaults to dht.libtorrent.org:25401: every session sets it (lt_peer.py
  --dht-bootstrap); ``enable_dht``, LSD, UPnP, NAT-PMP as lt_peer.py does.
- ``dht_restrict_routing_ips`` (one routing-table entry per IP, one per /24 in a bucket) and
  ``dht_restrict_search_ips`` (one node per /24 in a lookup): with all nodes on 127.0.0.1 or in one
  /24 every routing table kept 1 node (complete: 6 and 5); with both off, or with one /24 per host
  and both at their defaults, all tables were complete. So: one /24 per host, defaults kept.
- ``dht_ignore_dark_internet`` drops only class-A networks 3, 6, 7, 9, 11, 19, 21, 22, 25, 26, 28, 29,
  30, 33, 34, 48, 56: 198.18.0.0/15 passes. ``dht_enforce_node_id`` is off by default,
  ``dht_prefer_verified_node_ids`` only matters when a bucket is full; no DHT setting is relaxed.
- BEP 42: 198.18.x.y is not a private address to libtorrent, so a node replaces its random node ID by
  one derived from its address as soon as a reply tells it that address (the "ip" key). Whoever
  stored the old ID evicts the node on its next ping ("changed ID") without adding the new one, and
  libtorrent looks for nodes again only every 10 minutes: started side by side, libtorrent nodes keep
  empty routing tables (a lookup still works, through the bootstrap nodes). ``start_lt_dht_swarm``
  builds complete tables anyway. (On 127.0.0.1 the address is never learnt and IDs stay random.)
- libtorrent never puts a bootstrap ("router") node into its routing table.
- DoS blocker: 50 DHT messages from one IP within 10 s get that IP ignored for 5 minutes
  (``dht_block_ratelimit`` 5/s, ``dht_block_timeout`` 300 s), silently (``dht_messages_in_dropped``).
- A torrent is announced only every 15 minutes unless forced (PROTOCOL.md 7.4): lt_peer.py calls
  force_dht_announce when the DHT has bootstrapped.
- All addresses are on ``lo``, so an unbound outgoing TCP socket gets the DESTINATION address as its
  source and the remote sees a connection from itself: every process must bind its outgoing sockets
  to its host address (lt_peer.py sets ``outgoing_interfaces`` in --dht mode; minibt: --bind).
- Rate limits apply (198.18.0.0/15 is not in libtorrent's "local" peer class, unlike PROTOCOL.md 7.10).
- The kernel here has no ``dummy`` link type (PROTOCOL.md 7.12), hence the addresses on ``lo``.

Processes: ``exec_argv(argv)`` wraps a command in ``ip netns exec`` (which execs it: the PID is the
command's). ``spawn()`` starts one as a harness ``Client`` (log file, ``stop()`` by PID: SIGTERM,
wait, SIGKILL); ``start(client)``/``adopt(client)`` do the same for any other ``Client`` built with
that wrapper (``LibtorrentPeer(wrap_argv=net.exec_argv)``, or ``lt_dht_peer()``). ``destroy()`` stops
them all, kills by PID anything else still inside (``ip netns pids``), deletes the namespace; it is
idempotent and runs on any failure (context manager, or the ``dht_netns`` fixture in conftest.py).

Usage::

    with DhtNet(hosts=4) as net:                # or the dht_netns fixture
        router = lt_dht_peer(net, tmp / "router", 1, [])                     # 198.18.1.1:6881
        seed = lt_dht_peer(net, tmp / "seed", 2, [(net.host(1), DHT_PORT)], torrent_path=..., ...)
        net.start(router); net.start(seed)
        proc = net.spawn(tmp / "x", ["python3", "-c", "..."], name="x", ready="up")
        ...
        net.assert_sealed()                     # only lo, routes only via lo, no packet towards outside
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from clients import POLL_INTERVAL_S, START_TIMEOUT_S, Client, LibtorrentPeer, wait_until

NET = "198.18.0.0/15"  # benchmarking range (RFC 2544): only ever configured inside our namespaces
MAX_HOSTS = 511  # 198.18.1.1 ... 198.19.255.1, one /24 each
NAME_PREFIX = "mbdht"
CMD_TIMEOUT_S = 20
DHT_PORT = 6881  # every process has its own address, so all can use the usual port
INTRODUCE_EVERY_S = 1.0  # start_lt_dht_swarm: repeat the introductions until the tables are complete


def host_address(i: int) -> str:
    """The i-th host (1-based): 198.18.1.1, 198.18.2.1, ..., 198.18.255.1, 198.19.0.1, ... 198.19.255.1."""
    if not 1 <= i <= MAX_HOSTS:
        raise ValueError(f"host index {i} not in 1..{MAX_HOSTS}")
    return f"198.{18 + i // 256}.{i % 256}.1"


def need_netns() -> None:
    """Skip unless root on Linux with iproute2 and nftables; in CI (CI=true) fail instead of skipping."""
    why = ""
    if sys.platform != "linux" or os.geteuid() != 0:
        why = "needs root on Linux for network namespaces"
    elif shutil.which("ip") is None or shutil.which("nft") is None:
        why = "needs iproute2 and nftables"
    if not why:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    r = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


class NsProcess(Client):
    """A command run inside the namespace; ready once ``ready`` appears in its log (or at once)."""

    def __init__(self, workdir: Path, argv: list[str], *, name: str, ready: str | None = None,
                 ready_timeout_s: float = START_TIMEOUT_S) -> None:
        self.name = name
        super().__init__(workdir)
        self.argv = argv  # already wrapped by DhtNet.exec_argv
        self.ready = ready
        self.ready_timeout_s = ready_timeout_s

    def _launch(self) -> None:
        self._spawn(self.argv)

    def _wait_ready(self) -> None:
        ready = self.ready
        if ready is not None:
            self.wait_until(lambda: ready in self.log_text(), self.ready_timeout_s, repr(ready))


class DhtNet:
    """One network namespace with ``lo`` only, ``hosts`` addresses on it and (optionally) the trap."""

    def __init__(self, hosts: int = 16, *, trap_outside: bool = True) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be in 1..{MAX_HOSTS}")
        self.name = f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"
        self.addresses = [host_address(i) for i in range(1, hosts + 1)]
        self.trap_outside = trap_outside
        self._clients: list[Client] = []
        self._created = False

    # -- lifecycle
    def create(self) -> None:
        """Create the namespace, bring ``lo`` up with the host addresses, install counters and trap."""
        if self._created:
            raise RuntimeError(f"{self.name} already created")
        _run(["ip", "netns", "add", self.name])
        self._created = True
        try:
            self._setup()
        except BaseException:
            self.destroy()
            raise

    def _setup(self) -> None:
        ns = self.name
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # One batch for all addresses: ip -batch runs the commands in one process.
        batch = "".join(f"addr add {a}/32 dev lo\n" for a in self.addresses)
        _run(["ip", "-n", ns, "-batch", "-"], stdin=batch)
        if self.trap_outside:
            _run(["ip", "-n", ns, "route", "add", "default", "dev", "lo"])
            _run(["ip", "-n", ns, "-6", "route", "add", "default", "dev", "lo"])
        _run(self.exec_argv(["nft", "-f", "-"]), stdin=self._ruleset())

    def _ruleset(self) -> str:
        inside_v4 = f"{{ 127.0.0.0/8, {NET} }}"
        return f"""
table inet dhtnet {{
    counter inside {{ }}
    counter outside {{ }}
    counter other_interface {{ }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oifname != "lo" counter name "other_interface" drop
        ip daddr {inside_v4} counter name "inside" accept
        ip6 daddr ::1 counter name "inside" accept
        counter name "outside" drop
    }}
}}
"""

    def destroy(self) -> None:
        """Stop every adopted/spawned process (by PID), kill anything left inside, delete the namespace.

        Idempotent; never raises for a namespace that is already gone.
        """
        for c in reversed(self._clients):
            with contextlib.suppress(Exception):
                c.stop()
        self._clients.clear()
        if not self._created:
            return
        for pid in self.pids():  # processes we started inside but did not register
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _run(["ip", "netns", "del", self.name], check=False)
        self._created = False

    def __enter__(self) -> DhtNet:
        self.create()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    # -- addresses
    def host(self, i: int) -> str:
        """The address of host i (1-based) in this namespace."""
        if not 1 <= i <= len(self.addresses):
            raise ValueError(f"host {i}: this DhtNet has hosts 1..{len(self.addresses)}")
        return self.addresses[i - 1]

    # -- running things inside
    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the namespace (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True) -> str:
        """Run a short command inside and return its stdout."""
        return _run(self.exec_argv(argv), check=check)

    def adopt(self, client: Client) -> Client:
        """Register a client started inside (by its own ``wrap_argv``): ``destroy()`` stops it first."""
        self._clients.append(client)
        return client

    def spawn(self, workdir: Path, argv: Sequence[str], *, name: str, ready: str | None = None,
              ready_timeout_s: float = START_TIMEOUT_S) -> NsProcess:
        """Start ``argv`` inside; returns once ``ready`` is in its log. Stop it with ``.stop()`` (by PID)."""
        proc = NsProcess(workdir, self.exec_argv(argv), name=name, ready=ready, ready_timeout_s=ready_timeout_s)
        self.adopt(proc)
        proc.start()
        return proc

    def start(self, client: Client) -> Client:
        """Adopt and start a client whose argv is already wrapped with ``exec_argv``."""
        self.adopt(client)
        client.start()
        return client

    def exists(self) -> bool:
        """The namespace is still listed by ``ip netns list`` (False after ``destroy()``)."""
        out = _run(["ip", "-j", "netns", "list"], check=False) or "[]"
        return any(n.get("name") == self.name for n in json.loads(out))

    def pids(self) -> list[int]:
        """PIDs of all processes inside the namespace."""
        if not self._created:
            return []
        out = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in out.split()]

    # -- inspection
    def interfaces(self) -> list[str]:
        links: list[dict[str, Any]] = json.loads(_run(["ip", "-n", self.name, "-j", "link", "show"]))
        return sorted(str(link["ifname"]) for link in links)

    def routes(self) -> list[dict[str, Any]]:
        """Every IPv4 and IPv6 route in every table of the namespace (``ip -j route show table all``)."""
        out: list[dict[str, Any]] = []
        for fam in ("-4", "-6"):
            out += json.loads(_run(["ip", "-n", self.name, fam, "-j", "route", "show", "table", "all"]) or "[]")
        return out

    def counter(self, name: str) -> int:
        """Packets counted by nftables counter ``name`` (inside, outside, other_interface)."""
        out = self.run(["nft", "-j", "list", "counter", "inet", "dhtnet", name])
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError(f"no counter {name} in {out}")

    def outside_packets(self) -> int:
        """Packets that tried to leave towards an address outside 198.18.0.0/15 and loopback (dropped)."""
        return self.counter("outside") + self.counter("other_interface")

    def assert_sealed(self) -> None:
        """Nothing could leave and nothing tried: only ``lo``, every route on ``lo``, outside counter 0."""
        assert self.interfaces() == ["lo"], f"{self.name} has other interfaces: {self.interfaces()}"
        devs = {str(r.get("dev")) for r in self.routes()}
        assert devs <= {"lo"}, f"{self.name} has routes through {devs - {'lo'}}: {self.routes()}"
        outside, other = self.counter("outside"), self.counter("other_interface")
        assert outside == 0 and other == 0, (
            f"{outside} packet(s) towards outside addresses and {other} through another interface were "
            f"dropped in {self.name}")



# --------------------------------------------------------------------------------------------- libtorrent


def lt_dht_peer(net: DhtNet, workdir: Path, host: int, bootstrap: Sequence[tuple[str, int]],
                **kw: Any) -> LibtorrentPeer:
    """A ``LibtorrentPeer`` (not started) on ``net.host(host)``:DHT_PORT inside ``net``, DHT on, with
    exactly ``bootstrap`` as its bootstrap nodes; ``kw`` as for LibtorrentPeer (torrent_path, info_hash,
    save_dir, seed, extra_settings, ...). Start it with ``net.start(peer)``."""
    peer = LibtorrentPeer(workdir, listen_ip=net.host(host), listen_port=DHT_PORT, dht_bootstrap=list(bootstrap),
                          wrap_argv=net.exec_argv, **kw)
    peer.name = f"lt-{workdir.name}"
    return peer


@dataclass
class LtDhtSwarm:
    router: LibtorrentPeer
    nodes: list[LibtorrentPeer]

    @property
    def router_ep(self) -> tuple[str, int]:
        return (self.router.listen_ip, DHT_PORT)

    @property
    def all(self) -> list[LibtorrentPeer]:
        return [self.router, *self.nodes]


def start_lt_dht_swarm(net: DhtNet, workdir: Path, n_nodes: int, *, first_host: int = 1,
                       timeout_s: float = START_TIMEOUT_S) -> LtDhtSwarm:
    """A libtorrent router on ``net.host(first_host)`` and ``n_nodes`` libtorrent DHT nodes (no torrents) on
    the following hosts, bootstrapped from the router, with complete routing tables: the router's holds
    every node, each node's every other node (the router is its bootstrap node, which libtorrent never
    puts in its routing table). A node that joins later with the router as bootstrap node learns them
    from the router's replies, as on the internet.

    Why more than starting them: a libtorrent node starts with a random node ID and replaces it by a BEP 42
    ID derived from its address as soon as a reply tells it that address (the reply's "ip" key). Whoever
    heard of it before keeps the old ID and, on its next ping, evicts the node ("changed ID") without
    adding the new one; libtorrent then looks for nodes only every few minutes. So: start every node
    and wait until it knows its address (its ID is final), then make everyone ping everyone
    (``dht-add-node``) and repeat that until the tables are complete: the first round from the router
    only clears its stale entries, the next ones add the nodes.
    """
    router = lt_dht_peer(net, workdir / "router", first_host, [])
    net.start(router)
    nodes = [lt_dht_peer(net, workdir / f"node{i}", first_host + i, [(router.listen_ip, DHT_PORT)])
             for i in range(1, n_nodes + 1)]
    for node in nodes:
        net.start(node)
    swarm = LtDhtSwarm(router, nodes)
    wait_until(lambda: all(n.dht_status().get("external_ip") == n.listen_ip for n in nodes), timeout_s,
               "every DHT node to learn its address (its node ID is final then)", swarm.all)

    def complete() -> bool:
        return (router.dht_status().get("nodes") == n_nodes
                and all(n.dht_status().get("nodes") == n_nodes - 1 for n in nodes))

    deadline = time.monotonic() + timeout_s
    while not complete():
        for p in swarm.all:
            if p.returncode() is not None:
                raise AssertionError(f"{p.name} exited with code {p.returncode()}\n{p.log_tail()}")
        if time.monotonic() >= deadline:
            sizes = {p.listen_ip: (p.dht_status().get("nodes"), p.dht_status().get("node_cache")) for p in swarm.all}
            raise AssertionError(f"DHT routing tables incomplete after {timeout_s:.0f} s: "
                                 f"(nodes, replacements) by address: {sizes}")
        for p in swarm.all:
            for q in nodes:
                if q is not p:
                    p.send_command(f"dht-add-node {q.listen_ip} {DHT_PORT}")
        wait_until_or_timeout(complete, INTRODUCE_EVERY_S)
    return swarm


def wait_until_or_timeout(pred: Callable[[], object], timeout_s: float) -> bool:
    """Poll ``pred`` for at most ``timeout_s``; returns whether it became true (no failure)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(POLL_INTERVAL_S)
    return bool(pred())
