"""`routed-nv agent`: the long-running reconcile daemon (systemd Type=notify)."""

from __future__ import annotations

import faulthandler
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from routed_nv.agent.options import run_dir_option
from routed_nv.config.model import DEFAULT_METRICS_ADDRESS, Config, DirectorySourceKind, LogFormat
from routed_nv.options import config_option, netns_option

if TYPE_CHECKING:
    from types import FrameType

    from routed_nv.agent.events import EventLog
    from routed_nv.agent.loop import Agent
    from routed_nv.agent.snapshot import SaInfo
    from routed_nv.agent.source import DirectorySource

EXIT_STOPPED = 0
EXIT_FAILED = 2  # invalid configuration or cannot start: nothing was applied
# how long `status` and `lookup` wait for the loop to read the kernel (under the client's 5 s);
# a busy loop answers with its last check, whose time says how old it is
CHECK_TIMEOUT_S = 3.0
# Each check reads the whole kernel (routes, XFRM, netfilter: seconds of CPU at 100,000 routes),
# so a `watch -n1 routed-nv status` or a monitoring poller would keep the agent reading; a check
# younger than this is answered again instead (status and lookup say when it was made)
CHECK_REUSE_S = 5.0


def _metrics_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value != "off":
        from routed_nv.agent.metrics import parse_address

        try:
            parse_address(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.command("agent")
@config_option
@netns_option
@run_dir_option
@click.option(
    "--metrics-address",
    callback=_metrics_address,
    metavar="HOST:PORT|off",
    help=f"Serve Prometheus metrics here; `off` serves none [config agent.metrics_address, "
    f"default {DEFAULT_METRICS_ADDRESS}].",
)
@click.option(
    "--log-format",
    type=click.Choice([f.value for f in LogFormat]),
    help="Event lines as `event key=value ...` or one JSON object per line (stderr) "
    "[config agent.log_format, default text].",
)
@click.option(
    "--resync-interval",
    type=click.FloatRange(min=1, max=3600),
    metavar="SECONDS",
    help="Re-read and repair the whole datapath this often even when nothing changed "
    "[config agent.resync_interval_s, default 30].",
)
@click.option(
    "--min-interval",
    type=click.FloatRange(min=0, max=60),
    metavar="SECONDS",
    help="At most one apply per this many seconds; updates in between are coalesced "
    "[config agent.min_interval_s, default 0.2].",
)
def agent_command(
    config_path: Path | None,
    netns: str | None,
    run_dir: Path | None,
    metrics_address: str | None,
    log_format: str | None,
    resync_interval: float | None,
    min_interval: float | None,
) -> None:
    """Keep this host's datapath where the configuration and the directory say, continuously.

    Applies once at start (adopting what an earlier agent left: nothing is flushed), then
    whenever the directory or the configuration changes, and every --resync-interval seconds
    to repair drift. Remote endpoints come from the configuration's static `peers` and
    `remote_endpoints` (directory.source "static"), or from BGP (directory.source "bgp": the
    agent applies BIRD's config and reads the mirror tables BIRD writes).

    \b
    Signals and readiness:
      SIGHUP           reload the configuration; an invalid one is logged and the agent keeps
                       running on the previous one
      SIGTERM, SIGINT  stop, leaving the dataplane in place (traffic keeps flowing, isolation
                       stays enforced); a restarted agent changes nothing
      sd_notify        READY=1 after the first successful apply, STATUS= after each apply,
                       RELOADING=1 / READY=1 around reloads, STOPPING=1 (only with
                       $NOTIFY_SOCKET, as systemd Type=notify sets it)
    The control socket RUN_DIR/agent.sock (root only; RUN_DIR is agent.run_dir unless
    --run-dir or $ROUTED_NV_RUN_DIR say otherwise) answers `routed-nv status`, `lookup`,
    `endpoint list` and `directory dump`.

    \b
    Exit status:
      0  stopped by SIGTERM or SIGINT
      2  the configuration is invalid, or another agent runs, or the metrics port is taken
         (nothing was applied)

    \b
    Examples:
      routed-nv agent
      routed-nv agent -c /etc/routed-nv/routed-nv.toml --log-format json
      routed-nv agent --run-dir /tmp/rnv --metrics-address off
      ip netns exec host1 routed-nv agent -c lab/host1/routed-nv.toml --run-dir /tmp/rnv/host1
      systemctl reload routed-nv   # = kill -HUP <agent pid>
    """
    # a crash or a hang (SIGABRT) leaves every thread's stack in the journal
    faulthandler.enable(sys.__stderr__)  # the real fd 2, even when click swaps sys.stderr
    # The daemon's modules (and pyroute2, vici, prometheus_client) load only when it starts.
    from routed_nv.agent.control import SOCKET_NAME, ControlError, ControlServer
    from routed_nv.agent.endpoint_api import EndpointApi
    from routed_nv.agent.events import EventLog
    from routed_nv.agent.loop import Agent, Settings
    from routed_nv.agent.metrics import Metrics, xfrm_stat_reader
    from routed_nv.agent.notify import Notifier
    from routed_nv.agent.wiring import build_datapath
    from routed_nv.config.loader import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        EventLog(LogFormat(log_format or LogFormat.TEXT))(
            "agent.start", ok=False, problems=len(exc.problems)
        )
        sys.exit(EXIT_FAILED)
    # command-line options win over the [agent] section; they are read once, at start
    log = EventLog(LogFormat(log_format or config.agent.log_format))
    metrics_address = metrics_address or config.agent.metrics_address
    if metrics_address == "off":
        metrics_address = None

    settings = Settings(
        min_interval_s=config.agent.min_interval_s if min_interval is None else min_interval,
        resync_interval_s=config.agent.resync_interval_s
        if resync_interval is None
        else resync_interval,
    )
    agent = Agent(
        config,
        build_datapath(config, netns, settings.resync_interval_s),
        _source(config, netns, log),
        lambda: load_config(config_path),
        read_sas=_kernel_sas(netns),
        settings=settings,
        log=log,
        notifier=Notifier(),
    )
    try:
        endpoints = EndpointApi(agent, config_path).answer
        control = ControlServer(
            (run_dir or config.agent.run_dir) / SOCKET_NAME,
            agent.snapshot,
            agent.request_reload,
            clear=agent.request_clear,
            endpoints=endpoints,
            check=lambda: agent.check_kernel(CHECK_TIMEOUT_S, CHECK_REUSE_S),
            resync=agent.request_resync,
        )
    except (ControlError, OSError) as exc:
        log("agent.start", ok=False, error=str(exc))
        sys.exit(EXIT_FAILED)
    metrics = Metrics(agent.snapshot, xfrm_stat_reader(netns))
    agent.on_apply.append(metrics.observe)
    try:
        if metrics_address is not None:
            metrics.serve(metrics_address)
    except OSError as exc:
        control.close()
        log("agent.start", ok=False, error=f"metrics on {metrics_address}: {exc.strerror}")
        sys.exit(EXIT_FAILED)
    _handle_signals(agent)
    control.start()
    try:
        agent.run()
    finally:
        control.close()
        metrics.close()
    sys.exit(EXIT_STOPPED)


def _source(config: Config, netns: str | None, log: EventLog | None = None) -> DirectorySource:
    """The directory source is chosen once, at start: a reload cannot switch it."""
    from routed_nv.agent.source import StaticSource

    if config.directory.source == DirectorySourceKind.BGP:
        from routed_nv.agent.events import EventLog
        from routed_nv.directory.bgp_source import BgpSource

        return BgpSource(netns, log or EventLog())
    return StaticSource()


def _handle_signals(agent: Agent) -> None:
    """Handlers only set flags; the wake-up fd makes the sleeping loop notice at once."""

    def stop(signum: int, frame: FrameType | None) -> None:
        agent.stop_requested = True

    def reload(signum: int, frame: FrameType | None) -> None:
        agent.reload_requested = True

    signal.set_wakeup_fd(agent.waker.write_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)


def _kernel_sas(netns: str | None) -> Callable[[], list[SaInfo]]:
    from routed_nv.agent.snapshot import SaInfo
    from routed_nv.esp.xfrm import IprouteXfrm

    xfrm = IprouteXfrm(netns)

    def read() -> list[SaInfo]:
        return [
            SaInfo(s.src, s.dst, s.spi, tenant)
            for s in xfrm.read_states()
            if (tenant := s.tenant_id) is not None  # ours: reqid in routed_nv's range
        ]

    return read
