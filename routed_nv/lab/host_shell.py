"""Each lab host as an operator meets a real one: `rnv-host HOST [COMMAND...]`.

A lab host is a network namespace whose configuration lives in the lab's work directory, not in
/etc/routed-nv (the lab must not write the machine's /etc). `rnv-host host1` opens a shell in
host1's namespace with ROUTED_NV_CONFIG set to host1's file, whose agent.run_dir is its agent's
run directory, and routed-nv on PATH: there the operator guide's commands work as written
(`routed-nv status`, `ip route show vrf rnv-v100`). `rnv-host host1 COMMAND` runs one command
there, as `docker exec` does. The same script serves `routed-nv lab shell` and the doc test of
docs/operator-guide.md, so the guide is tested the way an operator runs it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from routed_nv.config.loader import CONFIG_ENV
from routed_nv.lab.builder import IP

HOST_COMMAND = "rnv-host"


def write_host_command(bin_dir: Path, hosts: dict[str, tuple[str, Path]]) -> Path:
    """Write bin_dir/rnv-host for `hosts` (name -> (namespace, config file)); returns its path.
    routed-nv's own directory goes first on the host's PATH: a UML guest's PATH is the
    system's, without the virtualenv routed_nv runs from."""
    cases = "\n".join(
        f"  {shlex.quote(name)}) ns={shlex.quote(namespace)}; config={shlex.quote(str(config))} ;;"
        for name, (namespace, config) in hosts.items()
    )
    routed_nv_bin = shlex.quote(str(Path(sys.executable).parent))
    script = f"""#!/bin/sh
# {HOST_COMMAND} HOST [COMMAND [ARG...]]: COMMAND (default: a shell) on lab host HOST, in its
# network namespace, with its routed_nv configuration found as on a real host.
case "$1" in
{cases}
  *) echo "usage: {HOST_COMMAND} HOST [COMMAND [ARG...]]; hosts: {" ".join(hosts)}" >&2; exit 2 ;;
esac
host=$1
shift
[ $# -gt 0 ] || set -- "${{SHELL:-/bin/sh}}"
exec {IP} netns exec "$ns" env {CONFIG_ENV}="$config" PATH={routed_nv_bin}:"$PATH" \\
    PS1="$host# " "$@"
"""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / HOST_COMMAND
    path.write_text(script)
    path.chmod(0o755)
    return path
