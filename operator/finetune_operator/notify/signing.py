"""The signature of a notification: HMAC-SHA256 of the exact body bytes with the admin's key.

Header ``X-Finetune-Signature-256: sha256=<hex>`` (GitHub's webhook convention, so existing verifiers fit). A
receiver recomputes it over the raw body before parsing and compares in constant time (``verify``, or the
example in docs/notifications.md). The CloudEvent's ``id`` and ``time`` are inside the signed body, so a replayed
request is a duplicate the receiver drops by id.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Finetune-Signature-256"
PREFIX = "sha256="


def signature(key: bytes, body: bytes) -> str:
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` under ``key``."""
    return header is not None and hmac.compare_digest(signature(key, body), header)
