"""Checks of the configuration against this host's kernel: can it do each tenant's protection
mode? Only `routed-nv config check` on the host runs them (not with --skip-files), from the
facts `doctor` reads (a test SA per mode in a scratch netns, else modules and /proc/crypto) and
judges (kernel_features.protection_support).

AES-GCM, the default, is left to doctor, which requires it of every host: a kernel without it
runs no tenant in any mode worth checking here.
"""

from __future__ import annotations

from collections.abc import Callable

from routed_nv.config.crosscheck import Found
from routed_nv.config.model import Config
from routed_nv.kernel_features import MachineFacts, protection_support
from routed_nv.model.protection import DEFAULT


def problems(config: Config, read_facts: Callable[[], MachineFacts]) -> list[Found]:
    """`read_facts` (doctor.kernel_facts: it makes a scratch netns) is only called when a tenant
    uses a mode other than the default."""
    used = [
        (where, mode)
        for name, tenant in config.tenants.items()
        for where, mode in [
            (("tenants", name, "protection"), tenant.protection),
            *(
                (("tenants", name, "generation_protection", str(gen)), mode)
                for gen, mode in sorted(tenant.generation_protection.items())
            ),
        ]
        if mode is not DEFAULT
    ]
    if not used:
        return []
    facts = read_facts()
    support = protection_support(facts)
    return [
        (
            where,
            str(mode),
            f"is not supported by this kernel ({facts.release}): {support[mode][1]} "
            "(routed-nv doctor lists the modes it supports)",
        )
        for where, mode in used
        if not support[mode][0]
    ]
