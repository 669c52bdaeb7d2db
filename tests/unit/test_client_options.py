"""SASL and TLS settings reach aiokafka: what ``evstate.kafka.client_options`` hands over.

No broker and no network: the TLS files are a throwaway CA and client certificate written
to ``tmp_path``; the check is that the SSL context aiokafka gets trusts that CA, verifies
the broker's certificate and host name, and carries the client's key.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from evstate.config import Settings
from evstate.kafka import client_options


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``ssl_cafile``, ``ssl_certfile`` and ``ssl_keyfile`` of a fresh CA and client."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("evstate test CA"))
        .issuer_name(_name("evstate test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("evstate-client"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    files = {
        "ssl_cafile": folder / "ca.pem",
        "ssl_certfile": folder / "client.pem",
        "ssl_keyfile": folder / "client.key",
    }
    files["ssl_cafile"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["ssl_certfile"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["ssl_keyfile"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {k: str(v) for k, v in files.items()}


def _settings(**more: object) -> Settings:
    return Settings(bootstrap_servers="kafka.example:9093", view_dir="/nonexistent", **more)  # type: ignore[arg-type]


def test_plaintext_passes_no_sasl_and_no_tls() -> None:
    options = client_options(_settings())
    assert options["security_protocol"] == "PLAINTEXT"
    assert options["bootstrap_servers"] == "kafka.example:9093"
    assert "ssl_context" not in options
    assert not {k for k in options if k.startswith("sasl_")}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_passes_mechanism_user_and_password(mechanism: str) -> None:
    settings = _settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username="alice",
        sasl_plain_password="pw-1",
    )
    options = client_options(settings)
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == "pw-1"
    assert "ssl_context" not in options
    assert "pw-1" not in repr(settings)


def _check_context(context: object) -> None:
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [dict(x[0] for x in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "evstate test CA"} in subjects


def test_ssl_files_make_a_verifying_context(tls_files: dict[str, str]) -> None:
    options = client_options(_settings(security_protocol="SSL", **tls_files))
    assert options["security_protocol"] == "SSL"
    _check_context(options["ssl_context"])
    assert not {k for k in options if k.startswith("sasl_")}


def test_sasl_ssl_passes_both(tls_files: dict[str, str]) -> None:
    options = client_options(
        _settings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username="bob",
            sasl_plain_password="pw-2",
            **tls_files,
        )
    )
    _check_context(options["ssl_context"])
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-512", "bob")


def test_client_key_is_loaded_not_just_named(tls_files: dict[str, str], tmp_path: Path) -> None:
    # A key that does not match the certificate is refused when the context is built,
    # which shows certfile/keyfile really reach load_cert_chain.
    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ssl.SSLError):
        client_options(
            _settings(security_protocol="SSL", **{**tls_files, "ssl_keyfile": str(other)})
        )


def test_plaintext_ignores_tls_files(tls_files: dict[str, str]) -> None:
    # TLS files alone do not switch TLS on: the protocol decides.
    assert "ssl_context" not in client_options(_settings(**tls_files))
