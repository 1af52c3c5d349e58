"""Amazon SNS HTTP(S) deliveries: verified before anything in them is believed.

Checks, in order: the topic is one we subscribed to; the message is under an hour old;
the signing certificate's URL is the SNS endpoint of the topic's own region (https,
exactly `sns.<region of the TopicArn>.amazonaws.com`, `.com.cn` for aws-cn, port 443,
`/SimpleNotificationService-<id>.pem`, no query); the signature, SHA1withRSA
(SignatureVersion 1) or SHA256withRSA (2), over AWS's string to sign for the message
type.

Certificates are fetched once per URL, spelled one way (host lower case, no port), by
one download that concurrent deliveries share, cut at CERTIFICATE_DEADLINE_S and
MAX_CERTIFICATE_BYTES; a certificate is kept (at most MAX_CACHED_CERTIFICATES, least
recently used dropped first) only once it has verified a signature. The fetcher is
injectable so that tests sign with a key of their own; the URL rules, the deadline and
the size bound apply to it all the same.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

import httpx
import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.webhooks.standard import SignatureError

log = logging.getLogger(__name__)

MAX_AGE = timedelta(hours=1)
CLOCK_SKEW = timedelta(minutes=5)
HTTP_TIMEOUT_S = 5.0  # httpx's, per phase (connect, each read...)
# A certificate download as a whole: a server trickling a byte at a time never trips a
# per-read time-out, and SNS waits about 15 s for our answer before it retries.
CERTIFICATE_DEADLINE_S = 5.0
MAX_CERTIFICATE_BYTES = 64 * 1024  # AWS's are under 2 KiB
MAX_CACHED_CERTIFICATES = 32
CONCURRENT_DOWNLOADS = 4
_TOO_LARGE = f"the signing certificate is over {MAX_CERTIFICATE_BYTES} bytes"

# An AWS region as AWS names them (us-east-1, eu-central-2, us-gov-west-1, cn-north-1):
# never an S3 endpoint label such as s3 or s3-us-west-2, which with a bucket named
# "sns" in front would make sns.s3.amazonaws.com, a host anyone may serve from.
_REGION = r"[a-z]{2}(?:-gov)?-[a-z]+-[0-9]{1,2}"
_TOPIC_ARN = re.compile(
    rf"arn:(?P<partition>aws|aws-cn|aws-us-gov):sns:(?P<region>{_REGION})"
    r":[0-9]{12}:[A-Za-z0-9_.-]{1,256}"
)
_PARTITION_DOMAIN = {
    "aws": "amazonaws.com",
    "aws-us-gov": "amazonaws.com",
    "aws-cn": "amazonaws.com.cn",
}
_CERT_PATH = re.compile(r"/SimpleNotificationService-[A-Za-z0-9]{1,128}\.pem")
# What a URL we may fetch is written with: visible ASCII only. urlsplit silently drops
# tabs and line breaks (so a URL it approved is not the URL httpx is given), and
# non-ASCII hosts are subject to IDNA mappings; neither appears in an SNS URL.
_URL_TEXT = re.compile(r"[!-~]{1,2048}")

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


def sns_host(topic_arn: str) -> str:
    """The SNS endpoint of the topic's region: the one host its certificates and its
    SubscribeURL may be on. `.com.cn` for the aws-cn partition only."""
    topic = _TOPIC_ARN.fullmatch(topic_arn)
    if topic is None:
        raise SignatureError("TopicArn is not an SNS topic ARN")
    partition, region = topic["partition"], topic["region"]
    if _partition_of(region) != partition:
        raise SignatureError(f"TopicArn's region {region} is not in partition {partition}")
    return f"sns.{region}.{_PARTITION_DOMAIN[partition]}"


def _partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


class _HttpsUrl(NamedTuple):
    host: str  # lower case (urlsplit lowers it); a trailing dot is kept, and matches no SNS host
    path: str
    query: str


def _split_https(url: str, field: str) -> _HttpsUrl:
    """An https URL on the default port, without credentials or fragment, or SignatureError.

    Every way urlsplit or httpx could fail on it (a port past 65535, a stray bracket, a
    tab) is a SignatureError here: a client's mistake is a 401, never a 500.
    """
    if not _URL_TEXT.fullmatch(url):
        raise SignatureError(
            f"{field} must be 1 to 2048 visible ASCII characters (no space, tab or line break)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise SignatureError(f"{field} is not a valid URL: {error}") from None
    if parts.scheme != "https":
        raise SignatureError(f"{field} must use https")
    if "@" in parts.netloc or parts.fragment:
        raise SignatureError(f"{field} must have no credentials or fragment")
    if port not in (None, 443):
        raise SignatureError(f"{field} must be on port 443")
    return _HttpsUrl(parts.hostname or "", parts.path, parts.query)


def check_certificate_url(url: str, topic_arn: str) -> str:
    """The certificate's URL spelled one way (https://host/path, host lower case, no port),
    if it is an SNS certificate of the topic's region; else SignatureError."""
    parts = _split_https(url, "SigningCertURL")
    if parts.host != sns_host(topic_arn):
        raise SignatureError("SigningCertURL is not on the SNS host of the topic's region")
    if parts.query or not _CERT_PATH.fullmatch(parts.path):
        raise SignatureError("SigningCertURL is not an SNS certificate path")
    return f"https://{parts.host}{parts.path}"


