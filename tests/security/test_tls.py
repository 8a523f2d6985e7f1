"""TLS to NATS: with AUDIT_NATS_TLS_CA (and a client certificate) an app connects to a server
that requires TLS and verifies client certificates; without the CA it is refused."""

import datetime
import ipaddress
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from audit_api.settings import Settings
from audit_devservers import Child, free_port
from audit_devservers.servers import nats_server_binary
from audit_events.broker import API
from tests.env import JWT_SECRET
from tests.helpers import wait_for


def issue(
    name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_apps_connect_over_tls_with_the_ca_and_a_client_certificate(tmp_path: Path) -> None:
    ca_cert, ca_key = issue("audit test CA", None, ca=True)
    write(tmp_path / "ca", ca_cert, ca_key)
    for name in ("server", "client"):
        cert, key = issue(name, (ca_cert.subject, ca_key))
        write(tmp_path / name, cert, key)
    conf = tmp_path / "nats.conf"
    files = {"cert_file": "server.crt", "key_file": "server.key", "ca_file": "ca.crt"}
    tls = "".join(f'  {key}: "{tmp_path / name}"\n' for key, name in files.items())
    conf.write_text(f"tls {{\n{tls}  verify: true\n}}\n")  # client certificates required
    port = free_port()
    argv = [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)]
    server = Child("nats", argv, {}, tmp_path / "nats.log").start()
    url = f"tls://127.0.0.1:{port}"
    try:
        await wait_for(lambda: "Server is ready" in (tmp_path / "nats.log").read_text(), 30)
        settings = Settings(
            AUDIT_JWT_SECRET=JWT_SECRET,
            NATS_URL=url,
            AUDIT_NATS_TLS_CA=str(tmp_path / "ca.crt"),
            AUDIT_NATS_TLS_CERT=str(tmp_path / "client.crt"),
            AUDIT_NATS_TLS_KEY=str(tmp_path / "client.key"),
        )
        nc = await nats.connect(**settings.connect_options(API), allow_reconnect=False)
        assert nc.is_connected
        await nc.close()

        without_client_cert = Settings(
            AUDIT_JWT_SECRET=JWT_SECRET, NATS_URL=url, AUDIT_NATS_TLS_CA=str(tmp_path / "ca.crt")
        )
        with pytest.raises((OSError, nats.errors.Error)):  # the server drops the handshake
            await nats.connect(
                **without_client_cert.connect_options(API), allow_reconnect=False, connect_timeout=3
            )
    finally:
        server.stop()
