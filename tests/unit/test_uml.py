from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from routed_nv.lab import uml

WORK = Path("/var/tmp/rnv-uml-x")


def script(**overrides: object) -> str:
    args: dict[str, object] = {
        "work": WORK,
        "cwd": Path("/tmp/my project"),
        "argv": ["python", "-c", "print('hi')"],
        "env": {"ROUTED_NV_IN_UML": "1", "CI": "it's"},
    }
    return uml.init_script(**{**args, **overrides})  # type: ignore[arg-type]


def test_guest_env_passes_only_our_variables_and_marks_the_guest() -> None:
    env = uml.guest_env({"ROUTED_NV_X": "1", "CI": "true", "SECRET": "no", "PATH": "/host"})
    assert env["ROUTED_NV_X"] == "1" and env["CI"] == "true"
    assert env[uml.IN_GUEST_ENV] == "1"
    assert "SECRET" not in env
    assert env["PATH"] == uml.GUEST_PATH


def test_init_script_exports_env_quoted() -> None:
    text = script()
    assert text.startswith("#!/bin/sh\n")
    assert "export CI=" + shlex.quote("it's") in text


def test_init_script_mounts_private_dirs_and_binds_the_cwd_back() -> None:
    lines = script().splitlines()
    stash = lines.index(
        "mkdir -p /var/tmp/rnv-uml-x/cwd && mount --bind '/tmp/my project' /var/tmp/rnv-uml-x/cwd"
    )
    private = lines.index(
        "for d in /tmp /run /dev/shm; do mkdir -p $d; mount -t tmpfs tmpfs $d; done"
    )
    back = lines.index(
        "mkdir -p '/tmp/my project' && mount --bind /var/tmp/rnv-uml-x/cwd '/tmp/my project'"
    )
    assert stash < private < back


def test_init_script_loads_modules_runs_the_command_and_reports_status() -> None:
    text = script(modules=["esp4", "vrf"])
    assert "$MODPROBE -qa esp4 vrf" in text
    run = "cd '/tmp/my project' && python -c 'print('\"'\"'hi'\"'\"')'"
    assert (
        f"{run} </var/tmp/rnv-uml-x/stdin >/var/tmp/rnv-uml-x/stdout 2>/var/tmp/rnv-uml-x/stderr"
        in text
    )
    lines = text.splitlines()
    assert lines[-3:] == ["echo $? > /var/tmp/rnv-uml-x/rc", "sync", uml.POWER_OFF]


def test_the_guest_powers_off_without_a_poweroff_command() -> None:
    # a minimal Debian 13 has no `poweroff`: init exited and the guest panicked
    assert "poweroff" not in script()
    assert uml.POWER_OFF.startswith("exec /usr/bin/python3 ")


def test_modules_come_from_the_work_directory_when_the_root_has_no_lib_modules(
    tmp_path: Path,
) -> None:
    """The module set-up of init_script, run on this host against a fake root: with no
    /lib/modules it must write only under the work directory (on Debian 13 it created
    usr/lib/modules/<version> on the host's real filesystem)."""
    text = script(work=tmp_path / "work")
    start = text.index("V=$(uname -r)")
    end = text.index("$MODPROBE -qa")
    setup = text[start:end]
    root = tmp_path / "root"
    (root / "usr/lib/uml/modules/6.1.0").mkdir(parents=True)
    shell = (
        setup.replace("[ -d /lib/modules ]", f"[ -d {root}/lib/modules ]")
        .replace('M="/usr/lib/uml', f'M="{root}/usr/lib/uml')
        .replace("/proc/sys/kernel/modprobe", f"{tmp_path}/kernel.modprobe")
    )
    shell = shell.replace("$(uname -r)", "6.1.0") + '\necho "$MODPROBE"\n'
    (tmp_path / "work").mkdir()
    done = subprocess.run(["sh", "-ec", shell], capture_output=True, text=True, check=True)
    wrapper = str(tmp_path / "work" / "modprobe")
    assert done.stdout.strip() == wrapper
    assert (tmp_path / "kernel.modprobe").read_text().strip() == wrapper
    link = tmp_path / "work/modules/lib/modules/6.1.0"
    assert link.resolve() == root / "usr/lib/uml/modules/6.1.0"
    assert sorted(p.name for p in root.iterdir()) == ["usr"]  # nothing made beside it
    assert not (root / "lib").exists()
    assert uml.modprobe_wrapper(tmp_path / "work") == (
        f'#!/bin/sh\nexec modprobe -d {tmp_path / "work" / "modules"} "$@"\n'
    )


def test_interactive_command_uses_the_console() -> None:
    assert "</dev/console >/dev/console 2>&1" in script(interactive=True)


def test_kernel_command() -> None:
    command = uml.kernel_command(linux="/usr/bin/linux.uml", work=WORK, mem="256M", umid="rnv1")
    assert command[:4] == ["/usr/bin/linux.uml", "mem=256M", "umid=rnv1", f"uml_dir={WORK}"]
    assert "rootfstype=hostfs" in command and "rootflags=/" in command
    assert f"init={WORK}/init" in command
    assert command[-1] == "con0=fd:0,fd:1"


BOOT = "\n".join(
    [
        "SELinux: CONFIG_SECURITY_SELINUX_CHECKREQPROT_VALUE is non-zero.  This is deprecated",
        "mmapper_init - find_iomem failed",
        "Failed to initialize ubd device 0 :Couldn't determine size of device's file",
    ]
)
KILLED = (
    "UML ran out of memory on the host side! This can happen due to a memory limitation or "
    "vm.max_map_count has been reached."
)


