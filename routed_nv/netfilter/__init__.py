"""Isolation and anti-spoofing rules in legacy iptables, via iptables-legacy-save/-restore (docs/isolation.md)."""
