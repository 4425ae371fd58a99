#!/usr/bin/env python3
"""A TCP or UDP relay on loopback that adds a fixed delay each way: a long link for benchmarks.

    python3 tools/delayrelay.py TARGET_HOST:PORT RTT_MS [--udp]

Listens on 127.0.0.1 (a free port, printed as ``{"port": N}`` on the first line of stdout), and for
each connection accepted opens one to the target.  Every chunk read from either side is written to
the other side RTT_MS / 2 milliseconds after it was read, so a request and its answer take at least
RTT_MS between the two ends, as over a long network path.  The kernel's own loopback RTT stays tiny:
this is the delay an application sees (requests to blocks), not one TCP measures.  It stops reading a
side while more than QUEUE_CAP bytes of it wait to be written (backpressure), and runs until it is
sent SIGTERM.

``--udp`` (uTP, BEP 29): the same for datagrams.  Each source address that sends to the relay gets a
socket of its own toward the target, and what comes back on it goes to that source; every datagram
either way is sent RTT_MS / 2 later, none dropped (at most QUEUE_CAP bytes wait per direction; past that
the relay stops reading and the kernel's socket buffers drop, as a full router queue would).

This kernel has no ``netem`` qdisc, hence a relay.  Its CPU time is its own process's, not the
measured client's.  Only loopback addresses are used (the target must be on 127.0.0.0/8).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import selectors
import socket
import sys
import time

CHUNK = 64 * 1024
QUEUE_CAP = 16 * 1024 * 1024


class Half:
    """One direction of a relayed connection: bytes read from ``src``, due for ``dst`` at a time."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.queue: collections.deque[tuple[float, memoryview]] = collections.deque()
        self.queued = 0
        self.eof = False  # src closed: shut dst's write side once the queue is empty


class Relay:
    """Accepts on ``listener`` and relays each connection to ``target`` with ``delay_s`` each way."""

    def __init__(self, listener: socket.socket, target: tuple[str, int], delay_s: float) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener = listener
        self.target = target
        self.delay_s = delay_s
        self.halves: list[Half] = []
        self.sel.register(listener, selectors.EVENT_READ, None)

    def run(self) -> None:
        while True:  # until SIGTERM
            now = time.monotonic()
            due = min((h.queue[0][0] for h in self.halves if h.queue), default=now + 1.0)
            for key, _ in self.sel.select(max(0.0, min(due - now, 1.0))):
                if key.data is None:
                    self.accept()
                else:
                    self.read(key.data)
            self.write_due(time.monotonic())

    def accept(self) -> None:
        a, _ = self.listener.accept()
        try:
            b = socket.create_connection(self.target, timeout=5)
        except OSError:
            a.close()
            return
        for s in (a, b):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ab, ba = Half(a, b), Half(b, a)
        self.halves += [ab, ba]
        self.sel.register(a, selectors.EVENT_READ, ab)
        self.sel.register(b, selectors.EVENT_READ, ba)

    def read(self, h: Half) -> None:
        try:
            data = h.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            h.eof = True
            self.sel.unregister(h.src)
            return
        h.queue.append((time.monotonic() + self.delay_s, memoryview(data)))
        h.queued += len(data)
        if h.queued > QUEUE_CAP:
            self.sel.unregister(h.src)  # backpressure: read again once written

    def write_due(self, now: float) -> None:
        for h in list(self.halves):
            while h.queue and h.queue[0][0] <= now:
                t, data = h.queue[0]
                try:
                    n = h.dst.send(data)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self.close(h)
                    break
                h.queued -= n
                if n < len(data):
                    h.queue[0] = (t, data[n:])
                    break
                h.queue.popleft()
                if h.queued <= QUEUE_CAP and not h.eof and h.src.fileno() >= 0:
                    try:
                        self.sel.get_key(h.src)
                    except KeyError:
                        self.sel.register(h.src, selectors.EVENT_READ, h)
            if h.eof and not h.queue and h in self.halves:
                try:
                    h.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.halves.remove(h)
                if not any(o.src is h.dst for o in self.halves):  # the other way is done too
                    h.src.close()
                    h.dst.close()

    def close(self, h: Half) -> None:
        for o in [o for o in self.halves if o.src in (h.src, h.dst)]:
            self.halves.remove(o)
            try:
                self.sel.unregister(o.src)
            except (KeyError, ValueError):
                pass
        h.src.close()
        h.dst.close()


class UdpRelay:
    """Datagrams from clients to ``target`` and back, each ``delay_s`` later."""

    def __init__(self, sock: socket.socket, target: tuple[str, int], delay_s: float) -> None:
        self.sel = selectors.DefaultSelector()
        self.sock = sock  # the clients' side
        self.target = target
        self.delay_s = delay_s
        self.upstream: dict[tuple[str, int], socket.socket] = {}  # client address -> its socket to the target
        # (due, socket to send on, datagram, destination), in arrival order; one delay, so due times rise
        self.queue: collections.deque[tuple[float, socket.socket, bytes, tuple[str, int]]] = collections.deque()
        self.queued = 0
        self.sel.register(sock, selectors.EVENT_READ, None)

    def run(self) -> None:
        while True:  # until SIGTERM
            now = time.monotonic()
            due = self.queue[0][0] if self.queue else now + 1.0
            for key, _ in self.sel.select(max(0.0, min(due - now, 1.0))):
                self.read(key.fileobj, key.data)  # type: ignore[arg-type]
            self.write_due(time.monotonic())

    def read(self, sock: socket.socket, client: tuple[str, int] | None) -> None:
        for _ in range(64):
            if self.queued > QUEUE_CAP:
                return
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if client is None:  # from a client: toward the target on its own socket
                up = self.upstream.get(addr)
                if up is None:
                    up = self.upstream[addr] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    up.bind(("127.0.0.1", 0))
                    up.setblocking(False)
                    self.sel.register(up, selectors.EVENT_READ, addr)
                self.queue.append((time.monotonic() + self.delay_s, up, data, self.target))
            else:  # from the target: back to the client it belongs to
                self.queue.append((time.monotonic() + self.delay_s, self.sock, data, client))
            self.queued += len(data)

    def write_due(self, now: float) -> None:
        q = self.queue
        while q and q[0][0] <= now:
            _, sock, data, dest = q.popleft()
            self.queued -= len(data)
            try:
                sock.sendto(data, dest)
            except OSError:
                pass  # a full socket buffer: lost, as on a congested link


def main(argv: list[str]) -> int:
    udp = "--udp" in argv
    argv = [a for a in argv if a != "--udp"]
    host, port = argv[0].rsplit(":", 1)
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("delayrelay: the target must be a loopback address")
    rtt_ms = float(argv[1])
    if udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
        UdpRelay(sock, (host, int(port)), rtt_ms / 2000.0).run()
        return 0
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    Relay(listener, (host, int(port)), rtt_ms / 2000.0).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
