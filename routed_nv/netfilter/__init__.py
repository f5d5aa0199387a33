"""Isolation and anti-spoofing rules in legacy iptables, via python-iptables (docs/isolation.md)."""
