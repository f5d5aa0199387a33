"""Every exception routed_nv raises on purpose is a RoutedNvError, so the agent and the CLI can
tell transient failures (try again later) from permanent ones (someone must change something)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import routed_nv
from routed_nv.errors import RoutedNvError, TransientError

# Private classes that never leave their module: control flow, not errors anyone reports.
SENTINELS = {
    # a packet's walk ends at a drop: caught in the same function, becomes a trace step
    "routed_nv.calc.trace._Dropped",
    # the kernel dropped route events (ENOBUFS): the watch catches it and reads everything again
    "routed_nv.directory.netlink_watch._Overflow",
}


def exception_classes() -> dict[str, type[BaseException]]:
    found = {}
    for info in pkgutil.walk_packages(routed_nv.__path__, "routed_nv."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{info.name}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_class_is_a_routed_nv_error() -> None:
    classes = exception_classes()
    assert classes.keys() >= SENTINELS  # a sentinel that is gone is taken off the list
    stray = [
        n for n, c in classes.items() if n not in SENTINELS and not issubclass(c, RoutedNvError)
    ]
    assert stray == []


def test_transient_errors_say_so() -> None:
    from routed_nv.agent.control import AgentDown, RequestFailed
    from routed_nv.cni.agent_socket import AgentDown as PluginAgentDown
    from routed_nv.cni.agent_socket import AgentRefused
    from routed_nv.config.loader import ConfigError
    from routed_nv.directory.birdc import BirdError, CommandError
    from routed_nv.model.keys import KeyFileError
    from routed_nv.routing.kernel import error_from_errno

    # 16: EBUSY
    for transient in (AgentDown("x"), PluginAgentDown("x"), BirdError("x"), error_from_errno(16)):
        assert isinstance(transient, TransientError) and transient.transient
    for permanent in (
        RequestFailed("refused", "x"),
        AgentRefused("refused", "x"),
        CommandError("configure", 8003, "syntax error"),
        ConfigError([]),
        KeyFileError("x"),
        error_from_errno(22),  # EINVAL
    ):
        assert not permanent.transient
