"""IKEv2 with X.509 certificates on a real kernel: the 3-host lab of test_ike_kernel.py, but
each host authenticates with a certificate from a lab CA (generated here) that names its host
address as an IP subjectAltName, the IKE identity the driver uses. A host whose certificate
comes from another CA, or has expired, is refused, and nothing of its tenants leaves in
plaintext. charon's logs are copied to .rnv-lab/ike-x509-kernel/ at the end.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_ike_kernel import (
    HOSTS,
    IkeLab,
    assert_child_sas_carry_the_tenant_reqids,
    assert_host3_is_cut_off_and_nothing_leaves_in_plaintext,
    assert_tenant_traffic_is_esp_with_the_reported_spis,
    ike_lab,
    reconcile_all,
    wait_for,
)

from routed_nv.config.model import Config
from routed_nv.lab.charon import write_secret

pytestmark = pytest.mark.kernel

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime:
    return datetime.now(UTC)


class Ca:
    """A CA that issues host certificates (ECDSA P-256, which charon's openssl plugin takes)."""

    def __init__(self, common_name: str) -> None:
        self.key: Key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - timedelta(hours=1))
            .not_valid_after(_now() + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, common_name: str, address: ipaddress.IPv6Address, expired: bool = False
    ) -> tuple[x509.Certificate, Key]:
        key = ec.generate_private_key(ec.SECP256R1())
        start = _now() - (timedelta(days=2) if expired else timedelta(hours=1))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


def write_pem(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_host_credentials(directory: Path, cert: x509.Certificate, key: Key) -> None:
    write_pem(directory / "cert.pem", cert)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(directory / "key.pem", pkcs8)


class Pki:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ca = Ca("routed_nv lab CA")
        self.certs: dict[str, tuple[x509.Certificate, Key]] = {}

    def credentials(self, host: str, config: Config) -> dict[str, str]:
        """ike_lab's auth: the CA and a certificate for the host's address; keying fields."""
        directory = self.workdir / host / "x509"
        write_pem(directory / "ca.pem", self.ca.cert)
        cert, key = self.ca.issue(host, config.host.address)
        write_host_credentials(directory, cert, key)
        self.certs[host] = cert, key
        files = {"ca_cert": "ca.pem", "cert": "cert.pem", "key": "key.pem"}
        return {field: str(directory / name) for field, name in files.items()}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("ike-x509"))


@pytest.fixture(scope="module")
def ike(pki: Pki) -> Iterator[IkeLab]:
    with ike_lab(pki.workdir, pki.credentials, "ike-x509-kernel") as lab:
        yield lab


AUTH_LINE = re.compile(r"authentication of '([^']+)' with (.+?) successful")


def test_1_child_sas_come_up_authenticated_by_certificates(ike: IkeLab, pki: Pki) -> None:
    start = time.monotonic()
    took = wait_for(ike.all_up, 60, lambda: reconcile_all(ike))
    settled = ike.settle()
    print(
        f"\nX.509: driver start -> all CHILD_SAs up {took:.2f} s "
        f"(+{settled:.2f} s until nothing left to do; total {time.monotonic() - start:.2f} s)"
    )
    assert_child_sas_carry_the_tenant_reqids(ike)
    for host in HOSTS:
        with ike.vici(host) as vici:
            loaded = vici.list_certs()
        cert = pki.certs[host][0].public_bytes(serialization.Encoding.DER)
        ca = pki.ca.cert.public_bytes(serialization.Encoding.DER)
        assert cert in loaded and ca in loaded
        # each peer was authenticated by a signature, by its host address, never by a PSK
        methods = dict(AUTH_LINE.findall(ike.charons.nodes[host].log.read_text()))
        peers = {str(ike.configs[p].host.address) for p in HOSTS if p != host}
        assert peers <= set(methods), methods
        assert "pre-shared key" not in {methods[p] for p in peers}, methods
        print(f"{host} authenticated its peers with {sorted({methods[p] for p in peers})}")


def test_2_tenant_traffic_is_esp_with_the_spis_sa_list_reports(ike: IkeLab) -> None:
    ike.settle()
    assert_tenant_traffic_is_esp_with_the_reported_spis(ike)


@pytest.mark.parametrize("bad", ["issued by another CA", "expired"])
def test_3_a_host_with_a_bad_certificate_is_refused(ike: IkeLab, pki: Pki, bad: str) -> None:
    ike.settle()
    host3 = ike.configs["host3"]
    issuer = Ca("some other CA") if bad != "expired" else pki.ca
    cert, key = issuer.issue("host3", host3.host.address, expired=bad == "expired")
    directory = pki.workdir / "host3" / "x509"
    write_host_credentials(directory, cert, key)
    # a fresh charon holds only the bad certificate (the good one would otherwise stay loaded)
    ike.charons.stop("host3")
    ike.charons.start("host3")
    try:
        errors: dict[str, list[str]] = {}
        deadline = time.monotonic() + 40
        while not (
            any(
                "rnv-host3" in e and "certificate is not trusted" in e
                for e in errors.get("host1", [])
            )
            and errors.get("host3")
        ):
            assert time.monotonic() < deadline, errors
            errors = {h: ike.ike_errors(h) for h in ("host1", "host3")}
        for host, found in errors.items():
            print(f"\ncertificate {bad}: {host}'s status: {found[0]}")
        assert_host3_is_cut_off_and_nothing_leaves_in_plaintext(ike)
    finally:
        write_host_credentials(directory, *pki.certs["host3"])
        ike.charons.stop("host3")
        ike.charons.start("host3")
    took = wait_for(ike.all_up, 60, lambda: reconcile_all(ike))
    print(f"good certificate again: all SAs up after {took:.2f} s")
