"""What a machine provides for routed_nv, decided from raw facts (pure logic, no I/O).

`routed_nv.doctor` gathers the facts (files under /proc, /sys and /lib/modules, `iptables -V`,
binary paths); this module only parses and judges them, so every rule is unit-tested with fakes.
A kernel module counts as available when it is loaded, built in, or loadable (in modules.dep).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from routed_nv.model.protection import Protection

# Kernel modules the datapath needs, by the feature name doctor reports.
DATAPATH_MODULES = ("esp4", "esp6", "xfrm_user", "vrf", "ip6_tunnel")
# ip6_tunnel routes IPv4 over an NBMA (remote any) tunnel since Linux 5.18.
NBMA_IPV4_MIN_RELEASE = (5, 18)
GCM_ALGORITHMS = ("rfc4106(gcm(aes))", "gcm(aes)")
# What ESP in each protection mode needs: (/proc/crypto name, the module that provides it). A
# requirement is met when the name is registered (a template shows there only once something
# used it) or the module is available. ESP without an ICV runs as
# authenc(digest_null,ecb(cipher_null)); cipher_null is usually built in.
PROTECTION_NEEDS: dict[Protection, tuple[tuple[str, str], ...]] = {
    Protection.AES_GCM: (("rfc4106(gcm(aes))", "gcm"),),
    Protection.CHACHA20_POLY1305: (("rfc7539esp(chacha20,poly1305)", "chacha20poly1305"),),
    Protection.INTEGRITY: (("rfc4543(gcm(aes))", "gcm"),),
    Protection.NONE: (
        ("ecb(cipher_null)", "crypto_null"),
        ("authenc(digest_null,ecb(cipher_null))", "authenc"),
    ),
}

_MODULE_SUFFIX = re.compile(r"\.ko(\.(xz|zst|gz))?$")
_RELEASE = re.compile(r"^(\d+)\.(\d+)")
_IPTABLES_VERSION = re.compile(r"iptables v(?P<version>[\d.]+)(?: \((?P<backend>[\w-]+)\))?")


@dataclass(frozen=True)
class MachineFacts:
    """Everything doctor reads from the machine, as raw text and paths."""

    release: str  # uname -r
    loaded_modules: frozenset[str] = frozenset()  # names under /sys/module
    modules_builtin: str = ""  # /lib/modules/<release>/modules.builtin
    modules_dep: str = ""  # /lib/modules/<release>/modules.dep
    proc_crypto: str = ""  # /proc/crypto
    iptables_version: str = ""  # `iptables -V` output, empty when iptables is absent
    iptables_legacy: str | None = None  # path of iptables-legacy-restore
    charon: str | None = None  # path of the charon daemon
    bird: str | None = None
    birdc: str | None = None
    linux_uml: str | None = None
    uml_module_releases: tuple[str, ...] = ()  # directories under /usr/lib/uml/modules
    distribution: str = ""  # PRETTY_NAME of /etc/os-release (+ /etc/debian_version)
    bird_version: str = ""  # `bird --version`
    charon_version: str = ""  # `charon --version`
    charon_plugins: frozenset[str] = frozenset()  # names of the installed charon plugins
    # Each protection mode's test SA in a scratch netns: (mode, None if the kernel took it, else
    # its error); None when no scratch netns could be made (not root): the modules decide then.
    xfrm_probe: tuple[tuple[Protection, str | None], ...] | None = None


@dataclass(frozen=True)
class Feature:
    name: str
    ok: bool
    detail: str
    needed: bool = False  # needed by the datapath; a missing one makes doctor fail


@dataclass(frozen=True)
class Report:
    features: tuple[Feature, ...]

    @property
    def missing(self) -> list[str]:
        """Names of the datapath features this machine lacks."""
        return [f.name for f in self.features if f.needed and not f.ok]

    @property
    def datapath_ready(self) -> bool:
        return not self.missing


def module_names(listing: str) -> set[str]:
    """Module names from modules.builtin or modules.dep text (path before any ':')."""
    names = set()
    for line in listing.splitlines():
        path = line.split(":", 1)[0].strip()
        if path:
            names.add(normalize_module(_MODULE_SUFFIX.sub("", path.rsplit("/", 1)[-1])))
    return names


def normalize_module(name: str) -> str:
    # modprobe treats '-' and '_' alike; /sys/module always uses '_'.
    return name.replace("-", "_")


def crypto_names(proc_crypto: str) -> set[str]:
    return {
        line.split(":", 1)[1].strip()
        for line in proc_crypto.splitlines()
        if line.startswith("name") and ":" in line
    }


def parse_release(release: str) -> tuple[int, int] | None:
    match = _RELEASE.match(release)
    return (int(match[1]), int(match[2])) if match else None


def iptables_backend(version_output: str) -> str | None:
    """'legacy' or 'nf_tables' from `iptables -V`; versions before 1.8 only had legacy."""
    match = _IPTABLES_VERSION.search(version_output)
    if not match:
        return None
    return match["backend"] or "legacy"


class _Modules:
    def __init__(self, facts: MachineFacts) -> None:
        self.loaded = {normalize_module(m) for m in facts.loaded_modules}
        self.builtin = module_names(facts.modules_builtin)
        self.loadable = module_names(facts.modules_dep)
        self.release = facts.release

    def status(self, name: str) -> tuple[bool, str]:
        if name in self.loaded:
            return True, "loaded"
        if name in self.builtin:
            return True, "built in"
        if name in self.loadable:
            return True, "loadable module"
        return False, f"not built in, loaded or loadable on {self.release}"


def evaluate(facts: MachineFacts) -> Report:
    modules = _Modules(facts)
    features = [Feature("distribution", bool(facts.distribution), facts.distribution or "unknown")]
    features += [_module_feature(modules, name) for name in DATAPATH_MODULES]
    features += [
        _nbma_feature(facts, modules),
        _gcm_feature(facts, modules),
        *(
            Feature(f"protection {mode}", ok, detail)
            for mode, (ok, detail) in protection_support(facts).items()
        ),
        _iptables_feature(facts),
        _charon_feature(facts),
        _bird_feature(facts),
        _uml_feature(facts),
    ]
    return Report(tuple(features))


def loadable_plugins(installed: frozenset[str]) -> list[str]:
    """CHARON_PLUGINS that are installed, in load order."""
    return [name for name in CHARON_PLUGINS if name in installed]


def _module_feature(modules: _Modules, name: str) -> Feature:
    ok, detail = modules.status(name)
    return Feature(name, ok, detail, needed=True)


def _nbma_feature(facts: MachineFacts, modules: _Modules) -> Feature:
    name = "ip6tnl-nbma-ipv4"
    release = parse_release(facts.release)
    if release is None:
        return Feature(name, False, f"cannot parse kernel release {facts.release!r}", needed=True)
    need = ".".join(map(str, NBMA_IPV4_MIN_RELEASE))
    if release < NBMA_IPV4_MIN_RELEASE:
        return Feature(name, False, f"kernel {facts.release} < {need}", needed=True)
    tunnel_ok, _ = modules.status("ip6_tunnel")
    detail = f"kernel {facts.release} >= {need}" + ("" if tunnel_ok else ", but no ip6_tunnel")
    return Feature(name, tunnel_ok, detail, needed=True)


def _gcm_feature(facts: MachineFacts, modules: _Modules) -> Feature:
    registered = crypto_names(facts.proc_crypto)
    for algorithm in GCM_ALGORITHMS:
        if algorithm in registered:
            return Feature("gcm", True, f"{algorithm} in /proc/crypto", needed=True)
    # The template only shows in /proc/crypto once something instantiated it.
    ok, detail = modules.status("gcm")
    return Feature("gcm", ok, f"gcm template: {detail}", needed=True)


def protection_support(facts: MachineFacts) -> dict[Protection, tuple[bool, str]]:
    """Per protection mode: whether this kernel can do its ESP transform, and why (or not): the
    kernel's own answer to a test SA where there is one, else the crypto and modules it needs."""
    if facts.xfrm_probe is not None:
        return {
            mode: (True, "a test SA in a scratch netns was accepted")
            if error is None
            else (False, f"the kernel refused a test SA: {error}")
            for mode, error in facts.xfrm_probe
        }
    modules = _Modules(facts)
    registered = crypto_names(facts.proc_crypto)
    support = {}
    for mode, needs in PROTECTION_NEEDS.items():
        found = {
            name: " in /proc/crypto" if name in registered else f": {module} {status}"
            for name, module in needs
            for ok, status in [modules.status(module)]
            if name in registered or ok
        }
        missing = [
            f"{name} (module {module}: {modules.status(module)[1]})"
            for name, module in needs
            if name not in found
        ]
        if missing:
            support[mode] = (False, "missing " + ", ".join(missing))
        else:
            support[mode] = (True, ", ".join(f"{name}{where}" for name, where in found.items()))
    return support


