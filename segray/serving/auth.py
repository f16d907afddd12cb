"""The optional API key: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The replica holds only the key's SHA-256, compared in constant time; neither the key nor its hash
is logged. The key comes from the environment (``SEGRAY_API_KEY``), never from a file or an option.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from segray.serving.inputs import RequestError

ENV = "SEGRAY_API_KEY"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def digest_from_env() -> str | None:
    """The SHA-256 of ``$SEGRAY_API_KEY``, or None when it is unset or empty (no key required)."""
    key = os.environ.get(ENV, "")
    return key_digest(key) if key else None


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def check_key(expected_sha256: str | None, authorization: str | None, x_api_key: str | None) -> None:
    """Nothing when no key is required or the right one is sent; else 401 saying which it was."""
    if expected_sha256 is None:
        return
    given = presented_key(authorization, x_api_key)
    if given is None:
        raise RequestError(401, "this endpoint needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
    if not hmac.compare_digest(key_digest(given), expected_sha256):
        raise RequestError(401, "wrong API key")