def subscribe_url_for(message: SnsMessage) -> str:
    """The SubscribeURL, spelled one way, if it points at SNS in the topic's own region;
    else SignatureError."""
    parts = _split_https(message.subscribe_url or "", "SubscribeURL")
    if parts.host != sns_host(message.topic_arn):
        raise SignatureError("SubscribeURL is not the SNS endpoint of the topic's region")
    query = f"?{parts.query}" if parts.query else ""
    return f"https://{parts.host}{parts.path or '/'}{query}"


class CertificateDownloader:
    """GETs a signing certificate: no redirects, no compression, at most
    MAX_CERTIFICATE_BYTES read. The overall deadline is the verifier's, so that it holds
    for any fetcher; `transport` lets tests send the request to a server of their own."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport

    async def __call__(self, url: str) -> bytes:
        async with (
            httpx.AsyncClient(
                transport=self._transport, timeout=HTTP_TIMEOUT_S, follow_redirects=False
            ) as client,
            # Raw bytes are counted, so a compressed body cannot expand past the bound.
            client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response,
        ):
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_CERTIFICATE_BYTES:
                    raise SignatureError(_TOO_LARGE)
            return bytes(body)


async def visit_subscribe_url(url: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
    """GET the SubscribeURL within an overall deadline; SubscriptionNotConfirmed otherwise."""
    try:
        async with (
            asyncio.timeout(HTTP_TIMEOUT_S),
            httpx.AsyncClient(
                timeout=HTTP_TIMEOUT_S, follow_redirects=False, transport=transport
            ) as client,
        ):
            response = await client.get(url)
            response.raise_for_status()
    except (httpx.HTTPError, TimeoutError) as error:
        raise SubscriptionNotConfirmed(f"{type(error).__name__}: {error}") from None


class SubscriptionNotConfirmed(Exception):
    """SNS's SubscribeURL could not be visited this time: SNS should send it again."""


class CertificateUnavailable(Exception):
    """The signing certificate could not be had this time (SNS's host unreachable, slow,
    failing): the delivery is answered 5xx, so that SNS sends it again (a 4xx would
    drop it for good)."""


