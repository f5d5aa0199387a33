"""The iptables-restore adapter: -save text -> ActualTable, Rule -> restore text and back.

The texts in netfilter_save/ are real output of iptables-legacy-save 1.8.9 (Debian 12) and
1.8.11 (Debian 13), with /etc/protocols (names) and without it (numbers): capture.py there made
them. The tests at the end apply and read back through the real tools in a throwaway network
namespace (legacy iptables with the policy and comment matches: no ESP or VRF needed); with
traffic: tests/lab/test_netfilter_kernel.py."""

import os
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from routed_nv.calc.netfilter import DECAP, DISPATCH, desired_rules
from routed_nv.model.netfilter import Family, NetfilterError, Rule, TableChange
from routed_nv.netfilter import restore
from routed_nv.netfilter.driver import NetfilterDriver, plan_table
from routed_nv.netfilter.restore import RestoreTables, parse_rule, parse_save, restore_text
from tests.unit.test_netfilter_driver import config

SAVED = Path(__file__).with_name("netfilter_save")
VERSIONS = ("v1.8.9", "v1.8.11")
TOOL = {Family.IPV4: "iptables", Family.IPV6: "ip6tables"}
# what capture.py added by hand (see FOREIGN there): rules of our chains that are not ours
FOREIGN_TAIL = {Family.IPV4: ("RNV-SRC-wl-web", 3), Family.IPV6: (DECAP, 2)}
HOOKS = {
    Family.IPV4: {"PREROUTING": ((1, DISPATCH),)},  # behind an operator's DROP
    Family.IPV6: {"PREROUTING": ((0, DISPATCH), (1, DECAP))},
}


def saved(family: Family, version: str, kind: str) -> str:
    return (SAVED / f"{TOOL[family]}-{version}-{kind}.txt").read_text()


