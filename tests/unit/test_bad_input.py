"""Bad input to `config check` and `endpoint add|del`: one clear line, never a traceback or a hang.

Permission problems cannot be staged for root by chmod alone: those cases run the CLI in a
child process without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, as any non-root user would.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routed_nv.agent.runtime import RUNTIME_DROP_IN
from routed_nv.cli import main
from routed_nv.config.sources import TOO_DEEP

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"
LAYERS = [
    "routed-nv.toml",
    "conf.d/10-tenants.toml",
    "conf.d/20-endpoints.toml",
    "conf.d/30-static-peers.toml",
]
HANG = 60  # seconds: far above any real run; only a hang gets near it


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env or {})


def etc_with_psk(directory: Path) -> tuple[Path, dict[str, str]]:
    """The shipped example in directory, and an environment that names a PSK file it holds."""
    shutil.copytree(EXAMPLES, directory, dirs_exist_ok=True)
    psk = directory / "ike.psk"
    psk.write_text("a pre-shared key\n")
    psk.chmod(0o600)
    return directory / "routed-nv.toml", {"ROUTED_NV_KEYING__PSK_FILE": str(psk)}


def assert_one_clean_line(result: Result, *expected: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == list(expected)


def _drop_dac() -> None:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, out of the bounding set
        if prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_unprivileged(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """routed-nv in a child process that file modes apply to, even when the tests run as root."""
    return subprocess.run(
        [sys.executable, "-m", "routed_nv", *args],
        capture_output=True,
        text=True,
        timeout=HANG,
        env={"PATH": os.environ["PATH"], **(env or {})},
        preexec_fn=_drop_dac if os.geteuid() == 0 else None,
    )


@pytest.mark.parametrize("kind", ["character device", "FIFO"])
def test_config_check_reads_only_regular_files(tmp_path: Path, kind: str) -> None:
    if kind == "FIFO":
        path = tmp_path / "routed-nv.toml"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    # a child process with a timeout: before, both waited forever
    result = run_unprivileged("config", "check", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path.name}: is a {kind}: only regular files are read as configuration"
    ]


def test_config_check_refuses_a_file_above_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "routed-nv.toml"
    with path.open("wb") as fh:
        fh.truncate(16 * 2**20 + 1)
    result = invoke("config", "check", str(path))
    assert result.exit_code == 1
    assert_one_clean_line(result, "routed-nv.toml: is larger than the limit of 16 MiB")


@pytest.mark.parametrize("levels", [40, 5000])
def test_deeply_nested_toml_is_one_line_naming_the_file(tmp_path: Path, levels: int) -> None:
    path, env = etc_with_psk(tmp_path)
    (tmp_path / "conf.d" / "50-deep.toml").write_text(f"a = {'[' * levels}{']' * levels}\n")
    result = invoke("config", "check", str(path), env=env)
    assert result.exit_code == 1
    assert_one_clean_line(result, f"conf.d/50-deep.toml: {TOO_DEEP}")


def test_deeply_nested_environment_value_is_one_line(tmp_path: Path) -> None:
    path, env = etc_with_psk(tmp_path)
    env["ROUTED_NV_HOST__X"] = "[" * 40 + "]" * 40
    result = invoke("config", "check", str(path), env=env)
    assert result.exit_code == 1
    assert_one_clean_line(result, f"environment ROUTED_NV_HOST__X: {TOO_DEEP}")


def test_a_drop_in_dir_that_is_named_must_exist(tmp_path: Path) -> None:
    path, env = etc_with_psk(tmp_path)
    missing = tmp_path / "nonexistent"
    result = invoke("config", "check", "--drop-in-dir", str(missing), str(path), env=env)
    assert result.exit_code == 1
    assert_one_clean_line(result, f"{missing}: no such drop-in directory")
    # the default conf.d may be absent: a host with a single file
    shutil.rmtree(tmp_path / "conf.d")
    (tmp_path / "routed-nv.toml").write_text(
        (EXAMPLES / "routed-nv.toml").read_text().replace('mode = "ike"', 'mode = "static"')
    )
    env = {"ROUTED_NV_KEYING__SECRETS_DIR": str(tmp_path)}
    result = invoke("config", "check", str(path), env=env)
    assert result.stdout == "ok: host host1: 0 tenants, 0 endpoints, 0 peers\n", result.stderr


def test_an_unreadable_drop_in_dir_or_file_is_an_error(tmp_path: Path) -> None:
    path, env = etc_with_psk(tmp_path)
    conf_d = tmp_path / "conf.d"
    tmp_path.chmod(0o755)
    (tmp_path / "ike.psk").chmod(0o600)
    conf_d.chmod(0o300)  # can enter, cannot list
    try:
        result = run_unprivileged("config", "check", "--skip-files", str(path), env=env)
    finally:
        conf_d.chmod(0o755)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{conf_d}: cannot list the drop-ins: Permission denied"]
    (conf_d / "10-tenants.toml").chmod(0o000)
    result = run_unprivileged("config", "check", "--skip-files", str(path), env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["conf.d/10-tenants.toml: permission denied"]


def test_config_check_checks_the_files_the_configuration_names(tmp_path: Path) -> None:
    path, env = etc_with_psk(tmp_path)
    psk = tmp_path / "ike.psk"
    assert invoke("config", "check", str(path), env=env).exit_code == 0
    psk.chmod(0o644)
    result = invoke("config", "check", str(path), env=env)
    assert result.exit_code == 1
    assert_one_clean_line(
        result,
        f"environment ROUTED_NV_KEYING__PSK_FILE: keying.psk_file: '{psk}' has mode 0644: a "
        "secret must not be accessible by group or others (chmod 600)",
    )
    psk.unlink()
    password = tmp_path / "bgp.password"
    password.mkdir()
    keys = tmp_path / "keys"
    drop_in = tmp_path / "conf.d" / "40-files.toml"
    drop_in.write_text(f'[directory]\npassword_file = "{password}"\n')
    result = invoke("config", "check", str(path), env=env)
    assert_one_clean_line(
        result,
        f"environment ROUTED_NV_KEYING__PSK_FILE: keying.psk_file: '{psk}' does not exist",
        f"conf.d/40-files.toml: directory.password_file: '{password}' is a directory, not a "
        "regular file",
    )
    keys.mkdir()
    (keys / "blue.key").write_text("0 " + "ab" * 32 + "\n")
    (keys / "blue.key").chmod(0o600)
    (keys / "red.key").symlink_to(keys / "blue.key")
    drop_in.write_text(f'[keying]\nmode = "static"\nsecrets_dir = "{keys}"\n')
    result = invoke("config", "check", str(path))
    assert_one_clean_line(
        result,
        f"conf.d/40-files.toml: keying.secrets_dir: '{keys}' has no usable key of tenant red: "
        f"{keys / 'red.key'} is a symbolic link: secret files are opened without following links",
    )


def test_endpoint_add_with_an_unwritable_drop_in_is_one_line(tmp_path: Path) -> None:
    path, _ = etc_with_psk(tmp_path)
    tmp_path.chmod(0o755)
    conf_d = tmp_path / "conf.d"
    conf_d.chmod(0o555)
    args = ["--tenant", "blue", "--address", "10.0.0.5", "--netns", "web2", "-c", str(path)]
    result = run_unprivileged("endpoint", "add", "web2", *args, "--run-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    lock = conf_d / f".{RUNTIME_DROP_IN}.lock"
    assert result.stderr.splitlines() == [
        f"{lock}: cannot write the run-time drop-in: Permission denied; nothing changed"
    ]
    # the lock exists, the directory does not take the new file
    conf_d.chmod(0o755)
    lock.touch()
    conf_d.chmod(0o555)
    result = run_unprivileged("endpoint", "add", "web2", *args, "--run-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "cannot write the run-time drop-in: Permission denied; nothing changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (conf_d / RUNTIME_DROP_IN).exists()


def test_oversized_input_is_shortened_in_messages(tmp_path: Path) -> None:
    path, env = etc_with_psk(tmp_path)
    name = "x" * 100_000
    (tmp_path / "conf.d" / "50-big.toml").write_text(f'[tenants.{name}]\nid = "{name}"\n')
    result = invoke("config", "check", str(path), env=env)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert 0 < len(result.stderr) < 2000
    assert all(
        line.startswith("conf.d/50-big.toml: tenants.xxx") for line in result.stderr.splitlines()
    )
    (tmp_path / "conf.d" / "50-big.toml").unlink()
    run = ["-c", str(path), "--run-dir", str(tmp_path)]
    added = invoke("endpoint", "add", name, "--tenant", "blue", "--address", "10.0.0.5", *run)
    assert added.exit_code == 2 and 0 < len(added.stderr) < 1000
    deleted = invoke("endpoint", "del", name, *run)
    assert deleted.exit_code == 1 and 0 < len(deleted.stderr) < 1000
    for question in ([name, "10.0.0.1"], ["blue", name]):  # answered from the configuration
        found = invoke("lookup", *question, *run)
        assert found.exit_code == 2 and 0 < len(found.stderr) < 1000


# --- mutated example configurations ---------------------------------------------------------

WHOLE_FILE = (
    "not valid TOML: ",
    "not UTF-8 text",
    TOO_DEEP,
    "is larger than the limit",
)
TOKENS = [
    b"[",
    b"]",
    b"=",
    b'"',
    b"'",
    b"\n",
    b"{",
    b"}",
    b",",
    b".",
    b"\x00",
    b"\xff",
    b"[[",
    b"#",
]
scalars = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=20)
    | st.sampled_from(["", "x" * 5000, "10.0.0.1", "2001:db8::/64", "eth0", "static", "bgp"])
    | st.booleans()
    | st.floats(allow_nan=False)
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(data: object, at: tuple = ()) -> list[tuple]:
    found = [at] if at else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*at, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _paths(value, (*at, i))
    return found


@st.composite
def mutants(draw: st.DrawFn) -> tuple[str, bytes]:
    layer = draw(st.sampled_from(LAYERS))
    text = (EXAMPLES / layer).read_bytes()
    if draw(st.booleans()):  # bytes: break the syntax
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 20))
        insert = draw(
            st.sampled_from(TOKENS)
            | st.binary(max_size=12)
            | st.integers(2, 6000).map(lambda n: b"a = " + b"[" * n + b"]" * n + b"\n")
        )
        return layer, text[:at] + insert + text[at + cut :]
    data = tomllib.loads(text.decode())  # structure: keep the syntax, break the meaning
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=10))] = draw(toml_values)
    else:
        parent[path[-1]] = draw(toml_values)
    return layer, tomli_w.dumps(data).encode()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_mutated_examples_give_exit_0_or_one_line_per_problem(mutant: tuple[str, bytes]) -> None:
    layer, content = mutant
    with tempfile.TemporaryDirectory() as tmp:
        path, env = etc_with_psk(Path(tmp))
        (Path(tmp) / layer).write_bytes(content)
        result = invoke("config", "check", str(path), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 1)
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert result.stdout.startswith("ok: host ") and result.stderr == ""
        return
    lines = result.stderr.splitlines()
    assert lines
    sources = [*LAYERS, "environment ROUTED_NV_KEYING__PSK_FILE"]
    for line in lines:
        assert len(line) < 1000
        source = next((s for s in sources if line.startswith(f"{s}: ")), None)
        assert source is not None, line
        rest = line.removeprefix(f"{source}: ")
        if not rest.startswith(WHOLE_FILE):
            field, sep, _ = rest.partition(": ")
            assert sep and field, line


def test_addresses_and_networks_must_be_strings(tmp_path: Path) -> None:
    path, env = etc_with_psk(tmp_path)
    (tmp_path / "conf.d" / "50-types.toml").write_text(
        "[tenants.blue]\nipv4 = [true]\n[endpoints.blue-web]\naddresses = [167772161]\n"
    )
    result = invoke("config", "check", str(path), env=env)
    assert_one_clean_line(
        result,
        "conf.d/50-types.toml: tenants.blue.ipv4[0]: True is not an IPv4 network (a string)",
        "conf.d/50-types.toml: endpoints.blue-web.addresses[0]: 167772161 is not an IPv4 or "
        "IPv6 address (a string)",
    )