def _iptables_feature(facts: MachineFacts) -> Feature:
    backend = iptables_backend(facts.iptables_version)
    if backend is None and not facts.iptables_legacy:
        return Feature("iptables", False, "iptables not found")
    match = _IPTABLES_VERSION.search(facts.iptables_version)
    version = f"v{match['version']}, " if match else ""
    default = f"{version}default backend {backend}" if backend else "no iptables command"
    how = "routed_nv programs the legacy tables with iptables-legacy-restore"
    if facts.iptables_legacy:
        return Feature("iptables", True, f"{default}; {how} ({facts.iptables_legacy})")
    return Feature("iptables", False, f"{default}; no iptables-legacy-restore, and {how}")


def _charon_feature(facts: MachineFacts) -> Feature:
    if facts.charon is None:
        return Feature("charon", False, "strongSwan's IKE daemon not found")
    version = _first_line(facts.charon_version).removeprefix("Linux ")
    loaded = loadable_plugins(facts.charon_plugins)
    absent = [name for name in CHARON_PLUGINS if name not in facts.charon_plugins]
    detail = f"{version or 'version unknown'}, {facts.charon}; plugins the lab loads: " + (
        " ".join(loaded) or "none"
    )
    if absent:
        # strongSwan 6 folded aes, sha1, sha2, hmac, kdf, curve25519 and gmp into openssl
        detail += f" (not installed: {' '.join(absent)})"
    return Feature("charon", True, detail)


