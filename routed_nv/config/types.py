"""Annotated field types whose errors read `<value> is ...`, so problem lines need no rewording."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


def int_range(lo: int, hi: int) -> AfterValidator:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"is out of range {lo}..{hi}")
        return value

    return AfterValidator(check)


_ADDRESSES = (ipaddress.IPv4Address, ipaddress.IPv6Address)
_NETWORKS = (ipaddress.IPv4Network, ipaddress.IPv6Network)


def _ip_address(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("is not an IPv4 or IPv6 address") from None
    if not isinstance(value, _ADDRESSES):  # pydantic would take `true` or 5 as 0.0.0.1, 0.0.0.5
        raise ValueError("is not an IPv4 or IPv6 address (a string)")
    return value


def _v6_address(value: Any) -> Any:
    addr = _ip_address(value)
    if isinstance(value, str) and addr.version != 6:
        raise ValueError("is not an IPv6 address")
    return addr


def _network(version: int | None) -> Any:
    def parse(value: Any) -> Any:
        if isinstance(value, _NETWORKS):
            return value
        if not isinstance(value, str):
            raise ValueError(f"is not an IPv{version or '4/IPv6'} network (a string)")
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                raise ValueError("has host bits set") from None
            raise ValueError(f"is not an IPv{version or '4/IPv6'} network") from None
        if version is not None and net.version != version:
            raise ValueError(f"is not an IPv{version} network")
        return net

    return parse


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("is not a valid name (a-z, 0-9, '-', '_', at most 32 characters)")
    return value


def _ifname(value: str) -> str:
    if not _IFNAME.match(value):
        raise ValueError("is not a valid interface name (at most 15 characters)")
    return value


def parse_listen_address(address: str) -> tuple[str, int]:
    """ "127.0.0.1:9573" or "[::1]:9573" -> (host, port); ValueError when it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _absolute(value: Path) -> Path:
    # the agent runs from / under systemd, but `routed-nv apply` from anywhere: one meaning only
    if not value.is_absolute():
        raise ValueError("is not an absolute path")
    return value


def _listen_address(value: str) -> str:
    if value != "off":
        parse_listen_address(value)
    return value


IPAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, BeforeValidator(_ip_address)]
IPv6Address = Annotated[ipaddress.IPv6Address, BeforeValidator(_v6_address)]
IPv4Network = Annotated[ipaddress.IPv4Network, BeforeValidator(_network(4))]
IPv6Network = Annotated[ipaddress.IPv6Network, BeforeValidator(_network(6))]
Name = Annotated[str, AfterValidator(_name)]
IfName = Annotated[str, AfterValidator(_ifname)]
TenantId = Annotated[int, int_range(1, 65535)]
HostId = Annotated[int, int_range(1, 16383)]  # the sender slot of the SPI plan (14 bits)
GenerationNumber = Annotated[int, int_range(0, 3)]  # a static key generation (the SPI's 2 bits)
Asn = Annotated[int, int_range(1, 4294967294)]
Mtu = Annotated[int, int_range(1280, 65535)]
ListenAddress = Annotated[str, AfterValidator(_listen_address)]  # HOST:PORT, or "off"
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
# IKE timers in seconds. charon takes any 32-bit count (0 turns a rekey off); a rekey is
# mandatory here (keys must rotate), and below a minute rekeys of many peers would pile up.
RekeySeconds = Annotated[int, int_range(60, 30 * 86400)]
DpdSeconds = Annotated[int, int_range(0, 3600)]  # 0: no dead peer detection