class SnsVerifier:
    def __init__(
        self,
        topic_arns: Sequence[str],
        *,
        verify_signatures: bool = True,
        fetcher: CertificateFetcher | None = None,
        confirm: UrlVisitor = visit_subscribe_url,
        certificate_deadline_s: float = CERTIFICATE_DEADLINE_S,
    ) -> None:
        self._topics = frozenset(topic_arns)
        self._verify_signatures = verify_signatures
        self._fetch = fetcher or CertificateDownloader()
        self.confirm = confirm
        self._deadline_s = certificate_deadline_s
        self._keys = _VerifiedKeys(MAX_CACHED_CERTIFICATES)
        self._downloads: dict[str, asyncio.Future[rsa.RSAPublicKey]] = {}
        # Downloads at once: forged deliveries naming certificates of their own cannot
        # make us open any number of connections (each waits its turn in the deadline).
        self._download_slots = asyncio.Semaphore(CONCURRENT_DOWNLOADS)
        self._awaiting = 0

    @property
    def cached_certificate_urls(self) -> tuple[str, ...]:
        """The certificates kept, least recently used first."""
        return self._keys.urls()

    @property
    def deliveries_awaiting_certificates(self) -> int:
        """Deliveries waiting for a certificate download, shared or not."""
        return self._awaiting

    async def verify(self, message: SnsMessage, now: datetime | None = None) -> None:
        if message.topic_arn not in self._topics:
            raise SignatureError(f"TopicArn {message.topic_arn!r} is not in SNS_TOPIC_ARNS")
        sent = _parse_timestamp(message.timestamp)
        moment = now or datetime.now(UTC)
        if sent < moment - MAX_AGE or sent > moment + CLOCK_SKEW:
            raise SignatureError("Timestamp is more than an hour old (or in the future)")
        if not self._verify_signatures:
            return
        cert_url = check_certificate_url(message.signing_cert_url, message.topic_arn)
        algorithm = _algorithm(message.signature_version)
        signature = _signature_bytes(message.signature)
        key = self._keys.get(cert_url) or await self._download(cert_url)
        try:
            key.verify(signature, message.string_to_sign(), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SignatureError("SNS signature does not verify") from None
        # Kept only now: a certificate that verified nothing is fetched again next time.
        self._keys.keep(cert_url, key)

    async def _download(self, url: str) -> rsa.RSAPublicKey:
        """The certificate's key; deliveries arriving while it downloads share the download."""
        download = self._downloads.get(url)
        if download is None:
            download = asyncio.ensure_future(self._load_key(url))
            self._downloads[url] = download
            download.add_done_callback(functools.partial(self._downloaded, url))
        self._awaiting += 1
        try:
            # Shielded: a delivery whose client hangs up does not cancel the others' download.
            return await asyncio.shield(download)
        finally:
            self._awaiting -= 1

    def _downloaded(self, url: str, download: asyncio.Future[rsa.RSAPublicKey]) -> None:
        if self._downloads.get(url) is download:
            del self._downloads[url]
        if not download.cancelled():
            download.exception()  # read, so that a failure nobody awaited any more is not logged

    async def _load_key(self, url: str) -> rsa.RSAPublicKey:
        try:
            async with asyncio.timeout(self._deadline_s), self._download_slots:
                pem = await self._fetch(url)
        except TimeoutError:
            raise CertificateUnavailable(
                f"the signing certificate did not arrive within {self._deadline_s:g} s"
            ) from None
        except httpx.HTTPStatusError as error:
            if error.response.status_code >= 500:
                raise CertificateUnavailable(f"SNS answered {error.response.status_code}") from None
            raise SignatureError(f"no signing certificate there: {error!r}") from None
        except httpx.HTTPError as error:
            raise CertificateUnavailable(
                f"cannot fetch the signing certificate: {error!r}"
            ) from None
        return _rsa_key(pem)


class _VerifiedKeys:
    """Keys of certificates that verified a signature, by URL, at most `size` of them:
    AWS rotates its certificates rarely, so a few dozen is years of rotations; the least
    recently used goes first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()

    def get(self, url: str) -> rsa.RSAPublicKey | None:
        key = self._keys.get(url)
        if key is not None:
            self._keys.move_to_end(url)
        return key

    def keep(self, url: str, key: rsa.RSAPublicKey) -> None:
        self._keys[url] = key
        self._keys.move_to_end(url)
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)

    def urls(self) -> tuple[str, ...]:
        return tuple(self._keys)


def _algorithm(signature_version: str) -> hashes.HashAlgorithm:
    if signature_version == "1":
        return hashes.SHA1()  # noqa: S303 - SNS SignatureVersion 1 is SHA1withRSA
    if signature_version == "2":
        return hashes.SHA256()
    raise SignatureError(f"unknown SignatureVersion {signature_version!r}")


def _signature_bytes(signature: str) -> bytes:
    try:
        return base64.b64decode(signature, validate=True)
    except ValueError:  # binascii.Error, or a str holding non-ASCII characters
        raise SignatureError("Signature is not base64") from None


def _rsa_key(pem: bytes) -> rsa.RSAPublicKey:
    if len(pem) > MAX_CERTIFICATE_BYTES:  # an injected fetcher is held to the bound too
        raise SignatureError(_TOO_LARGE)
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise SignatureError(f"cannot read the signing certificate: {error}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("the signing certificate's key is not RSA")
    return key


def _parse_timestamp(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SignatureError("Timestamp is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
