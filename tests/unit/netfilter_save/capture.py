"""Captures the -save texts the unit tests parse (run as root, from the repository root):

    .venv/bin/python -m tests.unit.netfilter_save.capture [ROOT]

A throwaway namespace gets the rules of two tenants through RestoreTables plus a few rules we
did not write, then iptables-legacy-save and ip6tables-legacy-save print the raw table with
/etc/protocols (names) and without it (a minimal system: numbers). ROOT: an unpacked iptables
of another version (dpkg-deb -x of iptables, libxtables12, libip4tc2, libip6tc2), e.g. Debian
13's 1.8.11; default the system's.
"""

import os
import subprocess
import sys
from pathlib import Path

from routed_nv.calc.netfilter import desired_rules
from routed_nv.netfilter.driver import NetfilterDriver
from routed_nv.netfilter.restore import RestoreTables
from tests.unit.test_netfilter_driver import config

NS = f"rnvt-capture-{os.getpid()}"
HIDE_PROTOCOLS = "mount --bind /dev/null /etc/protocols;"  # in a private mount namespace
FOREIGN = {  # family tool -> rules an operator or another program added
    "iptables": [
        "-I PREROUTING 1 -s 192.0.2.1/32 -j DROP",
        "-A RNV-SRC-wl-web -s 10.0.0.9/32 -j RETURN",  # no comment
        "-A RNV-SRC-wl-web ! -s 10.0.0.8/32 -m comment --comment routed-nv -j RETURN",
        "-A RNV-SRC-wl-web -p tcp -m tcp --dport 22 -m comment --comment routed-nv -j RETURN",
    ],
    "ip6tables": [
        "-A RNV-DECAP -m comment --comment 'routed nv' -j DROP",
        "-A RNV-DECAP -p 58 -m icmp6 --icmpv6-type 135/0 -m comment --comment routed-nv -j DROP",
        "-A PREROUTING -m comment --comment routed-nv -j RNV-DECAP",  # a second jump of ours
    ],
}


def main(root: str | None) -> None:
    env = dict(os.environ)
    prefix = ""
    if root:
        lib = f"{root}/usr/lib/x86_64-linux-gnu"
        env |= {"LD_LIBRARY_PATH": lib, "XTABLES_LIBDIR": f"{lib}/xtables"}
        prefix = f"{root}/usr/sbin/"
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        result = NetfilterDriver(RestoreTables(NS)).reconcile(desired_rules(config()))
        assert result.ok, result.errors
        for tool, rules in FOREIGN.items():
            for rule in rules:
                cmd = f"{tool}-legacy -t raw {rule}"
                subprocess.run(["ip", "netns", "exec", NS, "sh", "-c", cmd], check=True)
        for tool in FOREIGN:
            save = f"{prefix}{tool}-legacy-save -c -t raw"
            version = subprocess.run(
                [f"{prefix}{tool}-legacy-save", "--version"], env=env, capture_output=True,
                text=True, check=True,
            ).stdout.split()[1]  # fmt: skip
            for kind, hide in (("names", ""), ("numbers", HIDE_PROTOCOLS)):
                cmd = ["unshare", "-m", "sh", "-c", f"{hide} ip netns exec {NS} {save}"]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                lines = [line for line in out.stdout.splitlines() if not line.startswith("#")]
                path = Path(__file__).with_name(f"{tool}-{version}-{kind}.txt")
                path.write_text("\n".join(lines) + "\n")
                print(path)
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
