"""Run a command inside a user-mode-linux kernel that has what this machine's kernel lacks.

Debian's `linux.uml` (6.1 on Debian 12, 6.12 on Debian 13) runs as an ordinary process with ESP,
VRF, ip6_tunnel and GCM as modules. The guest's root is this machine's filesystem (hostfs), so it
sees the same project, venv and binaries; /tmp, /run, /dev/shm and /lib/modules are private to the
guest, and the working directory is bound back in so results written there appear on the host.

The command's stdout and stderr go to files in a work directory on the host (hostfs writes go
straight through), which are streamed live to ours; the kernel console (its errors: UML's own
"ran out of memory on the host side" among them) goes to a log that is shown when the command
failed or the guest did not report. Exit status: the command's own, 124 on timeout, 125 when the
guest did not report one.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

IN_GUEST_ENV = "ROUTED_NV_IN_UML"  # set to 1 in the guest, so nothing boots a guest in a guest
DEFAULT_MEM = "512M"  # the guest needs ~50 MB; 256 MB runs three charons
DEFAULT_TIMEOUT = 600.0
EXIT_TIMEOUT = 124
EXIT_NO_REPORT = 125

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_MODULES = (
    "ipv6",
    "veth",
    "dummy",
    "tun",  # /dev/net/tun for the libvirt hook's taps (test_libvirt_kernel.py)
    "vrf",
    "ip6_tunnel",
    "tunnel6",
    "tunnel4",
    "esp6",
    "esp4",
    "xfrm_user",
    "xfrm_algo",
    "gcm",
    "ghash-generic",
    "ctr",
    "seqiv",
    "echainiv",
    "authenc",
    "authencesn",
    "hmac",
    "sha256_generic",
    "sha512_generic",
    "cbc",
    "aes_generic",
    # the other protection modes: rfc7539esp(chacha20,poly1305), and ecb(cipher_null)
    "chacha20poly1305",
    "chacha_generic",
    "poly1305_generic",
    "ecb",
    "ip6_tables",
    "ip6table_filter",
    "ip6table_mangle",
    "ip6table_raw",
    "ip_tables",
    "iptable_filter",
    "iptable_mangle",
    "iptable_raw",
    "xt_policy",
    "xt_mark",
    "xt_comment",
    "xt_addrtype",
    "vxlan",
    "bridge",
    "nf_conntrack",
)
# Lines linux.uml prints around the kernel's console output, and errors of every boot.
_CONSOLE_NOISE = (
    "reboot: ",
    "Powering off",
    "Checking ",
    "Core dump limits",
    "Linux version ",
    "Kernel command line",
    "SELinux: ",
    "mmapper_init - find_iomem failed",
    "Failed to initialize ubd device 0",
)
# UML kills a guest process when the host refuses it a mapping of one more guest page
HOST_MEMORY_ERROR = "UML ran out of memory on the host side"
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_POLL_S = 0.05
# reboot(2) with LINUX_REBOOT_CMD_POWER_OFF: `poweroff` is not on every system (a minimal Debian 13
# has none; init then exits and the guest panics), the interpreter the project runs on always is.
POWER_OFF = "exec /usr/bin/python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)'"
# UML switches its processes' FPU state through a buffer smaller than the XSAVE area of a host
# with AVX-512 or AMX, which the host refuses: the guest dies at once. Preloaded, this shim
# (compiled at each boot) gives each side the size it wants (see the file).
XSTATE_SHIM = Path(__file__).with_name("uml_xstate.c")
XSTATE_ERROR = "ptrace set fp regs failed"


def in_guest() -> bool:
    return os.environ.get(IN_GUEST_ENV) == "1"


def needs_uml() -> bool:
    """True when the datapath needs a kernel this one is not (and we are not in the guest)."""
    if in_guest():
        return False
    from routed_nv.doctor import datapath_ready

    return not datapath_ready()[0]


def guest_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The guest's environment: a minimal base plus ROUTED_NV_*, CI and TERM from ours."""
    env = {"PATH": GUEST_PATH, "HOME": "/root"}
    env.update(
        {k: v for k, v in environ.items() if k.startswith("ROUTED_NV_") or k in ("CI", "TERM")}
    )
    env[IN_GUEST_ENV] = "1"
    return env


