"""``evstate serve --tls-cert --tls-key``: HTTPS, with the JavaScript client trusting the
CA the usual Node way (``NODE_EXTRA_CA_CERTS``), against the real broker. The CA and the
server's certificate (for 127.0.0.1) are made by the ``openssl`` command."""

from __future__ import annotations

import ssl
import subprocess
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests._alchemy import client_project
from tests._util import run_cli, serve_process, subprocess_env
from tests.integration.test_alchemy_client import PASSWORD, node

TOKEN = "tls-token-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed (EC P-256, one day)."""
    d = tmp_path_factory.mktemp("pki")
    files = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl(
        "req", "-x509", *ec, "-days", "1", "-subj", "/CN=evstate test CA",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]),
    )  # fmt: skip
    csr = d / "server.csr"
    openssl(
        "req", "-new", *ec, "-subj", "/CN=127.0.0.1",
        "-keyout", str(files["key"]), "-out", str(csr),
    )  # fmt: skip
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(files["cert"]),
    )  # fmt: skip
    return files


async def test_https_with_the_js_client_trusting_the_ca(
    bootstrap_servers: str,
    topic_prefix: str,
    tmp_path: Path,
    pki: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=tmp_path / "v"
    )
    args = ("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]))
    async with serve_process(env, *args, token=TOKEN, ca_file=str(pki["ca"])) as url:
        assert url.startswith("https://127.0.0.1:")
        # Without the CA, a client refuses the server; plain HTTP gets no answer.
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.head(url):
                    pass
            with pytest.raises(aiohttp.ClientError):
                async with session.head(url.replace("https://", "http://")):
                    pass
            trusted = ssl.create_default_context(cafile=str(pki["ca"]))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.head(url, headers=headers, ssl=trusted) as r:
                assert r.status == 200
        project = client_project(tmp_path_factory.mktemp("tls-js"))
        chain = ["tls-app", f"s{uuid.uuid4().hex[:8]}"]
        request = {"url": url, "token": TOKEN, "password": PASSWORD, "chain": chain}
        got = await node(
            project,
            "serve_client.mjs",
            stdin={**request, "op": "methods"},
            env={"NODE_EXTRA_CA_CERTS": str(pki["ca"])},
        )
        assert got["list"] == ["bucket/main", "other"]
        assert got["get"]["props"]["apiKey"] == {"$secret": "js-secret ☃"}
        assert got["afterDelete"] == ["bucket/main"]
        # Without NODE_EXTRA_CA_CERTS the JS client refuses the certificate.
        with pytest.raises(RuntimeError) as info:
            await node(project, "serve_client.mjs", stdin={**request, "op": "read"}, env={})
        assert "fetch failed" in str(info.value) or "certificate" in str(info.value)


async def test_bad_tls_files_are_refused_at_start(tmp_path: Path, pki: dict[str, Path]) -> None:
    env = subprocess_env(EVSTATE_TOKEN=TOKEN, EVSTATE_VIEW_DIR=str(tmp_path / "v"))
    missing = await run_cli("serve", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key",
                            str(pki["key"]), env=env)  # fmt: skip
    assert missing.returncode == 2
    assert "cannot load the TLS certificate" in missing.stderr
    alone = await run_cli("serve", "--tls-cert", str(pki["cert"]), env=env)
    assert alone.returncode == 2
    assert "go together" in alone.stderr
    mismatched = await run_cli(
        "serve", "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["ca-key"]), env=env
    )
    assert mismatched.returncode == 2
    assert "cannot load" in mismatched.stderr
