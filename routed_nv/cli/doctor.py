"""`routed-nv doctor`: what this machine's kernel and tools provide, and whether that is enough.

The facts are gathered by `routed_nv.doctor`; the judgement is in `routed_nv.kernel_features`.
"""

from __future__ import annotations

import json

import click

from routed_nv import doctor
from routed_nv.cli.agent_client import table
from routed_nv.kernel_features import TABLE_HEADERS, table_rows
from routed_nv.options import output_option


@click.command(name="doctor")
@output_option
def doctor_command(output: str) -> None:
    """Check what this kernel and machine provide for routed_nv.

    Reports the distribution, the kernel features the datapath needs (esp4, esp6, xfrm_user,
    vrf, ip6_tunnel, IPv4 over an NBMA ip6tnl, AES-GCM), which tenant protection modes the
    kernel can do (`protection aes-gcm`, `chacha20-poly1305`, `integrity`, `none`: as root, from
    a test SA per mode in a scratch network namespace, else from /proc/crypto and the modules;
    optional, `config check` refuses a tenant in a mode this kernel lacks) and the tools around
    it with their versions (iptables and its backend, charon and the plugins the lab loads,
    BIRD, user-mode-linux's kernel for the lab). A module counts when it is loaded, built in or
    loadable.

    Exit status: 0 when every datapath need is met, 1 when one is missing (the lab then runs
    inside user-mode-linux). Tools are reported but do not change the exit status.

    \b
    Examples:
      routed-nv doctor
      routed-nv doctor -o json | jq -r '.missing[]'
      routed-nv doctor >/dev/null || echo "kernel lacks datapath features"
    """
    report = doctor.diagnose()
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "datapath_ready": report.datapath_ready,
                    "missing": report.missing,
                    "features": [
                        {"name": f.name, "ok": f.ok, "needed": f.needed, "detail": f.detail}
                        for f in report.features
                    ],
                },
                indent=2,
            )
        )
    else:
        click.echo(table(TABLE_HEADERS, table_rows(report.features)))
        verdict = "ready" if report.datapath_ready else "missing " + ", ".join(report.missing)
        click.echo(f"\ndatapath: {verdict}")
    raise SystemExit(0 if report.datapath_ready else 1)
