"""https through the pin: SNI and certificate checks use the URL's name, not the address."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("cryptography")  # not a declared dependency; present in the dev image

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.errors import GatewayError
from app.media.fetch import GuardedFetcher
from tests.media import PUBLIC_IP, LoopbackBackend, encode
from tests.support.net import ThreadedServer, serve

PNG = encode("RGB", "PNG")


def _self_signed(name: str, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def img(request: Request) -> Response:
    return Response(PNG, media_type="image/png")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedServer, Path]]:
    cert, key = _self_signed("public.test", tmp_path_factory.mktemp("tls"))
    app = Starlette(routes=[Route("/img.png", img)])
    with serve(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as srv:
        yield srv, cert


def _fetcher(cert: Path, backend: LoopbackBackend) -> GuardedFetcher:
    async def resolver(host: str, port: int) -> list[str]:
        return {"public.test": [PUBLIC_IP], "other.test": [PUBLIC_IP]}[host]

    return GuardedFetcher(
        allow_private=False,
        resolver=resolver,
        network_backend=backend,
        ssl_context=ssl.create_default_context(cafile=str(cert)),
        timeout_s=5,
    )


async def test_https_verifies_the_name_while_connecting_to_the_pinned_address(
    tls_server: tuple[ThreadedServer, Path],
) -> None:
    server, cert = tls_server
    backend = LoopbackBackend()
    fetcher = _fetcher(cert, backend)
    try:
        url = f"https://public.test:{server.port}/img.png"
        assert await fetcher.fetch(url, param="image", max_bytes=10**6) == PNG
        assert backend.connects == [(PUBLIC_IP, server.port)]
        # Same address, another name: a new connection (the pool is keyed by name) whose
        # certificate check fails, since the certificate is only valid for public.test.
        with pytest.raises(GatewayError) as info:
            await fetcher.fetch(
                f"https://other.test:{server.port}/img.png", param="image", max_bytes=10**6
            )
        assert info.value.status == 400 and "CERTIFICATE_VERIFY_FAILED" in info.value.message
        assert backend.connects == [(PUBLIC_IP, server.port)] * 2
    finally:
        await fetcher.aclose()
