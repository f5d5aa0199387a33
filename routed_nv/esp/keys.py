"""Static keying: reading and parsing the per-tenant secret files.

`<secrets_dir>/<tenant name>.key`, mode 0600 (group/world access is refused, as ssh does):

    # comments and blank lines are ignored
    0 <hex secret, >= 32 bytes>
    1 <hex secret, >= 32 bytes> active

Each line is one key generation (0..3, the SPI's generation bits). The generation marked `active`
is used for sending; every listed generation is accepted on receive, which is what makes rotation
make-before-break (docs/keys.md). With a single generation the marker may be left out.

The derivation and the types are in model/keys.py; this module reads and parses the files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from routed_nv.model import spi
from routed_nv.model.keys import MIN_SECRET_BYTES, KeyFileError, TenantKeys
from routed_nv.model.secret import Secret

_ACTIVE = "active"


def key_file(secrets_dir: Path, tenant: str) -> Path:
    return secrets_dir / f"{tenant}.key"


def load_all(secrets_dir: Path, tenants: Iterable[str]) -> dict[str, TenantKeys | KeyFileError]:
    """Each tenant's `<secrets_dir>/<tenant>.key`, read afresh (rotation is edit + apply); a file
    that cannot be used is kept as its error, which the calculation reports against its tenant."""
    loaded: dict[str, TenantKeys | KeyFileError] = {}
    for tenant in tenants:
        try:
            loaded[tenant] = load_tenant_keys(key_file(secrets_dir, tenant), tenant)
        except KeyFileError as exc:
            loaded[tenant] = exc
    return loaded


def read_files(private: Iterable[Path], public: Iterable[Path]) -> dict[Path, str | KeyFileError]:
    """IKE credentials: each file's text, or why it cannot be used. Secret files (`private`) are
    checked like key files; certificates (`public`) only need to be readable ASCII."""
    texts: dict[Path, str | KeyFileError] = {}
    for path, read in [*((p, read_private) for p in private), *((p, read_public) for p in public)]:
        try:
            texts[path] = read(path)
        except KeyFileError as exc:
            texts[path] = exc
    return texts


def load_tenant_keys(path: Path, tenant: str) -> TenantKeys:
    return parse_key_file(read_private(path), path, tenant)


def parse_key_file(text: str, path: Path, tenant: str) -> TenantKeys:
    generations: dict[int, Secret] = {}
    active: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue

        def fail(problem: str, lineno: int = lineno) -> KeyFileError:
            return KeyFileError(f"{path}:{lineno}: {problem}")

        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != _ACTIVE):
            raise fail(f"expected '<generation> <hex secret> [{_ACTIVE}]'")
        gen = _generation(words[0], fail)
        if gen in generations:
            raise fail(f"generation {gen} is listed twice")
        generations[gen] = _secret(words[1], fail)
        if len(words) == 3:
            active.append(gen)
    if not generations:
        raise KeyFileError(f"{path}: no key generation in the file")
    if len(active) > 1:
        raise KeyFileError(f"{path}: generations {active} are all marked {_ACTIVE}; mark one")
    if not active and len(generations) > 1:
        raise KeyFileError(f"{path}: several generations and none is marked {_ACTIVE}")
    return TenantKeys(tenant, path, generations, active[0] if active else next(iter(generations)))


def read_private(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: secret file is missing") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open secret file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # of the file we opened, not of whatever the path names now
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: secret file is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open: a secret file "
                "must not be accessible by group or others (chmod 600)"
            )
        try:
            return f.read().decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"{path}: secret file is not ASCII text") from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read secret file: {exc.strerror}") from None


def _generation(word: str, fail: Callable[[str], KeyFileError]) -> int:
    if not word.isdigit() or not 0 <= int(word) <= spi.GENERATION_MAX:
        raise fail(f"generation {word!r} is not a number 0..{spi.GENERATION_MAX}")
    return int(word)


def _secret(word: str, fail: Callable[[str], KeyFileError]) -> Secret:
    # The word is the secret: never echo it into an error message.
    try:
        value = bytes.fromhex(word.removeprefix("0x"))
    except ValueError:
        raise fail("the secret is not hexadecimal") from None
    if len(value) < MIN_SECRET_BYTES:
        raise fail(f"the secret has {len(value)} bytes; at least {MIN_SECRET_BYTES} are required")
    return Secret(value)


def read_public(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: certificate file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read certificate file: {exc}") from None
