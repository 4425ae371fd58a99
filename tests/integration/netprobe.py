#!/usr/bin/env python3
"""Tiny TCP/UDP probes for the NAT harness (tests/integration/natnet.py), run inside a namespace.

  netprobe.py serve PORT         listen on 0.0.0.0:PORT, TCP and UDP. stdout, one JSON object a line:
                                 {"ready": port}, then {"event": "tcp", "ip", "port"} per accepted
                                 connection (closed at once) and {"event": "udp", "ip", "port",
                                 "data"} per datagram, which is echoed back from PORT as "re:" + data
                                 (unless it is an echo itself).
                                 stdin, one command a line: "send IP PORT TEXT" sends a datagram from
                                 PORT (opens a NAT mapping from the serving socket). EOF: exit.
  netprobe.py tcp IP PORT [--sport N] [--timeout S]
                                 connect once; prints {"ok": true, "local": [ip, port]} or {"ok": false,
                                 "error": "..."}; exit 0 either way.
  netprobe.py udp IP PORT [--sport N] [--timeout S] [--data TEXT]
                                 send one datagram and wait for one reply; prints {"ok": true, "from":
                                 [ip, port], "data": "..."} or {"ok": false, "error": "timeout"}.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys

ECHO_PREFIX = b"re:"


def emit(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


def serve(port: int) -> int:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    emit({"ready": port})
    stdin = sys.stdin.fileno()
    pending = b""
    while True:
        ready, _, _ = select.select([tcp, udp, stdin], [], [])
        if tcp in ready:
            conn, (ip, rport) = tcp.accept()
            conn.close()
            emit({"event": "tcp", "ip": ip, "port": rport})
        if udp in ready:
            data, (ip, rport) = udp.recvfrom(2048)
            emit({"event": "udp", "ip": ip, "port": rport, "data": data.decode("utf-8", "replace")})
            if not data.startswith(ECHO_PREFIX):  # two servers must not echo each other forever
                udp.sendto(ECHO_PREFIX + data, (ip, rport))
        if stdin in ready:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                parts = line.decode().split(" ", 3)
                if len(parts) == 4 and parts[0] == "send":
                    udp.sendto(parts[3].encode(), (parts[1], int(parts[2])))
                    emit({"event": "sent", "ip": parts[1], "port": int(parts[2])})


def probe_tcp(ip: str, port: int, sport: int, timeout: float) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(timeout)
    try:
        if sport:
            s.bind(("0.0.0.0", sport))
        s.connect((ip, port))
        return {"ok": True, "local": list(s.getsockname())}
    except OSError as e:
        return {"ok": False, "error": str(e) or type(e).__name__}
    finally:
        s.close()


def probe_udp(ip: str, port: int, sport: int, timeout: float, data: str) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.bind(("0.0.0.0", sport))
        s.sendto(data.encode(), (ip, port))
        reply, addr = s.recvfrom(2048)
        return {"ok": True, "from": list(addr), "data": reply.decode("utf-8", "replace")}
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except OSError as e:
        return {"ok": False, "error": str(e) or type(e).__name__}
    finally:
        s.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("port", type=int)
    for name in ("tcp", "udp"):
        c = sub.add_parser(name)
        c.add_argument("ip")
        c.add_argument("port", type=int)
        c.add_argument("--sport", type=int, default=0)
        c.add_argument("--timeout", type=float, default=1.0)
        if name == "udp":
            c.add_argument("--data", default="probe")
    ns = p.parse_args(argv)
    if ns.cmd == "serve":
        return serve(ns.port)
    if ns.cmd == "tcp":
        emit(probe_tcp(ns.ip, ns.port, ns.sport, ns.timeout))
    else:
        emit(probe_udp(ns.ip, ns.port, ns.sport, ns.timeout, ns.data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
