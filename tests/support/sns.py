"""SNS messages signed with a key and certificate made for the test; the topics the tests
subscribe to, and the API in-process to post them to."""

from __future__ import annotations

import base64
import json
import select
import socket
import socketserver
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from litestar.testing import AsyncTestClient

from app.main import create_app
from app.settings import load_settings
from app.webhooks.sns import SnsMessage, SnsVerifier
from tests.conftest import service_env
from tests.support.webhooks import WEBHOOK

TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:entity-permissions-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
SNS_HEADERS = {"content-type": "text/plain", "x-amz-sns-message-type": "Notification"}
# Topics we subscribe to: the tests' own, one in another region, one in China, one in GovCloud.
OTHER_REGION_TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:entity-permissions-events"
CHINA_TOPIC_ARN = "arn:aws-cn:sns:cn-north-1:123456789012:entity-permissions-events"
GOV_TOPIC_ARN = "arn:aws-us-gov:sns:us-gov-west-1:123456789012:entity-permissions-events"
TOPIC_ARNS = [TOPIC_ARN, OTHER_REGION_TOPIC_ARN, CHINA_TOPIC_ARN, GOV_TOPIC_ARN]


class SnsSigner:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = certificate.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem

    def message(
        self,
        message_type: str = "Notification",
        *,
        message: Any = None,
        version: str = "1",
        topic_arn: str = TOPIC_ARN,
        cert_url: str = CERT_URL,
        timestamp: datetime | None = None,
        subscribe_url: str | None = None,
        **extra: str,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Type": message_type,
            "MessageId": extra.pop("MessageId", "5fea7756-0ea4-451a-a703-a558b933e274"),
            "TopicArn": topic_arn,
            "Message": message if isinstance(message, str) else json.dumps(message or {}),
            "Timestamp": (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "SignatureVersion": version,
            "SigningCertURL": cert_url,
            **extra,
        }
        if message_type != "Notification":
            body["Token"] = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92"
            body["SubscribeURL"] = subscribe_url or (
                "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
                f"&TopicArn={topic_arn}&Token=2336412f37"
            )
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        to_sign = msgspec.convert({**body, "Signature": ""}, SnsMessage).string_to_sign()
        signature = self.key.sign(to_sign, padding.PKCS1v15(), digest)
        body["Signature"] = base64.b64encode(signature).decode()
        return body


class CertificateServer:
    """A real HTTP server on 127.0.0.1, in threads of its own, that answers every request
    with `body`, `chunk` bytes at a time, `interval_s` apart: at once, or trickled as a
    slow-drip attacker would. `cut_by_client` is set when the client hangs up first.

    Threads, not the test's event loop: the in-process API runs in a loop of its own and
    the test's loop waits for each answer, so a server in the test's loop would not serve.
    """

    def __init__(self, body: bytes, *, chunk: int = 65_536, interval_s: float = 0.0) -> None:
        self.body = body
        self.chunk = chunk
        self.interval_s = interval_s
        self.paths: list[str] = []
        self.cut_by_client = threading.Event()
        certificates = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                certificates.serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]

    def __enter__(self) -> CertificateServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve(self, connection: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        self.paths.append(request.split(b" ")[1].decode())
        pieces = [self.body[i : i + self.chunk] for i in range(0, len(self.body), self.chunk)]
        try:
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\n"
                b"Content-Length: %d\r\n\r\n" % len(self.body)
            )
            for piece in pieces[:-1]:
                connection.sendall(piece)
                if _hung_up(connection, self.interval_s):
                    self.cut_by_client.set()
                    return
            connection.sendall(pieces[-1])
        except (BrokenPipeError, ConnectionResetError):
            self.cut_by_client.set()


def _hung_up(connection: socket.socket, wait_s: float) -> bool:
    """Whether the client closed its end within `wait_s` (readable, then nothing to read)."""
    readable, _, _ = select.select([connection], [], [], wait_s)
    return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""


class ToLocalServer(httpx.AsyncBaseTransport):
    """Sends every request to a local server over plain HTTP, whatever its URL: the
    verifier's URL rules see SNS's URL, the bytes come from the test's own server."""

    def __init__(self, port: int) -> None:
        self._port = port
        # No kept-alive connection: the API runs on the test client's own thread and
        # loop (Litestar's AsyncTestClient), so a pooled connection would belong to a
        # loop that is closed by the time the test closes the transport on its own.
        self._inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Kept open: each download's client closes its transport, and the test reuses it."""

    async def close_for_good(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def serving(verifier: SnsVerifier) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process, with this verifier."""
    settings = load_settings(service_env(SNS_TOPIC_ARNS=TOPIC_ARN), dotenv=None)
    async with AsyncTestClient(app=create_app(settings, sns=verifier)) as client:
        yield client


async def post(client: httpx.AsyncClient, message: dict[str, Any]) -> httpx.Response:
    headers = {**SNS_HEADERS, "x-amz-sns-message-type": message["Type"]}
    return await client.post(WEBHOOK, content=json.dumps(message), headers=headers)
