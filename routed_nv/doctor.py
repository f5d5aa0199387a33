"""The facts behind `routed-nv doctor`: what this machine's kernel and tools provide.

The facts are read here (files and two subprocesses); the judgement is in
`routed_nv.kernel_features`. The lab calls `datapath_ready()` to decide whether it must run inside
user-mode-linux.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from routed_nv.esp.xfrm import IprouteXfrm, Op, Verb, XfrmError
from routed_nv.kernel_features import (
    MachineFacts,
    Report,
    evaluate,
    loadable_plugins,
)
from routed_nv.model.protection import Protection, suite
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import XfrmState

CHARON = Path("/usr/lib/ipsec/charon")
CHARON_PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
UML_MODULES = Path("/usr/lib/uml/modules")
OS_RELEASE = Path("/etc/os-release")
# The scratch namespace of the protection probe (its pid appended), and its test SAs' SPIs.
PROBE_NETNS_PREFIX = "rnv-probe-"
PROBE_SPI = 0x100
DEBIAN_VERSION = Path("/etc/debian_version")
# Tools live in sbin, which an unprivileged PATH often lacks.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _version(program: str | None, flag: str) -> str:
    """What `program flag` prints (either stream), or "" when it cannot be run."""
    if program is None:
        return ""
    try:
        done = subprocess.run(
            [program, flag], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def distribution(os_release: str, debian_version: str) -> str:
    """ "Debian GNU/Linux 13 (trixie), 13.1": os-release's name and Debian's point release."""
    fields = dict(line.split("=", 1) for line in os_release.splitlines() if "=" in line)
    name = fields.get("PRETTY_NAME", "").strip().strip('"')
    point = debian_version.strip()
    return ", ".join(part for part in (name, point) if part)


def _charon_plugins() -> frozenset[str]:
    prefix, suffix = "libstrongswan-", ".so"
    if not CHARON_PLUGIN_DIR.is_dir():
        return frozenset()
    return frozenset(
        p.name[len(prefix) : -len(suffix)]
        for p in CHARON_PLUGIN_DIR.iterdir()
        if p.name.startswith(prefix) and p.name.endswith(suffix)
    )


def lab_plugins() -> list[str]:
    """The charon plugins the lab loads on this machine: what exists of the list it wants."""
    return loadable_plugins(_charon_plugins())


def probe_protection() -> tuple[tuple[Protection, str | None], ...] | None:
    """Adds one SA per protection mode in a scratch network namespace, where it harms nothing
    (the kernel loads what it needs on the way): None for each mode it took, else its error.
    None when no namespace can be made (not root, no `ip`)."""
    netns = f"{PROBE_NETNS_PREFIX}{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", netns], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if made.returncode != 0:
        return None
    try:
        loopback = ipaddress.IPv6Address("::1")
        ops = []
        for index, mode in enumerate(Protection):
            cipher = suite(mode)
            state = XfrmState(
                src=loopback,
                dst=loopback,
                spi=PROBE_SPI + index,
                reqid=0,
                key_material=Secret(bytes(cipher.key_bytes)),
                algorithm=cipher.algorithm,
                icv_bits=cipher.icv_bits,
                aead=cipher.aead,
            )
            ops.append(Op(Verb.ADD, state))
        failed = {id(f.op): f.message for f in IprouteXfrm(netns).apply(ops)}
        return tuple((mode, failed.get(id(op))) for mode, op in zip(Protection, ops, strict=True))
    except XfrmError as exc:
        return tuple((mode, str(exc)) for mode in Protection)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)


def kernel_facts() -> MachineFacts:
    """The kernel's facts alone (modules, /proc/crypto, the protection modes' test SAs): no
    other tools, for `config check`."""
    release = os.uname().release
    modules_dir = Path("/lib/modules") / release
    sys_module = Path("/sys/module")
    return MachineFacts(
        release=release,
        loaded_modules=frozenset(p.name for p in sys_module.iterdir())
        if sys_module.is_dir()
        else frozenset(),
        modules_builtin=_read(modules_dir / "modules.builtin"),
        modules_dep=_read(modules_dir / "modules.dep"),
        proc_crypto=_read(Path("/proc/crypto")),
        xfrm_probe=probe_protection(),
    )


def gather_facts() -> MachineFacts:
    return replace(
        kernel_facts(),
        iptables_version=_version(_which("iptables"), "-V"),
        iptables_legacy=_which("iptables-legacy-restore"),
        charon=str(CHARON) if os.access(CHARON, os.X_OK) else None,
        bird=_which("bird"),
        birdc=_which("birdc"),
        linux_uml=_which("linux.uml"),
        uml_module_releases=tuple(sorted(p.name for p in UML_MODULES.iterdir()))
        if UML_MODULES.is_dir()
        else (),
        distribution=distribution(_read(OS_RELEASE), _read(DEBIAN_VERSION)),
        bird_version=_version(_which("bird"), "--version"),
        charon_version=_version(str(CHARON) if os.access(CHARON, os.X_OK) else None, "--version"),
        charon_plugins=_charon_plugins(),
    )


def diagnose() -> Report:
    return evaluate(gather_facts())


def datapath_ready() -> tuple[bool, list[str]]:
    """Whether this kernel has everything the datapath needs, and the names of what it lacks."""
    report = diagnose()
    return report.datapath_ready, report.missing
