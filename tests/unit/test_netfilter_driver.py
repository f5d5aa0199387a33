from dataclasses import replace

import pytest

from routed_nv.calc.netfilter import DISPATCH, desired_rules
from routed_nv.config.model import Config
from routed_nv.model.netfilter import Family, NetfilterError, Rule
from routed_nv.netfilter.driver import NetfilterDriver
from tests.factories import HOST1
from tests.fakes import FakeTables


def config(endpoints=None, tenants=None) -> Config:
    return Config.model_validate(
        {
            "host": HOST1,
            "tenants": tenants or {"blue": {"id": 100}, "red": {"id": 200}},
            "endpoints": endpoints
            or {
                "web": {
                    "tenant": "blue",
                    "addresses": ["10.0.0.1", "fd10::1"],
                    "interface": "wl-web",
                },
                "db": {"tenant": "red", "addresses": ["10.0.0.2"], "interface": "wl-db"},
            },
        }
    )


@pytest.fixture
def fake():
    return FakeTables()


def test_first_apply_creates_everything_and_second_changes_nothing(fake):
    driver = NetfilterDriver(fake)
    desired = desired_rules(config())
    result = driver.reconcile(desired)
    assert result.ok
    assert result.chains_set == len(desired.chains)
    assert result.hooks_fixed == 2
    assert not driver.plan(desired)  # converged: "apply twice, the second changes nothing"
    fake.applied.clear()
    assert driver.reconcile(desired).chains_set == 0
    assert fake.applied == []


def test_restart_adopts_existing_rules_without_touching_them(fake):
    NetfilterDriver(fake).reconcile(desired_rules(config()))
    fake.applied.clear()
    restarted = NetfilterDriver(fake)  # no memory, only the kernel's state
    restarted.reconcile(desired_rules(config()))
    assert fake.applied == []


def test_only_the_chain_that_differs_is_replaced(fake):
    driver = NetfilterDriver(fake)
    driver.reconcile(desired_rules(config()))
    fake.applied.clear()
    changed = config(
        endpoints={
            "web": {"tenant": "blue", "addresses": ["10.0.0.9", "fd10::1"], "interface": "wl-web"},
            "db": {"tenant": "red", "addresses": ["10.0.0.2"], "interface": "wl-db"},
        }
    )
    driver.reconcile(desired_rules(changed))
    assert [(c.family, sorted(c.set_chains)) for c in fake.applied] == [
        (Family.IPV4, ["RNV-SRC-wl-web"])
    ]
    assert fake.applied[0].set_chains["RNV-SRC-wl-web"][1] == Rule(
        target="RETURN", src="10.0.0.9/32"
    )


def test_removed_tenant_loses_its_chains_and_decap_rule_in_one_commit_per_table(fake):
    driver = NetfilterDriver(fake)
    driver.reconcile(desired_rules(config()))
    fake.applied.clear()
    blue_only = config(
        tenants={"blue": {"id": 100}},
        endpoints={"web": {"tenant": "blue", "addresses": ["10.0.0.1"], "interface": "wl-web"}},
    )
    driver.reconcile(desired_rules(blue_only))
    by_family = {c.family: c for c in fake.applied}
    assert by_family[Family.IPV4].delete_chains == ("RNV-SRC-wl-db",)
    assert not by_family[Family.IPV4].set_chains
    assert set(by_family[Family.IPV4].edit_chains) == {DISPATCH}
    assert by_family[Family.IPV6].delete_chains == ("RNV-SRC-wl-db",)
    assert set(by_family[Family.IPV6].set_chains) == {"RNV-DECAP", "RNV-SRC-wl-web"}
    assert not driver.plan(desired_rules(blue_only))


def endpoints(n: int) -> dict[str, dict[str, object]]:
    return {f"e{i}": {"tenant": "blue", "addresses": [f"10.0.1.{i}"], "interface": f"wl-{i}"}
            for i in range(1, n + 1)}  # fmt: skip


def test_an_endpoint_added_or_removed_changes_only_its_own_rules(fake):
    """The dispatch chain is edited by one rule; no other chain is rewritten (issue 16: 200
    endpoints rewrote the whole dispatch chain on every add)."""
    driver = NetfilterDriver(fake)
    driver.reconcile(desired_rules(config(endpoints=endpoints(50))))
    fake.applied.clear()
    driver.reconcile(desired_rules(config(endpoints=endpoints(51))))
    (ipv4,) = [c for c in fake.applied if c.family == Family.IPV4]
    assert set(ipv4.set_chains) == {"RNV-SRC-wl-51"}
    assert ipv4.edit_chains == {
        DISPATCH: ((Rule(target="RNV-SRC-wl-51", goto=True, in_interface="wl-51"),), ())
    }
    fake.applied.clear()
    gone = endpoints(51)
    del gone["e7"]
    driver.reconcile(desired_rules(config(endpoints=gone)))
    (ipv4,) = [c for c in fake.applied if c.family == Family.IPV4]
    assert not ipv4.set_chains and ipv4.delete_chains == ("RNV-SRC-wl-7",)
    assert ipv4.edit_chains == {
        DISPATCH: ((), (Rule(target="RNV-SRC-wl-7", goto=True, in_interface="wl-7"),))
    }
    assert not driver.plan(desired_rules(config(endpoints=gone)))