def max_map_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: int) -> None:
    path = tmp_path / "max_map_count"
    path.write_text(f"{value}\n")
    monkeypatch.setattr(uml, "MAX_MAP_COUNT", path)


def test_the_console_report_leaves_out_what_every_boot_prints() -> None:
    # as linux.uml writes it: a blank line before the halt
    assert uml.console_report(f"{BOOT}\nPowering off.\n\nreboot: System halted\n", "512M") == []
    oops = "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    assert uml.console_report(f"{BOOT}\n{oops}\nPowering off.\n", "512M") == [oops]


def test_a_process_killed_for_the_hosts_map_count_says_how_to_raise_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    max_map_count(monkeypatch, tmp_path, 65530)
    report = uml.console_report(f"{BOOT}\n{KILLED}\n", "6G")
    assert report[0] == KILLED
    assert "vm.max_map_count is 65,530, UML asks for 1,572,864 for a 6G guest" in report[1]
    assert "killed at about 255 MiB" in report[1]
    assert report[1].endswith("sysctl -w vm.max_map_count=1572864")


def test_map_count_advice_only_when_the_host_limit_is_below_the_guest_size(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    max_map_count(monkeypatch, tmp_path, 262144)
    assert uml.map_count_advice("1G") is None
    assert uml.map_count_advice("1048576K") is None
    assert uml.map_count_advice("2G") is not None
    max_map_count(monkeypatch, tmp_path, 65530)
    assert uml.console_report(KILLED, "128M") == [KILLED]  # the limit was not the cause
    assert uml.map_count_advice(str(512 << 20)) is not None


def test_run_here_when_the_kernel_is_capable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uml, "needs_uml", lambda: False)
    monkeypatch.setattr(uml, "run_in_uml", lambda *a, **k: pytest.fail("booted a guest"))
    assert uml.run_here_or_in_uml(["sh", "-c", "exit 7"]) == 7


def test_run_in_uml_when_the_kernel_lacks_features(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(uml, "needs_uml", lambda: True)
    monkeypatch.setattr(uml, "run_in_uml", lambda argv, **k: calls.append((argv, k)) or 3)
    assert uml.run_here_or_in_uml(["true"], mem="256M") == 3
    assert calls == [(["true"], {"mem": "256M"})]


def test_the_guest_never_boots_another_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(uml.IN_GUEST_ENV, "1")
    assert not uml.needs_uml()


def test_a_sigterm_to_the_runner_stops_the_guest(tmp_path: Path) -> None:
    # a stand-in for linux.uml that records its pid and would run for a minute
    pidfile = tmp_path / "guest.pid"
    guest = ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]
    boot = f"uml._boot({guest!r}, Path({str(tmp_path)!r}), 60, False)"
    code = f"from pathlib import Path; from routed_nv.lab import uml; {boot}"
    runner = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    try:
        runner.terminate()
        assert runner.wait(timeout=10) == 128 + signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # only when the test failed: the guest outlived it


def test_console_report_explains_a_host_xsave_area_uml_cannot_use() -> None:
    console = "userspace - ptrace set fp regs failed, errno = 14\nKernel panic - not syncing\n"
    report = uml.console_report(console, "512M")
    assert "XSAVE area" in report[-1] and "apt-get install gcc" in report[-1]


def test_the_xstate_shim_makes_a_short_fpu_write_whole(tmp_path: Path) -> None:
    """ptrace SETREGSET NT_X86_XSTATE with UML's 832 bytes: the host refuses it (EFAULT) when its
    XSAVE area is larger (AVX-512, AMX); through the shim it succeeds and leaves the state beyond
    UML's part as it was. On a host whose area is 832 bytes both pass, as they should."""
    shim = uml.build_shim(tmp_path)
    assert shim is not None and shim.exists()
    probe = tmp_path / "probe.py"
    probe.write_text(_PTRACE_PROBE)
    plain = subprocess.run(
        [sys.executable, str(probe)], capture_output=True, text=True, check=True
    ).stdout.split()
    shimmed = subprocess.run(
        [sys.executable, str(probe)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LD_PRELOAD": str(shim)},
    ).stdout.split()
    whole = int(plain[0])
    if whole > 832:
        assert plain[1] == "-1:14"  # the host's refusal, which killed the guest
    assert shimmed[1] == "0:0"
    assert shimmed[2] == "same"  # the whole area read back is what it was before the write


_PTRACE_PROBE = """
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
GET, SET, XSTATE = 0x4204, 0x4205, ctypes.c_void_p(0x202)
pid = os.fork()
if pid == 0:
    libc.ptrace(0, 0, None, None)
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(0)
os.waitpid(pid, 0)
def read_whole():
    buf = ctypes.create_string_buffer(65536)
    iov = Iov(ctypes.cast(buf, ctypes.c_void_p), 65536)
    assert libc.ptrace(GET, pid, XSTATE, ctypes.byref(iov)) == 0
    return buf.raw[: iov.len]
before = read_whole()
short = ctypes.create_string_buffer(832)
iov = Iov(ctypes.cast(short, ctypes.c_void_p), 832)
assert libc.ptrace(GET, pid, XSTATE, ctypes.byref(iov)) == 0
ret = libc.ptrace(SET, pid, XSTATE, ctypes.byref(iov))
err = ctypes.get_errno() if ret < 0 else 0
after = read_whole()
print(len(before), f"{ret}:{err}", "same" if after == before else "changed")
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"""
