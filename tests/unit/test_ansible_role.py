"""The Ansible role in configs/ansible: syntax, lint, templates and a check-mode run on localhost.

Ansible lives in its own venv (.venv-ansible, made by scripts/bootstrap-ansible) so that its
dependencies never mix with routed_nv's; the tests skip only when it is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "configs" / "ansible"
ROLE = ANSIBLE_DIR / "roles" / "routed_nv"
VENV_BIN = ROOT / ".venv-ansible" / "bin"


def _tool(name: str) -> str | None:
    return str(VENV_BIN / name) if (VENV_BIN / name).exists() else shutil.which(name)


pytestmark = pytest.mark.skipif(
    _tool("ansible-playbook") is None, reason="ansible not installed (scripts/bootstrap-ansible)"
)


def _run(tool: str, *args: str, cwd: Path = ANSIBLE_DIR) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",  # Debian's, which has python3-apt
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    command = [_tool(tool) or tool, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _render(tmp_path: Path, template: str, *extra: str) -> dict[str, object]:
    dest = tmp_path / "rendered.toml"
    result = _run(
        "ansible",
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        "ansible.builtin.template",
        "-a",
        f"src={ROLE / 'templates' / template} dest={dest}",
        "-e",
        f"@{ROLE / 'defaults' / 'main.yml'}",
        "-e",
        f"@{ANSIBLE_DIR / 'host_vars' / 'host1.yml'}",
        "-e",
        "vault_routed_nv_ike_psk=unused",
        *extra,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return tomllib.loads(dest.read_text())


def test_playbook_syntax() -> None:
    result = _run("ansible-playbook", "-i", "localhost,", "--syntax-check", "site.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_is_clean(tmp_path: Path) -> None:
    # Linted in a copy (symlinks resolved, as when the role is vendored): ansible-lint creates
    # .ansible/ in the project it lints.
    project = tmp_path / "ansible"
    shutil.copytree(ANSIBLE_DIR, project, ignore=shutil.ignore_patterns(".ansible"))
    result = _run("ansible-lint", "--offline", "site.yml", "roles/routed_nv", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_host_file_template_renders_the_shipped_example(tmp_path: Path) -> None:
    # host_vars/host1.yml mirrors configs/routed-nv.toml: both must mean the same configuration.
    rendered = _render(tmp_path, "routed-nv.toml.j2")
    assert rendered == tomllib.loads((ROOT / "configs" / "routed-nv.toml").read_text())


def test_drop_in_template_renders_the_shipped_tenants(tmp_path: Path) -> None:
    shipped = ROOT / "configs" / "conf.d" / "10-tenants.toml"
    # The role loops over routed_nv_drop_ins; one item of that loop, as Ansible templates it.
    item = '{"item": {"value": "{{ routed_nv_drop_ins[\'10-tenants.toml\'] }}"}}'
    assert _render(tmp_path, "drop-in.toml.j2", "-e", item) == tomllib.loads(shipped.read_text())


def test_check_mode_run_on_localhost(tmp_path: Path) -> None:
    """The whole role in check mode on this machine: every task can be evaluated, nothing changes.

    The service is not managed: CI may run without systemd as init, and the unit is not installed.
    """
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- name: routed_nv in check mode\n  hosts: localhost\n  roles: [routed_nv]\n"
    )
    wheel = tmp_path / "routed_nv-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")  # check mode copies nothing and installs nothing
    result = _run(
        "ansible-playbook",
        "-i",
        "localhost,",
        "-c",
        "local",
        "--check",
        str(playbook),
        "-e",
        f"@{ANSIBLE_DIR / 'host_vars' / 'host1.yml'}",
        "-e",
        f"routed_nv_source={wheel}",
        "-e",
        "vault_routed_nv_ike_psk=check-mode-psk",
        "-e",
        "routed_nv_manage_service=false",
        "-e",
        "routed_nv_libvirt_hook=true",  # the hook's tasks too
        "-e",
        "routed_nv_cni=true",  # and the CNI plugin's
        "-e",
        f"routed_nv_config_dir={tmp_path / 'etc'}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed=0" in result.stdout
    for task in ("Put the libvirt qemu hook's command", "Put the CNI plugin where runtimes look"):
        assert task in result.stdout
        after = result.stdout.split(task, 1)[1].split("TASK [", 1)[0]
        assert "changed: [localhost]" in after, after  # run, not skipped


def test_config_tasks_validate_with_routed_nv(tmp_path: Path) -> None:
    """The configuration tasks for real, into a scratch directory, with this checkout's routed-nv.

    Proves the validate commands work (a rendered file is checked before it replaces the
    installed one), that an invalid drop-in never reaches the directory, and idempotence.
    """
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- name: routed_nv configuration\n  hosts: localhost\n  roles: [routed_nv]\n"
    )
    etc = tmp_path / "etc"
    psk = etc / "keys" / "ike.psk"

    def play(*extra: str) -> subprocess.CompletedProcess[str]:
        return _run(
            "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "--tags",
            "config",
            str(playbook),
            "-e",
            f"@{ANSIBLE_DIR / 'host_vars' / 'host1.yml'}",
            "-e",
            "routed_nv_source=unused",
            "-e",
            "vault_routed_nv_ike_psk=test-psk",
            "-e",
            "routed_nv_manage_service=false",
            "-e",
            f"routed_nv_config_dir={etc}",
            "-e",
            # the host file names the PSK where the role installs it: config check checks it
            json.dumps({"routed_nv_keying": {"mode": "ike", "psk_file": str(psk)}}),
            "-e",
            f"routed_nv_bin={ROOT / '.venv' / 'bin' / 'routed-nv'}",
            *extra,
        )

    first = play()
    assert first.returncode == 0, first.stdout + first.stderr
    tenants = etc / "conf.d" / "10-tenants.toml"
    installed = tenants.read_text()
    assert oct(psk.stat().st_mode & 0o777) == "0o600"

    again = play()
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout

    invalid = '{"routed_nv_drop_ins": {"10-tenants.toml": {"tenants": {"blue": {"id": 0}}}}}'
    rejected = play("-e", invalid)
    assert rejected.returncode != 0
    assert "tenants.blue.id: 0 is out of range" in rejected.stdout, rejected.stdout
    assert tenants.read_text() == installed