def test_a_dispatch_chain_with_a_rule_twice_is_rewritten_whole(fake):
    driver = NetfilterDriver(fake)
    desired = desired_rules(config())
    driver.reconcile(desired)
    chains = fake.chains[(Family.IPV4, "raw")]
    chains[DISPATCH] = (*chains[DISPATCH], chains[DISPATCH][0])  # a delete by spec takes one
    (change,) = [c for c in driver.plan(desired).changes if c.family == Family.IPV4]
    assert set(change.set_chains) == {DISPATCH} and not change.edit_chains


def test_foreign_or_unreadable_rule_in_our_chain_gets_the_chain_rewritten(fake):
    driver = NetfilterDriver(fake)
    desired = desired_rules(config())
    driver.reconcile(desired)
    chains = fake.chains[(Family.IPV4, "raw")]
    chains["RNV-SRC-wl-web"] = (None, *chains["RNV-SRC-wl-web"])  # e.g. inserted by hand
    plan = driver.plan(desired)
    assert plan.lines()[0] == "ipv4 raw: set chain RNV-SRC-wl-web (3 rules)"


def test_our_jump_must_be_first_and_single(fake):
    driver = NetfilterDriver(fake)
    desired = desired_rules(config())
    driver.reconcile(desired)
    fake.hooks[(Family.IPV4, "raw")]["PREROUTING"] = ["SOMETHING", DISPATCH]  # hooks list ours
    fake.hooks[(Family.IPV6, "raw")]["PREROUTING"] = [DISPATCH, DISPATCH]
    plan = driver.plan(desired)
    assert [dict(c.hooks) for c in plan.changes] == [{"PREROUTING": DISPATCH}] * 2


def test_stale_jump_in_a_hook_we_no_longer_use_is_removed(fake):
    driver = NetfilterDriver(fake)
    desired = desired_rules(config())
    driver.reconcile(desired)
    fake.hooks[(Family.IPV4, "raw")]["OUTPUT"] = [DISPATCH]
    (change,) = driver.plan(desired).changes
    assert change.hooks == {"OUTPUT": None}
    assert "ipv4 raw: remove our jumps from OUTPUT" in change.lines()


def test_dry_run_lines_show_every_rule(fake):
    lines = NetfilterDriver(fake).plan(desired_rules(config())).lines()
    assert "ipv4 raw: set chain RNV-SRC-wl-web (3 rules)" in lines
    assert "  -A RNV-SRC-wl-web -j RNV-HOST" in lines
    assert "  -A RNV-SRC-wl-web -s 10.0.0.1/32 -j RETURN" in lines
    assert "ipv6 raw: make -I PREROUTING 1 -j RNV-PREROUTING our only rule in PREROUTING" in lines


def test_a_failing_table_is_reported_and_the_other_still_applied(fake):
    fake.fail = {Family.IPV6}
    desired = desired_rules(config())
    result = NetfilterDriver(fake).reconcile(desired)
    assert result.errors == ["ipv6 table raw: apply failed: boom"]
    assert (Family.IPV4, "raw") in fake.chains
    assert (Family.IPV6, "raw") not in fake.chains


def test_calculation_errors_are_passed_on(fake):
    desired = replace(desired_rules(config()), errors=("endpoint x: no interface",))
    assert NetfilterDriver(fake).reconcile(desired).errors == ["endpoint x: no interface"]


def test_a_table_that_cannot_be_read_is_reported_and_the_others_are_still_planned(fake):
    class Unreadable(FakeTables):
        def read(self, family, table):
            if family is Family.IPV6:
                raise NetfilterError(f"{family} table {table}: read failed: boom")
            return super().read(family, table)

    desired = desired_rules(config())
    driver = NetfilterDriver(Unreadable())
    plan = driver.plan(desired)  # a dry run reports it, it does not end in a traceback
    assert plan.errors == ["ipv6 table raw: read failed: boom"]
    assert {c.family for c in plan.changes} == {Family.IPV4}
    result = driver.reconcile(desired)
    assert result.errors == ["ipv6 table raw: read failed: boom"] and result.chains_set > 0
