"""Checks of the configuration against this host's kernel: can it do each tenant's protection
mode? Only `routed-nv config check` on the host runs them (not with --skip-files), from the
facts `doctor` reads (modules, /proc/crypto) and judges (kernel_features.protection_support).

AES-GCM, the default, is left to doctor, which requires it of every host: a kernel without it
runs no tenant in any mode worth checking here.
"""

from __future__ import annotations

from collections.abc import Iterator

from routed_nv.config.crosscheck import Found
from routed_nv.config.model import Config
from routed_nv.kernel_features import MachineFacts, protection_support
from routed_nv.model.protection import DEFAULT


def problems(config: Config, facts: MachineFacts) -> list[Found]:
    return list(_protection(config, facts))


def _protection(config: Config, facts: MachineFacts) -> Iterator[Found]:
    support = protection_support(facts)
    for name, tenant in config.tenants.items():
        used = [
            (("tenants", name, "protection"), tenant.protection),
            *(
                (("tenants", name, "generation_protection", str(gen)), mode)
                for gen, mode in sorted(tenant.generation_protection.items())
            ),
        ]
        for where, mode in used:
            ok, detail = support[mode]
            if mode is not DEFAULT and not ok:
                yield (
                    where,
                    str(mode),
                    f"is not supported by this kernel ({facts.release}): {detail} "
                    "(routed-nv doctor lists the modes it supports)",
                )
