"""Small tools the benchmark runs inside workload namespaces (`python -m routed_nv.bench.tools`).

Standard library only, so that each start costs a bare interpreter (~0.2 s in the UML guest).
- rr-serve / rr-client: TCP request/response latency, like netperf TCP_RR: one request of
  `size` bytes in flight, echoed back, TCP_NODELAY; prints the round trips in microseconds.
- announce: what a booting or migrated guest puts on its link besides the kernel's own DAD,
  MLD and RS: a gratuitous ARP for its IPv4 address and a DAD probe for its global IPv6 address.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time
from pathlib import Path

WARMUP = 20  # first transactions resolve neighbours and open the congestion window
ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
BROADCAST = b"\xff" * 6
CARRIER_TIMEOUT_S = 2.0
ANNOUNCE_FIRST_S, ANNOUNCE_STEP_S = 0.05, 0.1


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def rr_serve(port: int, size: int) -> None:
    with socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True) as srv:
        while True:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                try:
                    while True:
                        conn.sendall(_recv_exactly(conn, size))
                except ConnectionError:
                    continue


def rr_client(address: str, port: int, size: int, count: int) -> list[float]:
    message = b"x" * size
    rtts = []
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(WARMUP + count):
            start = time.perf_counter_ns()
            sock.sendall(message)
            _recv_exactly(sock, size)
            if i >= WARMUP:
                rtts.append((time.perf_counter_ns() - start) / 1000)
    return rtts


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def garp(mac: bytes, ipv4: ipaddress.IPv4Address) -> bytes:
    """Gratuitous ARP request: sender and target are the announced address."""
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ipv4.packed + b"\0" * 6 + ipv4.packed
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def dad_probe(mac: bytes, target: ipaddress.IPv6Address) -> bytes:
    """Neighbour solicitation from :: to the target's solicited-node group (RFC 4862 §5.4.2)."""
    group = ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + target.packed[-3:])
    source = ipaddress.IPv6Address("::")
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed
    pseudo = source.packed + group.packed + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + source.packed + group.packed
    ether = b"\x33\x33" + group.packed[-4:] + mac + struct.pack("!H", ETH_P_IPV6)
    return ether + ip6 + body


def _wait_for_carrier(ifname: str) -> None:
    # A veth whose peer just moved namespaces is without carrier for a moment, and a device
    # without carrier drops what it is given. A guest's virtual NIC never loses it.
    carrier = Path(f"/sys/class/net/{ifname}/carrier")
    deadline = time.monotonic() + CARRIER_TIMEOUT_S
    while carrier.read_text().strip() != "1" and time.monotonic() < deadline:
        time.sleep(0.01)


def announce(ifname: str, ipv4: str | None, ipv6: str | None, rounds: int) -> None:
    """Send the announcements `rounds` times, spaced like QEMU's announce-self after a live
    migration (50 ms, then 100 ms more each round)."""
    address = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    mac = bytes.fromhex(address.replace(":", ""))
    frames = [garp(mac, ipaddress.IPv4Address(ipv4))] if ipv4 else []
    frames += [dad_probe(mac, ipaddress.IPv6Address(ipv6))] if ipv6 else []
    _wait_for_carrier(ifname)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for i in range(rounds):
            if i:
                time.sleep(ANNOUNCE_FIRST_S + ANNOUNCE_STEP_S * (i - 1))
            for frame in frames:
                sock.send(frame)


def command(tool: str, *args: str) -> list[str]:
    """The command line that runs one of these tools (for callers outside the workload)."""
    return [sys.executable, "-m", "routed_nv.bench.tools", tool, *args]


def announce_argv(
    ifname: str, ipv4: str | None = None, ipv6: str | None = None, rounds: int = 1
) -> list[str]:
    options = (["--ipv4", ipv4] if ipv4 else []) + (["--ipv6", ipv6] if ipv6 else [])
    return command("announce", ifname, "--rounds", str(rounds), *options)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m routed_nv.bench.tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    serve = sub.add_parser("rr-serve")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--size", type=int, required=True)
    client = sub.add_parser("rr-client")
    client.add_argument("address")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--size", type=int, required=True)
    client.add_argument("--count", type=int, required=True)
    ann = sub.add_parser("announce")
    ann.add_argument("ifname")
    ann.add_argument("--ipv4")
    ann.add_argument("--ipv6")
    ann.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.tool == "rr-serve":
        rr_serve(args.port, args.size)
    elif args.tool == "rr-client":
        print(json.dumps(rr_client(args.address, args.port, args.size, args.count)))
    else:
        announce(args.ifname, args.ipv4, args.ipv6, args.rounds)


if __name__ == "__main__":
    main()
