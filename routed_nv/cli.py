"""`routed-nv`: the one command-line entry point.

Each package exposes its own click commands; this module only assembles them, so that importing
the CLI does not import pyroute2 or vici until a command needs them.
"""

from __future__ import annotations

import click

from routed_nv import __version__
from routed_nv.agent.commands import apply_command
from routed_nv.agent.daemon_commands import agent_command
from routed_nv.agent.status_commands import (
    directory_group,
    endpoint_group,
    lookup_command,
    status_command,
)
from routed_nv.bench.commands import bench_command
from routed_nv.config.commands import config_group
from routed_nv.doctor import doctor_command
from routed_nv.esp.commands import sa_group
from routed_nv.iproute2_names import iproute2_names_command
from routed_nv.lab.commands import lab_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="routed-nv")
def main() -> None:
    """routed_nv: routed network virtualization for Linux hypervisor hosts.

    \b
    Examples:
      routed-nv config check /etc/routed-nv/routed-nv.toml
      routed-nv apply --dry-run
      routed-nv doctor -o json
      routed-nv lab demo
    """


main.add_command(agent_command)
main.add_command(apply_command)
main.add_command(bench_command)
main.add_command(config_group)
main.add_command(directory_group)
main.add_command(doctor_command)
main.add_command(endpoint_group)
main.add_command(iproute2_names_command)
main.add_command(lab_group)
main.add_command(lookup_command)
main.add_command(sa_group)
main.add_command(status_command)