@pytest.mark.parametrize("kind", ["names", "numbers"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", list(Family))
def test_saved_table_reads_back_as_our_rules(family, version, kind):
    desired = desired_rules(config())
    table = parse_save(family, "raw", saved(family, version, kind))
    mine = {k.chain: rules for k, rules in desired.chains.items() if k.family == family}
    foreign_chain, foreign = FOREIGN_TAIL[family]
    assert table.chains == {
        **mine,
        foreign_chain: (*mine[foreign_chain], *[None] * foreign),
    }
    assert {c: len(n) for c, n in table.counters.items()} == {
        c: len(r) for c, r in table.chains.items()
    }
    assert table.hooks == HOOKS[family]
    change = plan_table(desired, table)  # only the spoiled chain and the hook are rewritten
    assert (set(change.set_chains), dict(change.hooks)) == (
        {foreign_chain},
        {"PREROUTING": DISPATCH},
    )


def test_every_rule_we_write_reads_back_as_itself():
    for rules in desired_rules(config()).chains.values():
        for rule in rules:
            assert parse_rule(restore.rule_args(rule)) == rule


@pytest.mark.parametrize(
    "args",
    [
        "-s 10.0.0.1/32 -j RETURN",  # no comment
        '-s 10.0.0.1/32 -m comment --comment "routed nv" -j RETURN',
        "! -s 10.0.0.1/32 -m comment --comment routed-nv -j RETURN",
        "-p tcp -m tcp --dport 22 -m comment --comment routed-nv -j RETURN",
        "-o eth0 -m comment --comment routed-nv -j DROP",
        "-m comment --comment routed-nv -j LOG --log-prefix x",
        "-p 58 -m icmp6 --icmpv6-type 135/0 -m comment --comment routed-nv -j RETURN",
        "-m policy --dir in --pol ipsec --reqid 1 -m comment --comment routed-nv -j RETURN",
        "-m policy --dir out --pol none -m comment --comment routed-nv -j DROP",
        "-m policy --dir in --pol none --strict -m comment --comment routed-nv -j DROP",
        "-s 10.0.0.1/32 -s 10.0.0.2/32 -m comment --comment routed-nv -j RETURN",
        "-p nosuchproto -m comment --comment routed-nv -j DROP",
        "-s 10.0.0.300 -m comment --comment routed-nv -j DROP",
        "-m comment --comment routed-nv",  # no target
        "-m comment --comment 'routed-nv -j DROP",  # unbalanced quote
    ],
)
def test_what_we_never_write_reads_back_as_none(args):
    assert parse_rule(args) is None


@pytest.mark.parametrize(
    ("args", "rule"),
    [  # the same rule as other versions or systems print it
        (
            "-m policy --dir in --pol ipsec --proto 50 --reqid 7 -m comment --comment routed-nv"
            " -j RETURN",
            Rule(target="RETURN", ipsec_reqid=7),
        ),
        (
            "-s fe80::/10 -p icmpv6 -m icmp6 --icmpv6-type neighbour-solicitation"
            " -m comment --comment routed-nv -j RETURN",
            Rule(target="RETURN", src="fe80::/10", protocol=58, icmpv6_type=135),
        ),
        (
            "-d 169.254.0.1/32 -p icmp -m icmp --icmp-type echo-request"
            " -m comment --comment routed-nv -j RETURN",
            Rule(target="RETURN", dst="169.254.0.1/32", protocol=1, icmp_type=8),
        ),
        (
            "-d 2001:db8::/64 -p ipencap -m comment --comment routed-nv -g RNV-DECAP",
            Rule(target=DECAP, goto=True, dst="2001:db8::/64", protocol=4),
        ),
    ],
)
def test_names_and_numbers_and_option_order_read_the_same(args, rule):
    assert parse_rule(args) == rule


def test_options_are_keyed_by_their_match_and_flags_have_no_value():
    assert restore._options("-i wl-a -m policy --dir in --strict -m comment --comment x -g Y") == {
        "-i": "wl-a",
        "-m policy": "policy",
        "policy --dir": "in",
        "policy --strict": "",
        "-m comment": "comment",
        "comment --comment": "x",
        "-g": "Y",
    }


def test_every_rule_field_has_a_decoder():
    assert set(restore.DECODE) == {f.name for f in fields(Rule)}


def test_one_commit_sets_chains_fixes_the_hook_as_saved_and_deletes_chains():
    change = TableChange(
        family=Family.IPV6,
        table="raw",
        set_chains={DISPATCH: (Rule(target="DROP", in_interface="wl-a"),)},
        hooks={"PREROUTING": DISPATCH},
        delete_chains=("RNV-SRC-a", "RNV-SRC-b"),
    )
    text = restore_text(change, saved(Family.IPV6, "v1.8.9", "names"))
    assert text.splitlines() == [
        "*raw",
        f":{DISPATCH} - [0:0]",
        f"-A {DISPATCH} -i wl-a -m comment --comment routed-nv -j DROP",
        f"-D PREROUTING -m comment --comment routed-nv -j {DISPATCH}",
        f"-D PREROUTING -m comment --comment routed-nv -j {DECAP}",
        f"-I PREROUTING 1 -m comment --comment routed-nv -j {DISPATCH}",
        "-F RNV-SRC-a",
        "-F RNV-SRC-b",
        "-X RNV-SRC-a",
        "-X RNV-SRC-b",
        "COMMIT",
    ]


def test_a_missing_tool_is_one_error_line(monkeypatch):
    monkeypatch.setitem(restore.TOOLS, Family.IPV4, "rnvt-no-such-iptables")
    with pytest.raises(NetfilterError) as exc:
        RestoreTables().read(Family.IPV4, "raw")
    assert str(exc.value) == (
        "ipv4 table raw: cannot run rnvt-no-such-iptables-save: No such file or directory"
    )


def test_a_missing_namespace_names_it(monkeypatch, tmp_path):
    monkeypatch.setattr("routed_nv.netns.NETNS_DIR", str(tmp_path))
    with pytest.raises(NetfilterError, match=r"^ipv6 table raw in netns rnvt-nope: network"):
        RestoreTables("rnvt-nope").read(Family.IPV6, "raw")


def test_the_tools_complaint_is_one_short_line_with_the_input_it_names():
    stderr = (
        "iptables-restore v1.8.9 (legacy): Couldn't load match `nosuch':No such file or directory"
        "\n\nError occurred at line: 2\nTry `iptables-restore -h' or 'iptables-restore --help'"
        " for more information.\n"
    )
    text = "*raw\n-A RNV-X -m nosuch -j DROP\nCOMMIT\n"
    said = restore._complaint(stderr, text)
    assert "\n" not in said and len(said) <= restore.MAX_ERROR
    assert said.startswith("iptables-restore v1.8.9 (legacy): Couldn't load match `nosuch'")
    assert said.endswith("Error occurred at line: 2 (input: -A RNV-X -m nosuch -j DROP)")
    assert restore._complaint("x" * 500, None).endswith("...")


# --- against this machine's kernel: legacy iptables in a throwaway network namespace ----------


@pytest.fixture
def netns():
    """A namespace of our own; only its raw tables are touched."""
    name = f"rnvt-restore-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def iptables(netns: str, *args: str) -> str:
    cmd = ["ip", "netns", "exec", netns, "iptables-legacy", "-t", "raw", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def uncounted_save(netns: str) -> list[str]:
    cmd = ["ip", "netns", "exec", netns, "iptables-legacy-save", "-t", "raw"]
    saved = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line for line in saved.splitlines() if not line.startswith("#")]


def test_what_we_apply_reads_back_unchanged_and_a_second_apply_does_nothing(netns):
    driver = NetfilterDriver(RestoreTables(netns))
    desired = desired_rules(config())
    assert driver.reconcile(desired).ok
    assert not driver.plan(desired), driver.plan(desired).lines()
    for table in driver.read(desired):
        mine = {k.chain: r for k, r in desired.chains.items() if k.family == table.family}
        assert table.chains == mine
        assert table.hooks == {"PREROUTING": ((0, DISPATCH),)}


def test_a_foreign_rule_in_our_chain_reads_as_none_and_the_chain_is_rewritten(netns):
    driver = NetfilterDriver(RestoreTables(netns))
    desired = desired_rules(config())
    driver.reconcile(desired)
    iptables(netns, "-I", "RNV-SRC-wl-web", "1", "-s", "10.9.9.9", "-j", "RETURN")
    iptables(netns, "-I", "PREROUTING", "1", "-s", "192.0.2.1", "-j", "DROP")
    (ipv4,) = [t for t in driver.read(desired) if t.family == Family.IPV4]
    assert ipv4.chains["RNV-SRC-wl-web"][0] is None
    assert ipv4.hooks == {"PREROUTING": ((1, DISPATCH),)}
    result = driver.reconcile(desired)
    assert (result.chains_set, result.hooks_fixed, result.ok) == (1, 1, True)
    assert not driver.plan(desired)
    assert "10.9.9.9" not in iptables(netns, "-S", "RNV-SRC-wl-web")
    # the operator's own rule stays, behind our jump
    assert iptables(netns, "-S", "PREROUTING").splitlines()[1:] == [
        f"-A PREROUTING -m comment --comment routed-nv -j {DISPATCH}",
        "-A PREROUTING -s 192.0.2.1/32 -j DROP",
    ]


def test_an_edited_chain_keeps_its_other_rules_and_their_counters(netns):
    driver = NetfilterDriver(RestoreTables(netns))
    two = config()
    assert driver.reconcile(desired_rules(two)).ok
    iptables(netns, "-Z", DISPATCH)
    before = iptables(netns, "-S", DISPATCH)
    web_only = config(endpoints={"web": two.endpoints["web"].model_dump(exclude_none=True)})
    result = driver.reconcile(desired_rules(web_only))
    assert result.ok and result.chains_set == 0, result
    assert not driver.plan(desired_rules(web_only))
    after = iptables(netns, "-S", DISPATCH)
    assert [x for x in before.splitlines() if "wl-db" not in x] == after.splitlines()
    assert driver.reconcile(desired_rules(two)).ok and not driver.plan(desired_rules(two))
    assert sorted(iptables(netns, "-S", DISPATCH).splitlines()) == sorted(before.splitlines())


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        (Rule(target="RNV-NO-SUCH-CHAIN"), "Couldn't load target `RNV-NO-SUCH-CHAIN'"),
        (Rule(target=DISPATCH), "(input: COMMIT)"),  # a loop: the kernel refuses the commit
    ],
)
def test_a_refused_change_leaves_the_table_as_it_was(netns, broken, complaint):
    tables = RestoreTables(netns)
    NetfilterDriver(tables).reconcile(desired_rules(config()))
    before = uncounted_save(netns)
    change = TableChange(
        family=Family.IPV4,
        table="raw",
        set_chains={
            "RNV-SRC-wl-new": (Rule(target="DROP"),),  # fine on its own, must not land
            "RNV-SRC-wl-web": (Rule(target="RETURN", src="10.0.0.1/32"), broken),
        },
        hooks={"PREROUTING": DISPATCH},
    )
    with pytest.raises(NetfilterError) as exc:
        tables.apply(change)
    message = str(exc.value)
    assert message.startswith(f"ipv4 table raw in netns {netns}: iptables-legacy-restore failed: ")
    assert complaint in message and "\n" not in message
    assert uncounted_save(netns) == before


