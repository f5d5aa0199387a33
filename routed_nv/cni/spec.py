"""The CNI protocol as the plugin needs it (SPEC.md 1.1): environment, network config, error
and result shapes. Pure: nothing here touches the kernel or the agent."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from routed_nv.errors import RoutedNvError

Json = dict[str, Any]

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
NEW_VERBS = {"STATUS": "1.1.0", "GC": "1.1.0"}  # not defined before that version
PLUGIN_TYPE = "routed-nv"
DEFAULT_SOCKET = "/run/routed-nv/agent.sock"
DEFAULT_DATA_DIR = "/var/lib/cni/routed-nv"
DEFAULT_TIMEOUT_S = 30.0
WORKLOAD_IFNAME = "eth0"  # the agent names the container end eth0 (calc/routing.py)
GATEWAY4 = "169.254.0.1"  # docs/datapath.md: every workload's next hop is the host
GATEWAY6 = "fe80::1"

# SPEC.md "Error": the well-known codes; 100+ are the plugin's own
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_DISRUPTED = 51
ATTACHMENT_EXISTS = 100  # a second ADD for the same (container, ifname)
NOT_PROGRAMMED = 101  # the agent stored the endpoint but could not program it
CHECK_FAILED = 102  # CHECK found the attachment not as its ADD left it

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CniError(RoutedNvError):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> Json:
        out: Json = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class Request:
    command: str
    container_id: str
    netns: str  # CNI_NETNS as given ("" when DEL has none)
    ifname: str
    cni_path: tuple[str, ...]
    config: Json  # the network config from stdin, as decoded
    version: str
    name: str  # the network's name
    tenant: str
    socket: str
    data_dir: str
    timeout: float

    @property
    def endpoint_id(self) -> str:
        return endpoint_id(self.name, self.container_id, self.ifname)


def network_prefix(network: str) -> str:
    """Every endpoint of one network starts so (GC finds its own by it)."""
    return "cni-" + hashlib.sha256(network.encode()).hexdigest()[:6] + "-"


def endpoint_id(network: str, container_id: str, ifname: str) -> str:
    """The agent's endpoint id of an attachment: 31 characters a-z 0-9 '-', stable, so a DEL or
    GC finds it without state (a container id alone is 64 and the agent allows 32)."""
    attachment = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()[:20]
    return network_prefix(network) + attachment


def read_command(env: dict[str, str]) -> str:
    command = env.get("CNI_COMMAND", "")
    if command not in VERBS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(VERBS)}")
    return command


def decode(stdin: bytes) -> Json:
    try:
        config = json.loads(stdin)
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, f"network config on stdin is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin is not a JSON object")
    return config


def version_of(config: Json) -> str:
    version = config.get("cniVersion", "")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return str(version)


def parse(command: str, env: dict[str, str], config: Json) -> Request:
    """Every problem is a CniError naming the variable or field."""
    version = version_of(config)
    needed = NEW_VERBS.get(command)
    if needed and _key(version) < _key(needed):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {needed}, not {version}")
    for field in ("name", "tenant"):
        if not isinstance(config.get(field), str) or not config[field]:
            raise CniError(INVALID_CONFIG, f"network config: field {field!r} must be a string")
    if config.get("type") != PLUGIN_TYPE:
        raise CniError(INVALID_CONFIG, f"network config: type {config.get('type')!r} is not ours")
    ipam = config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CniError(INVALID_CONFIG, "network config: 'ipam' must be an object with a 'type'")
    if "/" in ipam["type"]:
        raise CniError(INVALID_CONFIG, f"network config: ipam.type {ipam['type']!r} is no name")
    for field in ("agentSocket", "dataDir"):
        value = config.get(field)
        if value is not None and not (isinstance(value, str) and value.startswith("/")):
            raise CniError(INVALID_CONFIG, f"network config: {field} {value!r} is no absolute path")
    timeout = config.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise CniError(INVALID_CONFIG, f"network config: timeout {timeout!r} is not in (0, 600]")
    container_id, netns, ifname = "", "", ""
    if command in ("ADD", "DEL", "CHECK"):
        container_id = env.get("CNI_CONTAINERID", "")
        if not _CONTAINER_ID.match(container_id):
            raise CniError(INVALID_ENV, f"CNI_CONTAINERID {container_id!r} is not a container id")
        ifname = env.get("CNI_IFNAME", "")
        if not ifname:
            raise CniError(INVALID_ENV, "CNI_IFNAME is not set")
        if ifname != WORKLOAD_IFNAME and command != "DEL":
            raise CniError(
                INVALID_ENV, f"CNI_IFNAME {ifname!r}: routed-nv names the container side eth0"
            )
        netns = env.get("CNI_NETNS", "")
        if command != "DEL" and not netns:
            raise CniError(INVALID_ENV, "CNI_NETNS is not set")
    if command != "STATUS" and not env.get("CNI_PATH"):  # every other verb runs the IPAM
        raise CniError(INVALID_ENV, "CNI_PATH is not set (where the IPAM plugin is)")
    return Request(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        cni_path=tuple(p for p in env.get("CNI_PATH", "").split(os.pathsep) if p),
        config=config,
        version=version,
        name=config["name"],
        tenant=config["tenant"],
        socket=config.get("agentSocket") or DEFAULT_SOCKET,
        data_dir=config.get("dataDir") or DEFAULT_DATA_DIR,
        timeout=float(timeout),
    )


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def ipam_addresses(ipam_result: Json) -> list[str]:
    """The addresses an IPAM result gives, without prefix length ("10.0.0.5/24" -> 10.0.0.5)."""
    out = []
    for ip in ipam_result.get("ips", []):
        try:
            out.append(str(ipaddress.ip_interface(ip["address"]).ip))
        except (KeyError, TypeError, ValueError):
            raise CniError(DECODE_FAILURE, f"IPAM result: bad ips entry {ip!r}") from None
    if not out:
        raise CniError(INVALID_CONFIG, "IPAM gave no address")
    return out


def add_result(
    req: Request, addresses: list[str], interfaces: list[Json], dns: Json | None
) -> Json:
    """The ADD result: the host side and eth0, each address as the datapath holds it (/32,
    /128, host style) with the host as gateway, a default route per family."""
    if req.version != "1.1.0":  # "mtu" is a 1.1 field
        interfaces = [{k: v for k, v in i.items() if k != "mtu"} for i in interfaces]
    ips, routes = [], []
    for a in addresses:
        ip = ipaddress.ip_address(a)
        gw = GATEWAY4 if ip.version == 4 else GATEWAY6
        entry: Json = {"address": f"{ip}/{ip.max_prefixlen}", "gateway": gw, "interface": 1}
        if req.version == "0.4.0":
            entry["version"] = str(ip.version)
        ips.append(entry)
        default = {"dst": "0.0.0.0/0" if ip.version == 4 else "::/0", "gw": gw}
        if default not in routes:
            routes.append(default)
    result: Json = {"cniVersion": req.version, "interfaces": interfaces, "ips": ips}
    result["routes"] = routes
    if dns:
        result["dns"] = dns
    return result


def valid_attachments(config: Json) -> list[tuple[str, str]]:
    valid = config.get("cni.dev/valid-attachments", [])
    if not isinstance(valid, list):
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    out = []
    for a in valid:
        if not isinstance(a, dict) or not isinstance(a.get("containerID"), str):
            raise CniError(INVALID_CONFIG, f"cni.dev/valid-attachments: bad entry {a!r}")
        out.append((a["containerID"], str(a.get("ifname", WORKLOAD_IFNAME))))
    return out
