"""Parsers for what the benchmark's tools print, and the statistics on top (pure)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Iperf:
    bits_per_second: float
    bytes: int
    retransmits: int


def iperf3(text: str) -> Iperf:
    """`iperf3 -J` client output: what the server received (the sender's side counts queued
    bytes too), and the sender's retransmissions."""
    data = json.loads(text)
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    received, sent = data["end"]["sum_received"], data["end"]["sum_sent"]
    return Iperf(received["bits_per_second"], received["bytes"], sent.get("retransmits", 0))


@dataclass(frozen=True)
class CpuTimes:
    busy: int  # jiffies not idle and not waiting for I/O, summed over CPUs
    total: int


def proc_stat(text: str) -> CpuTimes:
    """The aggregate `cpu` line of /proc/stat."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
            idle = values[3] + values[4]
            total = sum(values[:8])
            return CpuTimes(total - idle, total)
    raise ValueError("no cpu line in /proc/stat")


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: a value that was really observed."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*time=([\d.]+) ms")


def ping_replies(text: str) -> list[tuple[float, float]]:
    """`ping -D` output: (reception time, round-trip seconds) of every reply."""
    replies = []
    for line in text.splitlines():
        m = _PING_REPLY.match(line)
        if m:
            replies.append((float(m[1]), float(m[2]) / 1000))
    return replies


def first_reply_sent_after(replies: Iterable[tuple[float, float]], t: float) -> float | None:
    """Reception time of the first reply to a request sent after t."""
    return min((rx for rx, rtt in replies if rx - rtt > t), default=None)


def xfrm_counts(state_count: str, policy_count: str) -> tuple[int, int]:
    """`ip xfrm state count` ("SAD count N") and `ip xfrm policy count` ("SPD IN a OUT b FWD c")."""
    sas = re.search(r"SAD count (\d+)", state_count)
    spd = re.search(r"SPD IN\s+(\d+)\s+OUT\s+(\d+)\s+FWD\s+(\d+)", policy_count)
    if sas is None or spd is None:
        raise ValueError(f"unexpected xfrm counts: {state_count!r} {policy_count!r}")
    return int(sas[1]), sum(int(v) for v in spd.groups())


def vxlan_fdb_entries(text: str) -> int:
    """`bridge fdb show dev <vxlan>`: entries that point at a remote host (flood list + MACs)."""
    return sum(" dst " in f" {line} " for line in text.splitlines())


def crypto_drivers(text: str, names: Iterable[str]) -> dict[str, list[str]]:
    """/proc/crypto: the driver of every registered implementation of each named algorithm."""
    wanted = set(names)
    found: dict[str, list[str]] = {n: [] for n in wanted}
    for block in text.split("\n\n"):
        pairs = (line.partition(":") for line in block.splitlines())
        fields = {k.strip(): v.strip() for k, _, v in pairs}
        if fields.get("name") in wanted and "driver" in fields:
            found[fields["name"]].append(fields["driver"])
    return found


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def openssl_speed(text: str) -> float:
    """`openssl speed -mr -bytes N -evp ALG`: bytes per second, from its `+F:` line
    (`+F:<n>:<algorithm>:<bytes/s at N>`)."""
    for line in text.splitlines():
        if line.startswith("+F:"):
            return float(line.rsplit(":", 1)[1])
    raise ValueError("openssl speed printed no +F: line")


def cpu_busy(before: str, after: str) -> list[float]:
    """Per CPU (`cpuN` lines of two /proc/stat readings): the fraction of time not idle."""

    def per_cpu(text: str) -> dict[str, CpuTimes]:
        lines = [line for line in text.splitlines() if re.match(r"cpu\d+ ", line)]
        return {line.split()[0]: proc_stat("cpu " + line.split(" ", 1)[1]) for line in lines}

    a, b = per_cpu(before), per_cpu(after)
    return [
        round((b[c].busy - a[c].busy) / max(b[c].total - a[c].total, 1), 3)
        for c in sorted(b, key=lambda name: int(name[3:]))
        if c in a
    ]


def esp_algorithms(xfrm_state: str) -> list[str]:
    """`ip xfrm state`: the distinct algorithms of the SAs (`aead rfc4106(gcm(aes)) ...`,
    `enc ecb(cipher_null) ...`), as `kind name`."""
    found = re.findall(r"^\s+(aead|enc|auth|auth-trunc) (\S+)", xfrm_state, re.MULTILINE)
    return sorted({f"{kind} {name}" for kind, name in found})