def test_a_table_read_again_is_parsed_again_only_when_more_than_its_counters_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a resync reads both tables; parsing 1,000 endpoints' rules cost more than -save itself
    text = saved(Family.IPV4, "v1.8.9", "names")
    outputs = iter(
        [
            f"# Generated by iptables-save v1.8.9 on Sun Dec  6 04:00:00 2026\n{text}",
            "# Generated by iptables-save v1.8.9 on Sun Dec  6 04:00:30 2026\n"
            + text.replace(
                "[0:0] -A RNV-HOST -d 169.254.0.1/32 -p icmp",
                "[7:588] -A RNV-HOST -d 169.254.0.1/32 -p icmp",
            ),
            text.replace("-A RNV-HOST -d 169.254.0.1/32 -m", "-A RNV-HOST -d 169.254.0.2/32 -m"),
        ]
    )
    tables = RestoreTables()
    monkeypatch.setattr(tables, "_save", lambda family, table: next(outputs))
    parsed: list[str] = []
    monkeypatch.setattr(restore, "parse_rule", lambda args: parsed.append(args) or parse_rule(args))
    first = tables.read(Family.IPV4, "raw")
    assert len(parsed) == sum(len(rules) for rules in first.chains.values())
    parsed.clear()
    again = tables.read(Family.IPV4, "raw")  # other counters, another time in the comment
    assert parsed == [] and again.chains == first.chains and again.hooks == first.hooks
    assert again.counters["RNV-HOST"][0] == (7, 588) and first.counters["RNV-HOST"][0] == (0, 0)
    changed = tables.read(Family.IPV4, "raw")  # a rule differs: parsed again
    assert parsed and changed.chains != first.chains
