"""The `routed-nv` command line as a user and a configuration tool see it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from routed_nv import doctor
from routed_nv.cli import main
from routed_nv.kernel_features import evaluate

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def all_commands(group=main, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the top level loads its commands lazily
        yield (*prefix, name)
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", list(all_commands()), ids=" ".join)
def test_every_command_has_help_with_examples(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    if not hasattr(main.get_command(None, path[0]), "commands") or len(path) > 1:
        assert "Examples:" in result.stdout


def test_config_check_accepts_the_shipped_example(tmp_path: Path) -> None:
    psk = tmp_path / "ike.psk"
    psk.write_text("a pre-shared key\n")
    psk.chmod(0o600)
    env = {"ROUTED_NV_KEYING__PSK_FILE": str(psk)}
    result = invoke("config", "check", str(EXAMPLES / "routed-nv.toml"), env=env)
    assert result.exit_code == 0
    assert result.stdout == "ok: host host1: 2 tenants, 2 endpoints, 1 peers\n"
    # away from its host, the files it names need not exist
    result = invoke("config", "check", "--skip-files", str(EXAMPLES / "routed-nv.toml"))
    assert result.exit_code == 0


def test_config_check_reports_one_line_per_problem_and_exits_1(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    tenants = tmp_path / "conf.d" / "10-tenants.toml"
    tenants.write_text(tenants.read_text().replace("id = 100", "id = 70000"))
    result = invoke("config", "check", str(tmp_path / "routed-nv.toml"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "conf.d/10-tenants.toml: tenants.blue.id: 70000 is out of range 1..65535"
    ]


def test_config_check_as_drop_in_uses_the_installed_files(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "etc")
    rendered = tmp_path / "rendered.toml"
    rendered.write_text('[tenants.blue]\nid = 100\nipv4 = ["10.1.0.0/24"]\n')
    env = {"ROUTED_NV_CONFIG": str(tmp_path / "etc" / "routed-nv.toml")}
    result = invoke("config", "check", "--as-drop-in", "10-tenants.toml", str(rendered), env=env)
    assert result.exit_code == 1
    assert "conf.d/20-endpoints.toml: endpoints.blue-web.addresses[0]: '10.0.0.1' is outside" in (
        result.stderr
    )


def test_bgp_settings_on_a_static_host_are_named_in_a_warning(tmp_path: Path) -> None:
    # issue 17 item 1: asn, route_reflectors and upstreams were silently ignored
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    path = str(tmp_path / "routed-nv.toml")
    (tmp_path / "conf.d" / "40-bgp.toml").write_text(
        '[directory]\nasn = 65001\nroute_reflectors = ["2001:db8:ff::1"]\n'
        '[[directory.upstreams]]\naddress = "2001:db8:0:1::fffe"\nasn = 65100\n'
    )
    warning = (
        "warning: directory.asn, directory.route_reflectors, directory.upstreams are set but "
        'directory.source is "static": the agent ignores BGP settings and takes remote endpoints '
        'from peers and remote_endpoints (set directory.source = "bgp" to use BIRD)'
    )
    result = invoke("config", "check", "--skip-files", path)
    assert (result.exit_code, result.stdout) == (
        0,
        "ok: host host1: 2 tenants, 2 endpoints, 1 peers\n",
    )
    assert result.stderr.splitlines() == [warning]
    result = invoke("config", "show", path)
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [warning]
    assert json.loads(result.stdout)["directory"]["source"] == "static"
    # the same settings with the BGP source are used: nothing to warn about
    env = {"ROUTED_NV_DIRECTORY__SOURCE": "bgp"}
    result = invoke("config", "check", "--skip-files", path, env=env)
    assert (result.exit_code, result.stderr) == (0, "")
    # the shipped example does not warn
    result = invoke("config", "check", "--skip-files", str(EXAMPLES / "routed-nv.toml"))
    assert (result.exit_code, result.stderr) == (0, "")


def test_config_show_prints_the_merged_configuration_with_env_overrides() -> None:
    result = invoke(
        "config", "show", str(EXAMPLES / "routed-nv.toml"), env={"ROUTED_NV_HOST__UPLINK": "eth9"}
    )
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown["host"]["uplink"] == "eth9"
    assert shown["tenants"]["red"]["id"] == 200
    assert shown["keying"]["mode"] == "ike"


def test_doctor_json_and_exit_status_follow_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = doctor.gather_facts()
    report = evaluate(facts)
    monkeypatch.setattr(doctor, "diagnose", lambda: report)
    result = invoke("doctor", "-o", "json")
    shown = json.loads(result.stdout)
    assert result.exit_code == (0 if report.datapath_ready else 1)
    assert shown["missing"] == report.missing
    names = {f["name"] for f in shown["features"]}
    assert {"esp4", "esp6", "xfrm_user", "vrf", "ip6_tunnel", "gcm"} <= names
    table = invoke("doctor")
    assert table.exit_code == result.exit_code
    assert "datapath:" in table.stdout


def test_apply_with_an_invalid_config_applies_nothing_and_exits_2(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    (tmp_path / "conf.d" / "99-bad.toml").write_text("[host]\nid = 0\n")
    result = invoke("apply", "-c", str(tmp_path / "routed-nv.toml"))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["conf.d/99-bad.toml: host.id: 0 is out of range 1..16383"]
    assert result.stdout == ""


# issue 17 item 3: one way to name the configuration, the agent and the namespace. endpoint add
# keeps its own --netns: the workload's namespace, not where routed_nv works.
SCHEME = {
    "-c": ("--config", "ROUTED_NV_CONFIG"),
    "--run-dir": ("--run-dir", "ROUTED_NV_RUN_DIR"),
    "--netns": ("--netns", "ROUTED_NV_NETNS"),
}
OPTIONS = {
    ("agent",): ("-c", "--run-dir", "--netns"),
    ("apply",): ("-c", "--run-dir", "--netns"),
    ("config", "check"): ("-c",),
    ("config", "show"): ("-c",),
    ("directory", "clear-duplicate"): ("-c", "--run-dir"),
    ("directory", "dump"): ("-c", "--run-dir"),
    ("endpoint", "add"): ("-c", "--run-dir"),
    ("endpoint", "del"): ("-c", "--run-dir"),
    ("endpoint", "list"): ("-c", "--run-dir"),
    ("iproute2-names",): ("-c",),
    ("lookup",): ("-c", "--run-dir"),
    ("sa", "list"): ("-c", "--netns"),
    ("status",): ("-c", "--run-dir"),
    ("trace",): ("-c", "--run-dir", "--netns"),
}


def test_the_scheme_covers_every_command() -> None:
    commands = set()

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name in group.list_commands(click.Context(group)):
            command = group.get_command(click.Context(group), name)
            if isinstance(command, click.Group):
                walk(command, (*path, name))
            elif any(set(p.opts) & {"-c", "--run-dir", "--netns"} for p in command.params):
                commands.add((*path, name))

    walk(main, ())
    assert commands - set(OPTIONS) == set()


@pytest.mark.parametrize("path", OPTIONS, ids=" ".join)
def test_every_command_names_config_agent_and_netns_the_same_way(path: tuple[str, ...]) -> None:
    command = main
    for name in path:
        command = command.get_command(click.Context(command), name)
    params = {opt: p for p in command.params for opt in p.opts}
    for flag in OPTIONS[path]:
        long, env = SCHEME[flag]
        assert flag in params and long in params[flag].opts, (path, flag)
        # -c's default is resolved by the loader ($ROUTED_NV_CONFIG), the others by click
        assert env in (params[flag].envvar or params[flag].help or ""), (path, flag)


def test_config_check_and_show_take_c_as_well_as_the_positional_path(tmp_path: Path) -> None:
    psk = tmp_path / "ike.psk"
    psk.write_text("a pre-shared key\n")
    psk.chmod(0o600)
    env = {"ROUTED_NV_KEYING__PSK_FILE": str(psk)}
    example = str(EXAMPLES / "routed-nv.toml")
    for args in (["-c", example], [example], ["-c", example, example]):
        result = invoke("config", "check", *args, env=env)
        assert (result.exit_code, result.stdout) == (
            0,
            "ok: host host1: 2 tenants, 2 endpoints, 1 peers\n",
        )
        shown = invoke("config", "show", *args)
        assert json.loads(shown.stdout)["host"]["name"] == "host1"
    result = CliRunner().invoke(main, ["config", "check", "-c", example, str(psk)])
    assert result.exit_code == 2
    assert f"PATH {psk} and -c {example} name different files: give one" in result.stderr
    missing = tmp_path / "etc" / "routed-nv.toml"
    result = CliRunner().invoke(main, ["config", "show", "-c", str(missing)])
    assert (result.exit_code, result.stderr) == (
        1,
        f"{missing}: no such file; name the host file with -c/--config or $ROUTED_NV_CONFIG "
        "(default /etc/routed-nv/routed-nv.toml)\n",
    )


def test_readme_lists_every_command_and_help_shows_whole_summaries() -> None:
    # issue 17 item 8: the README listed 5 of 12 commands, --help cut summaries with "..."
    from routed_nv.cli import COMMANDS

    readme = (EXAMPLES.parent / "README.md").read_text()
    assert [c for c in COMMANDS if f"    routed-nv {c} " not in readme] == []
    result = invoke("--help")
    summaries = " ".join(result.stdout.split("Commands:")[1].split())
    assert "..." not in summaries
    assert "Keep this host's datapath where the configuration and the directory say, " in summaries
