"""Desired strongSwan state of this host in IKE keying mode. Pure: the caller reads the credential
files that `credential_files` names (esp/keys.py) and passes their text in.

One IKE connection `rnv-<peer>` per peer host that shares at least one tenant with this host,
between the two host addresses, and in it one CHILD_SA `rnv-<peer>-t<T>` per shared tenant:
transport mode between the two tenant outer addresses, restricted to IPv4-in-IPv6 (4) and
IPv6-in-IPv6 (41), with reqid = markers.reqid(T).

Policies: charon installs its own per-peer transport policies at markers.IKE_POLICY_PRIORITY,
above routed_nv's per-tenant ESP policies (same reqid, markers.XFRM_POLICY_PRIORITY) and the
catch-all blocks, which stay as the fallback and the backstop while charon is down. charon's
policies carry the SPI of the SA in use, and that is what makes a CHILD_SA rekey lossless: the
responder installs its new outbound SA while answering, before the initiator has the matching
inbound SA, and relies on its outbound policy still naming the old SPI until the initiator's
DELETE arrives. With `policies = no` our SPI-less template took the newest SA at once and one
packet per direction was lost in half the rekeys (docs/ike.md). `mode = transport_proxy`, because
the CHILD_SA's addresses (tenant outer addresses) are not the IKE endpoints (host addresses):
plain `transport` is refused with TS_UNACCEPTABLE (ARCHITECTURE.md §4).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path

from routed_nv.config.model import Config, Keying, KeyingMode
from routed_nv.model import markers
from routed_nv.model.directory import DirectoryView, PeerHost
from routed_nv.model.ike import (
    PSK_ID,
    Certificate,
    Credential,
    DesiredIke,
    IkeChild,
    IkeConn,
    PrivateKey,
    SharedSecret,
    child_name,
    conn_name,
)
from routed_nv.model.keys import KeyFileError
from routed_nv.model.protection import Protection, suite
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import TUNNELLED_PROTOS

# Each credential file's text, or why it cannot be used.
CredentialFiles = Mapping[Path, str | KeyFileError]


def desired_ike(config: Config, view: DirectoryView, files: CredentialFiles) -> DesiredIke:
    if config.keying.mode is not KeyingMode.IKE:
        return DesiredIke({}, ())
    shared: dict[PeerHost, list[int]] = {}
    for tenant in sorted(config.tenants.values(), key=lambda t: t.id):
        for peer in view.peers_of(tenant.id):
            shared.setdefault(peer, []).append(tenant.id)
    peers = sorted(shared)
    errors = [
        f"peer {p.name} has this host's address {p.address}; no IKE connection to it"
        for p in peers
        if p.address == config.host.address
    ]
    peers = [p for p in peers if p.address != config.host.address]
    try:
        credentials, local_auth, remote_auth = _auth(config, peers, files)
    except KeyFileError as exc:
        # Without credentials nothing can be (re)authenticated; what is up stays up.
        names = frozenset(conn_name(p.name) for p in peers)
        return DesiredIke({}, (), keep=names, errors=(*errors, str(exc)))
    conns = {conn_name(p.name): _conn(config, p, shared[p], local_auth, remote_auth) for p in peers}
    return DesiredIke(conns, credentials, errors=tuple(errors))


def _ts(address: object) -> tuple[str, ...]:
    return tuple(f"{address}/128[{proto}]" for proto in TUNNELLED_PROTOS)


def _conn(
    config: Config,
    peer: PeerHost,
    tenants: list[int],
    local_auth: dict[str, object],
    remote_auth: dict[str, object],
) -> IkeConn:
    keying = config.keying
    me, there = str(config.host.address), str(peer.address)
    protections = {t.id: t.protection for t in config.tenants.values()}
    children = tuple(
        IkeChild(
            child_name(peer.name, t),
            t,
            _ts(config.host.tenant_address(t)),
            _ts(peer.tenant_address(t)),
        )
        for t in tenants
    )
    message = {
        "version": "2",
        "local_addrs": [me],
        "remote_addrs": [there],
        "proposals": list(keying.ike_proposals),
        "rekey_time": f"{keying.ike_rekey_s}s",
        "dpd_delay": f"{keying.dpd_delay_s}s",
        # Host addresses do not move; MOBIKE moved the IKE_SA to the uplink's address and broke
        # the CHILD_SAs (docs/incidents.md, "MOBIKE moved the IKE_SA").
        "mobike": "no",
        # `unique` stays at its default (no): a restarted peer's INITIAL_CONTACT still replaces
        # its dead IKE_SA at once. `replace` would also delete a duplicate from a simultaneous
        # start 10 s later; with both ends re-initiating, that loops for ever (seen in the lab).
        "local": {**local_auth, "id": me},
        "remote": {**remote_auth, "id": there},
        "children": {
            c.name: {
                "mode": "transport_proxy",
                "local_ts": list(c.local_ts),
                "remote_ts": list(c.remote_ts),
                "reqid": str(c.reqid),
                "esp_proposals": esp_proposals(keying, protections[c.tenant_id]),
                "policies": "yes",
                "priority": str(markers.IKE_POLICY_PRIORITY),
                "rekey_time": f"{keying.child_rekey_s}s",
                # Up as soon as loaded, and back up after a DPD timeout. A peer's delete is
                # deliberate (tenant gone, charon stopping, duplicate resolved): restarting on it
                # would fight the peer. The driver's reconcile initiates whatever is missing.
                "start_action": "start",
                "dpd_action": "restart",
                "close_action": "none",
            }
            for c in children
        },
    }
    return IkeConn(conn_name(peer.name), peer.name, me, there, children, message)


def esp_proposals(keying: Keying, protection: Protection) -> list[str]:
    """A CHILD_SA's ESP proposals: keying.esp_proposals as given for AES-GCM; for another mode,
    each of them with its cipher (the first keyword) replaced by the mode's, so the DH groups
    (PFS) stay the operator's choice. config check refuses modes IKE cannot do."""
    if protection is Protection.AES_GCM:
        return list(keying.esp_proposals)
    cipher = suite(protection).esp_proposal
    return [f"{cipher}-{p.partition('-')[2]}".rstrip("-") for p in keying.esp_proposals]


