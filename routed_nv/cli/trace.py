"""`routed-nv trace`: the path a packet from a workload would take, and why it would be dropped."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from routed_nv.agent.options import run_dir_option
from routed_nv.cli.agent_client import EXIT_ERROR, fail, print_json
from routed_nv.options import (
    agent_run_dir,
    config_option,
    config_or_exit,
    netns_option,
    output_option,
)

EXIT_PASSES = 0
EXIT_DROPPED = 1


@click.command("trace")
@click.argument("tenant")
@click.argument("src")
@click.argument("dst")
@click.option(
    "--proto",
    type=click.Choice(["icmp", "tcp", "udp"]),
    default="icmp",
    show_default=True,
    help="The packet's protocol (no rule looks at it yet: security groups will).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Destination port.")
@config_option
@run_dir_option
@netns_option
@output_option
def trace_command(
    tenant: str,
    src: str,
    dst: str,
    proto: str,
    port: int | None,
    config_path: Path | None,
    run_dir: Path | None,
    netns: str | None,
    output: str,
) -> None:
    """Trace a packet from workload address SRC of TENANT (name or id) on this host to DST:
    the source endpoint and anti-spoofing, the VRF route the kernel chooses, the tunnel, the
    XFRM policy and SA (SPI, peer host, tenant from the SPI plan), the receiver's isolation
    rule and the directory entry (which host announced DST), then the verdict: delivered
    locally, sent to host X over SPI Y, or dropped with the first reason it would fail.

    Reads this host's kernel (`ip route get ... iif <endpoint>`, `ip xfrm`) and the running
    agent's directory view; without an agent, the configuration's static entries. Nothing is
    sent.

    \b
    Exit status:
      0  the packet would be delivered locally or sent to its host
      1  it would be dropped (the reason is printed)
      2  usage error: unknown tenant, not an address, invalid configuration, kernel unreadable

    \b
    Examples:
      routed-nv trace blue 10.0.0.1 10.0.0.2
      routed-nv trace blue fd10::1 fd10::2 --proto tcp --port 443
      routed-nv trace 100 10.0.0.1 10.0.0.9 -o json | jq .reason
      routed-nv trace blue 10.0.0.1 10.0.0.2 -c lab/host1.toml --netns rnv-lab-host1
    """
    from routed_nv.calc.trace import TraceError, parse_packet, resolve_tenant, trace
    from routed_nv.trace_facts import GatherError, gather

    config = config_or_exit(config_path, EXIT_ERROR)
    try:
        resolve_tenant(config, tenant)
        parse_packet(src, dst, proto, port)
        facts = gather(config, tenant, src, dst, netns, agent_run_dir(run_dir, config_path))
        result = trace(facts, tenant, src, dst, proto, port)
    except (TraceError, GatherError) as exc:
        fail(EXIT_ERROR, str(exc))
    if output == "json":
        print_json(result.as_json() | {"host_name": config.host.name, "view": facts.view_source})
    else:
        what = f"{result.proto}" + (f" port {result.port}" if result.port else "")
        click.echo(
            f"trace tenant {result.tenant} ({result.tenant_id}): {result.src} -> {result.dst} "
            f"{what}, on host {config.host.name}"
        )
        for n, step in enumerate(result.steps, 1):
            mark = "ok  " if step.ok else "DROP"
            click.echo(f"  {n}. {step.what:<13} {mark} {step.detail}")
        click.echo(f"verdict: {result.verdict}: {result.reason}")
        click.echo(f"(directory {facts.view_source})")
    sys.exit(EXIT_DROPPED if result.verdict == "dropped" else EXIT_PASSES)
