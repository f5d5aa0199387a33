"""Checks of the files a configuration names: keys, certificates, the BGP password file, the
state directory.

Only `routed-nv config check` runs them (the agent reads these files when it uses them and
reports its own errors): a configuration tool or ExecStartPre learns of a missing key, an
unreadable certificate or a secret readable by others before the agent needs it. Secrets get the
rule the agent applies to them (esp/keys.py): a regular file, no access for group or others.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from routed_nv.config.crosscheck import Found
from routed_nv.config.model import Config, KeyingMode
from routed_nv.config.sources import file_kind


def problems(config: Config) -> list[Found]:
    return [*_keying(config), *_password(config), *_state_dir(config)]


def _state_dir(config: Config) -> Iterator[Found]:
    # Static keying persists sequence reservations there; missing is fine (the agent makes it).
    path = config.agent.state_dir
    if config.keying.mode is not KeyingMode.STATIC or not os.path.lexists(path):
        return
    where = ("agent", "state_dir")
    if not path.is_dir():
        yield where, str(path), "is not a directory"
    elif not os.access(path, os.W_OK | os.X_OK):
        yield where, str(path), "is not writable"


def _keying(config: Config) -> Iterator[Found]:
    keying = config.keying
    if keying.mode is KeyingMode.STATIC:
        where, secrets = ("keying", "secrets_dir"), keying.secrets_dir
        try:
            is_dir = stat.S_ISDIR(os.stat(secrets).st_mode)
        except FileNotFoundError:
            yield where, str(secrets), "does not exist"
            return
        except OSError as exc:
            yield where, str(secrets), f"cannot be read: {exc.strerror}"
            return
        if not is_dir:
            yield where, str(secrets), "is not a directory"
            return
        for tenant in config.tenants:
            key = secrets / f"{tenant}.key"
            if problem := _file(key, secret=True):
                problem = f"{key} {problem}"
            else:
                problem = _key_content(key, tenant)
            if problem:
                yield where, str(secrets), f"has no usable key of tenant {tenant}: {problem}"
        return
    for field, secret in (("psk_file", True), ("ca_cert", False), ("cert", False), ("key", True)):
        path = getattr(keying, field)
        if path is not None and (problem := _file(path, secret, follow=not secret)):
            yield ("keying", field), str(path), problem


def _key_content(path: Path, tenant: str) -> str | None:
    """What the agent's parser finds wrong in a key file that opens fine (empty, short or
    non-hex secret, no active generation), as `<file>[:line]: problem`, or None: `apply` would
    otherwise be the first to find it."""
    # both load cryptography (model/keys.py), which config check needs only here
    from routed_nv.esp.keys import load_tenant_keys
    from routed_nv.model.keys import KeyFileError

    try:
        load_tenant_keys(path, tenant)
    except KeyFileError as exc:
        return str(exc)  # names the file and line, never the secret
    return None


def _password(config: Config) -> Iterator[Found]:
    path = config.directory.password_file
    # the agent reads it through links (bird_config.read_password)
    if path is not None and (problem := _file(path, secret=True, follow=True)):
        yield ("directory", "password_file"), str(path), problem


def _file(path: Path, secret: bool, follow: bool = False) -> str | None:
    """What is wrong with reading path as the agent does, or None."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return "does not exist"
    except PermissionError:
        return "is not readable (permission denied)"
    except OSError as exc:
        if not follow and path.is_symlink():
            return "is a symbolic link: secret files are opened without following links"
        return f"cannot be opened: {exc.strerror}"
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if not stat.S_ISREG(mode):
        return f"is a {file_kind(mode)}, not a regular file"
    if secret and mode & 0o077:
        return (
            f"has mode {stat.S_IMODE(mode):04o}: a secret must not be accessible by group or "
            "others (chmod 600)"
        )
    return None
