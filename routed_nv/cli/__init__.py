"""`routed-nv`: the one command-line entry point.

One module per command group; this package only names them. A command's module is imported when
the command runs (or when `--help` lists the commands), and each module imports drivers and
libraries (pyroute2, vici, prometheus_client, the lab) inside the commands that need them: so
`--version` loads nothing but click, and `status`, `lookup`, `endpoint` and `config check` load
no kernel, IKE or metrics library (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import importlib

import click

from routed_nv import __version__

# command name -> "module:attribute" under routed_nv.cli
COMMANDS = {
    "agent": "agent:agent_command",
    "apply": "apply:apply_command",
    "bench": "bench:bench_command",
    "config": "config:config_group",
    "directory": "directory:directory_group",
    "doctor": "doctor:doctor_command",
    "endpoint": "endpoint:endpoint_group",
    "iproute2-names": "iproute2_names:iproute2_names_command",
    "lab": "lab:lab_group",
    "lookup": "lookup:lookup_command",
    "sa": "sa:sa_group",
    "status": "status:status_command",
    "trace": "trace:trace_command",
}

# longer than any first sentence: click stops a summary at the first sentence's end
SUMMARY_LIMIT = 1000


class LazyGroup(click.Group):
    """click's lazily loading group (docs: "Lazily Loading Subcommands"): a command's module is
    imported only when that command is resolved."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute = COMMANDS[cmd_name].split(":")
        command: click.Command = getattr(
            importlib.import_module(f"routed_nv.cli.{module}"), attribute
        )
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click cuts each summary to what fits one line ("Keep this host's datapath where the
        # configuration and..."): show each command's whole first sentence, wrapped
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=SUMMARY_LIMIT)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