def credential_files(keying: Keying) -> tuple[list[Path], list[Path]]:
    """The secret and the public files IKE mode's credentials are read from, for the caller to
    read (an incomplete X.509 set is `desired_ike`'s error to report)."""
    if keying.psk_file is not None:
        return [keying.psk_file], []
    public = [p for p in (keying.ca_cert, keying.cert) if p is not None]
    return [keying.key] if keying.key is not None else [], public


def _auth(
    config: Config, peers: list[PeerHost], files: CredentialFiles
) -> tuple[tuple[Credential, ...], dict[str, object], dict[str, object]]:
    """The credentials to load into charon, and the local/remote auth sections of every conn."""
    keying = config.keying

    def read(path: Path) -> str:
        text = files[path]
        if isinstance(text, KeyFileError):
            raise text
        return text

    if keying.psk_file is not None:
        secret = read(keying.psk_file).strip()
        if not secret:
            raise KeyFileError(f"{keying.psk_file}: the pre-shared key file is empty")
        owners = (str(config.host.address), *(str(p.address) for p in peers))
        psk = SharedSecret(PSK_ID, Secret(secret.encode()), owners)
        return (psk,), {"auth": "psk"}, {"auth": "psk"}
    ca_path, cert_path, key_path = _cert_files(keying)
    ca = _certificate("CA", ca_path, read(ca_path))
    credentials = (
        ca,
        _certificate("NONE", cert_path, read(cert_path)),
        PrivateKey(Secret(read(key_path).encode()), key_path),
    )
    # The peer's certificate must name its host address (an IP subjectAltName) and be issued
    # by our CA: pinning the CA keeps other trust anchors loaded in charon out of routed_nv.
    return credentials, {"auth": "pubkey"}, {"auth": "pubkey", "cacerts": [ca.pem]}


def _cert_files(keying: Keying) -> tuple[Path, Path, Path]:
    if keying.ca_cert is None or keying.cert is None or keying.key is None:
        raise KeyFileError(
            "keying: IKE mode needs psk_file, or ca_cert, cert and key (X.509); "
            "none of them is complete"
        )
    return keying.ca_cert, keying.cert, keying.key


_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def _certificate(flag: str, path: Path, text: str) -> Certificate:
    match = _PEM.search(text)
    if match is None:
        raise KeyFileError(f"{path}: no PEM certificate in the file")
    try:
        der = base64.b64decode("".join(match[1].split()), validate=True)
    except ValueError:
        raise KeyFileError(f"{path}: the PEM certificate is not valid base64") from None
    return Certificate(flag, match[0], der, path)