def init_script(
    *,
    work: Path,
    cwd: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    interactive: bool = False,
    modules: Sequence[str] = GUEST_MODULES,
) -> str:
    """The guest's /sbin/init: private mounts, modules, the command, its status, power off."""
    q = shlex.quote
    stash = work / "cwd"
    if interactive:
        redirect = "</dev/console >/dev/console 2>&1"
    else:
        redirect = (
            f"<{q(str(work / 'stdin'))} >{q(str(work / 'stdout'))} 2>{q(str(work / 'stderr'))}"
        )
    lines = [
        "#!/bin/sh",
        *(f"export {k}={q(v)}" for k, v in env.items()),
        "mount -t proc proc /proc; mount -t sysfs sysfs /sys",
        "mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev",
        # Keep the working directory reachable even if it lives under a private mount.
        f"mkdir -p {q(str(stash))} && mount --bind {q(str(cwd))} {q(str(stash))}",
        "for d in /tmp /run /dev/shm; do mkdir -p $d; mount -t tmpfs tmpfs $d; done",
        f"mkdir -p {q(str(cwd))} && mount --bind {q(str(stash))} {q(str(cwd))}",
        'V=$(uname -r); M="/usr/lib/uml/modules/$V"',
        # A root without /lib/modules (a minimal system with no kernel of its own) has no mount
        # point for UML's modules, and making one would write to the host's filesystem: there,
        # modprobe reads them from a tree in our work directory, also when the kernel loads one.
        "if [ -d /lib/modules ]; then",
        '  mount -t tmpfs tmpfs /lib/modules; mkdir -p "/lib/modules/$V"',
        '  mount --bind "$M" "/lib/modules/$V"; MODPROBE=modprobe',
        "else",
        f"  mkdir -p {q(str(work / 'modules/lib/modules'))}",
        f'  ln -s "$M" {q(str(work / "modules/lib/modules"))}/"$V"',
        f'  MODPROBE={q(str(work / "modprobe"))}; echo "$MODPROBE" > /proc/sys/kernel/modprobe',
        "fi",
        f"$MODPROBE -qa {' '.join(modules)}",
        "ip link set lo up",
        f"cd {q(str(cwd))} && {shlex.join(argv)} {redirect}",
        f"echo $? > {q(str(work / 'rc'))}",
        "sync",
        POWER_OFF,
        "",
    ]
    return "\n".join(lines)


def modprobe_wrapper(work: Path) -> str:
    """modprobe on the module tree init_script makes when the root has no /lib/modules."""
    return f'#!/bin/sh\nexec modprobe -d {shlex.quote(str(work / "modules"))} "$@"\n'


def kernel_command(*, linux: str, work: Path, mem: str, umid: str) -> list[str]:
    return [
        linux,
        f"mem={mem}",
        f"umid={umid}",
        f"uml_dir={work}",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        "quiet",
        "loglevel=4",  # errors reach the console, e.g. a process UML killed (HOST_MEMORY_ERROR)
        f"init={work / 'init'}",
        "con=null",
        "con0=fd:0,fd:1",
    ]


class _Tail(threading.Thread):
    """Copies what the guest appends to a host file into one of our streams, as it arrives."""

    def __init__(self, path: Path, sink: BinaryIO) -> None:
        super().__init__(daemon=True)
        self.path, self.sink, self.done = path, sink, threading.Event()

    def run(self) -> None:
        while not self.path.exists():
            if self.done.wait(_POLL_S):
                break
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            while True:
                finished = self.done.is_set()  # read once more after the guest stopped
                chunk = f.read(65536)
                if chunk:
                    self.sink.write(chunk)
                    self.sink.flush()
                elif finished:
                    return
                else:
                    self.done.wait(_POLL_S)

    def stop(self) -> None:
        self.done.set()
        self.join()


def _binary(stream: object) -> BinaryIO:
    return getattr(stream, "buffer", stream)  # type: ignore[return-value]


