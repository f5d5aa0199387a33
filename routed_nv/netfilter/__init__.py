"""Isolation and anti-spoofing rules in legacy iptables, through iptables-legacy-restore
(docs/isolation.md)."""
