"""Builds a host's Datapath from its real drivers and their kernel adapters (pyroute2, iptables,
ip xfrm, VICI): the one place that chooses them, so the Datapath itself is tested with fakes."""

from __future__ import annotations

from routed_nv.agent.datapath import Datapath
from routed_nv.config.model import Config
from routed_nv.esp.driver import XfrmDriver
from routed_nv.esp.ike import IkeDriver
from routed_nv.esp.seqstore import ReservationStore
from routed_nv.esp.vici_adapter import ViciSession
from routed_nv.esp.xfrm import IprouteXfrm
from routed_nv.netfilter.driver import NetfilterDriver
from routed_nv.netfilter.restore import RestoreTables
from routed_nv.routing.driver import RoutingDriver
from routed_nv.routing.netlink import NetlinkKernel


def build_datapath(
    config: Config, netns: str | None = None, resync_interval_s: float | None = None
) -> Datapath:
    """The Datapath of the host in `netns` (None: this namespace). `resync_interval_s`: the
    agent's, when it overrides the config's."""
    socket = config.keying.vici_socket  # charon is reached by its socket, whatever its netns
    xfrm = XfrmDriver(
        IprouteXfrm(netns),
        config.host.underlay_prefix,
        config.keying.rotation_grace_s,
        ReservationStore(config.agent.state_dir),
        resync_interval_s or config.agent.resync_interval_s,
    )
    return Datapath(
        netfilter=NetfilterDriver(RestoreTables(netns=netns)),
        xfrm=xfrm,
        routing=RoutingDriver(NetlinkKernel, host_netns=netns),
        # the IKE driver checks charon's pinned outbound policies, which the XFRM driver reads
        ike=IkeDriver(lambda: ViciSession(socket), read_pins=xfrm.pinned_out_policies),
    )