def run_in_uml(
    argv: Sequence[str],
    *,
    mem: str = DEFAULT_MEM,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: Path | None = None,
    stdin_data: bytes | None = None,
    interactive: bool = False,
    env: Mapping[str, str] | None = None,
) -> int:
    """Boot a guest, run argv in it (in cwd) and return its exit status.

    The guest gets guest_env() of our environment plus env.
    Non-interactive: the command reads stdin_data (or nothing) and its output is streamed live.
    Interactive: the command runs on the guest console, which is our own stdin and stdout.
    """
    linux = shutil.which("linux.uml")
    if linux is None:
        print("routed-nv: linux.uml missing: apt-get install user-mode-linux", file=sys.stderr)
        return EXIT_NO_REPORT
    work = Path(tempfile.mkdtemp(prefix="rnv-uml-", dir="/var/tmp"))
    try:
        (work / "init").write_text(
            init_script(
                work=work,
                cwd=(cwd or Path.cwd()).resolve(),
                argv=argv,
                env={**guest_env(os.environ), **(env or {})},
                interactive=interactive,
            )
        )
        (work / "init").chmod(0o755)
        (work / "modprobe").write_text(modprobe_wrapper(work))
        (work / "modprobe").chmod(0o755)
        (work / "stdin").write_bytes(stdin_data or b"")
        command = kernel_command(linux=linux, work=work, mem=mem, umid=f"rnv{os.getpid()}")
        return _boot(command, work, timeout, interactive, mem=mem, preload=build_shim(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_shim(work: Path) -> Path | None:
    """The xstate shim compiled into work, or None (with why) when no C compiler is there: UML
    then runs only on hosts whose XSAVE area is UML's size."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print(
            "routed-nv: no C compiler (cc) for UML's xstate shim: apt-get install gcc",
            file=sys.stderr,
        )
        return None
    out = work / "uml_xstate.so"
    argv = [cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(XSTATE_SHIM), "-ldl"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"routed-nv: cannot build UML's xstate shim: {exc}", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(
            f"routed-nv: cannot build UML's xstate shim: {done.stderr.strip()[:300]}",
            file=sys.stderr,
        )
        return None
    return out


def _boot(
    command: list[str],
    work: Path,
    timeout: float,
    interactive: bool,
    mem: str = DEFAULT_MEM,
    preload: Path | None = None,
) -> int:
    console = work / "console"
    tails = (
        []
        if interactive
        else [
            _Tail(work / "stdout", _binary(sys.stdout)),
            _Tail(work / "stderr", _binary(sys.stderr)),
        ]
    )
    # UML backs guest memory with a file in TMPDIR; /dev/shm keeps it off the disk.
    env = {**os.environ, "TMPDIR": "/dev/shm"}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    # SIGTERM unwinds from before the guest starts, so that the finally below stops it then
    # too (set after the start, a SIGTERM in between left the guest running)
    with console.open("wb") as log, _sigterm_unwinds():
        io: dict[str, object] = (
            {} if interactive else {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": log}
        )
        for tail in tails:  # each waits for its file to appear
            tail.start()
        proc: subprocess.Popen[bytes] | None = None
        timed_out = False
        try:
            proc = subprocess.Popen(command, env=env, start_new_session=True, **io)  # type: ignore[call-overload]
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # UML forks helpers into the session it leads: kill that group, by its pid.
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for tail in tails:
                tail.stop()
    rc_file = work / "rc"
    reported = rc_file.read_text().strip() if rc_file.exists() else ""
    rc = int(reported) if reported else None
    if rc != 0:
        text = console.read_text(errors="replace") if console.exists() else ""
        for line in console_report(text, mem):
            print(f"uml: {line}", file=sys.stderr)
    if rc is not None:
        return rc
    if timed_out:
        print(f"routed-nv: UML guest timed out after {timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print("routed-nv: UML guest did not report an exit status", file=sys.stderr)
    return EXIT_NO_REPORT


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile: Python's default for it ends the process without
    unwinding, which left a killed runner's guest running. Only the main thread may set it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def console_report(console: str, mem: str) -> list[str]:
    """What of the guest's console to show: its last lines but linux.uml's own and the errors of
    every boot, and how to raise the host's limit when UML killed a process for it."""
    lines = [
        line
        for line in console.splitlines()[-40:]
        if line.strip() and not line.startswith(_CONSOLE_NOISE)
    ]
    advice = map_count_advice(mem) if HOST_MEMORY_ERROR in console else None
    if XSTATE_ERROR in console:
        advice = (
            "this host's XSAVE area (AVX-512, AMX) is larger than UML's: the guest needs the"
            f" preloaded shim {XSTATE_SHIM.name}, built with cc (apt-get install gcc)"
        )
    return [*lines, advice] if advice else lines


def map_count_advice(mem: str) -> str | None:
    """None when the host's vm.max_map_count is what UML asks for a guest of `mem` (its size in
    pages: each guest page may be a mapping of its own in the host process), else the risk
    and the command that raises it (a host setting: the user's call, never made for them)."""
    needed = _size(mem) // 4096
    have = int(MAX_MAP_COUNT.read_text())
    if have >= needed:
        return None
    return (
        f"this host's vm.max_map_count is {have:,}, UML asks for {needed:,} for a {mem} guest: "
        f"a guest process whose pages lie scattered is killed at about {have * 4096 >> 20} MiB; "
        f"to raise it: sysctl -w vm.max_map_count={needed}"
    )


def _size(mem: str) -> int:
    """Bytes of a kernel `mem=` size: a number with an optional K, M or G."""
    unit = _UNITS.get(mem[-1:].upper(), 1)
    return int(mem[:-1] if unit > 1 else mem) * unit


def run_here_or_in_uml(argv: Sequence[str], **uml_options: object) -> int:
    """Run argv on this kernel when it can carry the datapath (or we are the guest), else in UML."""
    if not needs_uml():
        return subprocess.run(list(argv), check=False).returncode
    return run_in_uml(argv, **uml_options)  # type: ignore[arg-type]
