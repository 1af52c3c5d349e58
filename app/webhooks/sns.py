"""Amazon SNS HTTP(S) deliveries: verified before anything in them is believed.

Checks, in order: the topic is one we subscribed to; the message is under an hour old;
the signing certificate's URL is an SNS one (https, `sns.<region>.amazonaws.com` or
`.com.cn`, `/SimpleNotificationService-<id>.pem`, no query); the signature, SHA1withRSA
(SignatureVersion 1) or SHA256withRSA (2), over AWS's string to sign for the message
type. Certificates are fetched once per URL. The fetcher is injectable so that tests
sign with a key of their own; the URL rules apply to it all the same.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

import httpx
import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.webhooks.standard import SignatureError

log = logging.getLogger(__name__)

MAX_AGE = timedelta(hours=1)
CLOCK_SKEW = timedelta(minutes=5)
HTTP_TIMEOUT_S = 5.0

_SNS_HOST = re.compile(r"^sns\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?P<cn>\.cn)?$")
_CERT_PATH = re.compile(r"^/SimpleNotificationService-[A-Za-z0-9]+\.pem$")
_TOPIC_ARN = re.compile(r"^arn:aws(?P<cn>-cn)?:sns:(?P<region>[a-z0-9-]+):\d{12}:[\w.-]+$")

MessageType = Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]
CertificateFetcher = Callable[[str], Awaitable[bytes]]
UrlVisitor = Callable[[str], Awaitable[None]]


class SnsMessage(msgspec.Struct, frozen=True, kw_only=True):
    """The SNS HTTP(S) envelope; fields AWS may add later are ignored."""

    type: MessageType = msgspec.field(name="Type")
    message_id: str = msgspec.field(name="MessageId")
    topic_arn: str = msgspec.field(name="TopicArn")
    message: str = msgspec.field(name="Message")
    timestamp: str = msgspec.field(name="Timestamp")
    signature_version: str = msgspec.field(name="SignatureVersion")
    signature: str = msgspec.field(name="Signature")
    signing_cert_url: str = msgspec.field(name="SigningCertURL")
    subject: str | None = msgspec.field(name="Subject", default=None)
    subscribe_url: str | None = msgspec.field(name="SubscribeURL", default=None)
    token: str | None = msgspec.field(name="Token", default=None)

    def string_to_sign(self) -> bytes:
        """AWS's string to sign: `Key\\nValue\\n` for each signed key, in this order."""
        if self.type == "Notification":
            pairs = [("Message", self.message), ("MessageId", self.message_id)]
            if self.subject is not None:
                pairs.append(("Subject", self.subject))
            pairs += [("Timestamp", self.timestamp), ("TopicArn", self.topic_arn)]
        else:
            pairs = [
                ("Message", self.message),
                ("MessageId", self.message_id),
                ("SubscribeURL", self.subscribe_url or ""),
                ("Timestamp", self.timestamp),
                ("Token", self.token or ""),
                ("TopicArn", self.topic_arn),
            ]
        pairs.append(("Type", self.type))
        return "".join(f"{key}\n{value}\n" for key, value in pairs).encode()


def check_certificate_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise SignatureError("SigningCertURL must use https")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SignatureError("SigningCertURL must have no query, fragment or credentials")
    if parts.port not in (None, 443) or not _SNS_HOST.match(parts.hostname or ""):
        raise SignatureError("SigningCertURL is not on an SNS host")
    if not _CERT_PATH.match(parts.path):
        raise SignatureError("SigningCertURL is not an SNS certificate path")


def subscribe_url_for(message: SnsMessage) -> str:
    """The SubscribeURL, if it points at SNS in the topic's own region; else SignatureError."""
    topic = _TOPIC_ARN.match(message.topic_arn)
    url = message.subscribe_url or ""
    parts = urlsplit(url)
    host = _SNS_HOST.match(parts.hostname or "")
    if (
        topic is None
        or host is None
        or parts.scheme != "https"
        or parts.port not in (None, 443)
        or parts.username
        or host["region"] != topic["region"]
        or bool(host["cn"]) != bool(topic["cn"])
    ):
        raise SignatureError("SubscribeURL is not the SNS endpoint of the topic's region")
    return url


async def fetch_certificate(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.content


async def visit_subscribe_url(url: str) -> None:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
        response = await client.get(url)
        response.raise_for_status()


class SnsVerifier:
    def __init__(
        self,
        topic_arns: Sequence[str],
        *,
        verify_signatures: bool = True,
        fetcher: CertificateFetcher = fetch_certificate,
        confirm: UrlVisitor = visit_subscribe_url,
    ) -> None:
        self._topics = frozenset(topic_arns)
        self._verify_signatures = verify_signatures
        self._fetch = fetcher
        self.confirm = confirm
        self._keys: dict[str, rsa.RSAPublicKey] = {}

    async def verify(self, message: SnsMessage, now: datetime | None = None) -> None:
        if message.topic_arn not in self._topics:
            raise SignatureError(f"TopicArn {message.topic_arn!r} is not in SNS_TOPIC_ARNS")
        sent = _parse_timestamp(message.timestamp)
        moment = now or datetime.now(UTC)
        if sent < moment - MAX_AGE or sent > moment + CLOCK_SKEW:
            raise SignatureError("Timestamp is more than an hour old (or in the future)")
        if not self._verify_signatures:
            return
        check_certificate_url(message.signing_cert_url)
        algorithm: hashes.HashAlgorithm
        if message.signature_version == "1":
            algorithm = hashes.SHA1()  # noqa: S303 - SNS SignatureVersion 1 is SHA1withRSA
        elif message.signature_version == "2":
            algorithm = hashes.SHA256()
        else:
            raise SignatureError(f"unknown SignatureVersion {message.signature_version!r}")
        try:
            signature = base64.b64decode(message.signature, validate=True)
        except binascii.Error:
            raise SignatureError("Signature is not base64") from None
        key = await self._key(message.signing_cert_url)
        try:
            key.verify(signature, message.string_to_sign(), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SignatureError("SNS signature does not verify") from None

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        key = self._keys.get(url)
        if key is None:
            try:
                pem = await self._fetch(url)
                public_key = x509.load_pem_x509_certificate(pem).public_key()
            except (httpx.HTTPError, ValueError) as error:
                raise SignatureError(f"cannot load the signing certificate: {error}") from None
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise SignatureError("the signing certificate's key is not RSA")
            key = self._keys[url] = public_key
        return key


def _parse_timestamp(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SignatureError("Timestamp is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
