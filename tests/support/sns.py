"""SNS messages signed with a key and certificate made for the test."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from app.webhooks.sns import SnsMessage

TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:entity-permissions-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"


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