def _bird_feature(facts: MachineFacts) -> Feature:
    missing = [n for n, p in (("bird", facts.bird), ("birdc", facts.birdc)) if p is None]
    if missing:
        return Feature("bird", False, f"{', '.join(missing)} not found")
    version = _first_line(facts.bird_version)
    return Feature("bird", True, f"{version or 'version unknown'}, {facts.bird}, {facts.birdc}")


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def _uml_feature(facts: MachineFacts) -> Feature:
    if facts.linux_uml is None:
        return Feature("user-mode-linux", False, "linux.uml not found")
    if not facts.uml_module_releases:
        return Feature("user-mode-linux", False, f"{facts.linux_uml}, but no modules")
    return Feature(
        "user-mode-linux",
        True,
        f"{facts.linux_uml}, kernel {', '.join(facts.uml_module_releases)}",
    )


# What the lab's charon loads, where installed: kdf is needed by charon 5.9's key derivation;
# strongSwan 6 (Debian 13) has no aes, sha1, sha2, hmac, kdf, curve25519 and gmp plugins any more
# (openssl provides them); gcm, curve25519 and openssl come with libstrongswan-standard-plugins.
CHARON_PLUGINS = (
    *("random", "nonce", "aes", "sha1", "sha2", "hmac", "kdf", "gcm", "curve25519", "openssl"),
    *("gmp", "pem", "pkcs1", "pkcs8", "x509", "pubkey", "constraints", "revocation"),
    *("kernel-netlink", "socket-default", "vici"),
)


TABLE_HEADERS = ["FEATURE", "STATUS", "DETAIL"]


def table_rows(rows: Iterable[Feature]) -> list[list[str]]:
    """The human table's rows (TABLE_HEADERS): feature, status, detail."""
    return [
        [f.name, "ok" if f.ok else ("missing" if f.needed else "missing (optional)"), f.detail]
        for f in rows
    ]
