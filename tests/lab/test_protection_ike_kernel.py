"""Protection modes with IKE keying on a real kernel: the IKE lab (3 hosts, charon on each, PSK)
with blue in chacha20-poly1305 and red in integrity (AES-GMAC): charon negotiates each tenant's
mode (calc/ike.py: esp_proposals), the kernel gets the mode's transform, tenants stay apart."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from routed_nv.lab.checks import tenant_matrix, underlay_capture
from routed_nv.model import markers
from routed_nv.model.protection import Protection, suite
from tests.lab.test_ike_kernel import HOSTS, IkeLab, ike_lab, psk_auth

pytestmark = pytest.mark.kernel

MODES = {"blue": (100, Protection.CHACHA20_POLY1305), "red": (200, Protection.INTEGRITY)}


@pytest.fixture(scope="module")
def ike(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IkeLab]:
    workdir = tmp_path_factory.mktemp("ike-protection")
    tenants: dict[str, dict[str, object]] = {
        name: {"protection": str(mode)} for name, (_, mode) in MODES.items()
    }
    auth = psk_auth(workdir, "lab pre-shared key " + "y" * 32)
    with ike_lab(workdir, auth, "ike-protection-kernel", tenants) as lab:
        lab.settle()
        yield lab


def test_charon_installs_each_tenants_mode(ike: IkeLab) -> None:
    for host in HOSTS:
        states = ike.sh(host, "ip xfrm state")
        blocks = ["src " + b for b in states.split("src ")[1:]]
        for _, (tid, mode) in MODES.items():
            mine = [b for b in blocks if f"reqid {markers.reqid(tid)} " in b]
            # in and out, per peer (a rekey may briefly leave more)
            assert len(mine) >= 4, (host, mine)
            assert all(f"aead {suite(mode).algorithm} " in b for b in mine), (host, mine)
        assert not re.search(r"rfc4106", states), states


def test_tenants_in_both_modes_reach_their_own_only_over_esp(ike: IkeLab) -> None:
    with underlay_capture(ike.lab) as wire_reports:
        reaches = tenant_matrix(ike.lab)
    (wire,) = wire_reports

    assert len(reaches) == 24 and [r for r in reaches if not r.ok] == []
    assert wire.leaks == []
