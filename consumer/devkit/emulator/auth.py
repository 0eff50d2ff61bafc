"""OAuth 2.0 client credentials: the tokens the org hands out and the rules that end them.

Salesforce's client-credentials answer has no ``expires_in`` and no ``refresh_token``: a
session ends when the org's idle timeout passes or an admin revokes it, and the client learns
it from a 401. :class:`TokenStore` lets a test cause both (after N calls, after S seconds, now).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

from consumer.devkit.emulator.errors import JsonObj

__all__ = ["TokenStore", "token_response"]

_TOKEN_ALPHABET = string.ascii_letters + string.digits + "._"


@dataclass
class _Token:
    issued_monotonic: float
    calls: int = 0
    revoked: bool = False


class TokenStore:
    """Issued access tokens and the rules that make them expire."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._tokens: dict[str, _Token] = {}
        self._max_calls: int | None = None
        self._max_age: float | None = None
        self.issued = 0

    def issue(self, org_id: str) -> str:
        """A new token shaped like Salesforce's (``00D...!AQ...``)."""
        secret = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(96))
        token = f"{org_id[:15]}!AQ{secret}"
        self._tokens[token] = _Token(self._monotonic())
        self.issued += 1
        return token

    def values(self) -> list[str]:
        """Every token issued (for tests that prove tokens never leak)."""
        return list(self._tokens)

    def expire_after(self, calls: int | None, seconds: float | None) -> None:
        """Each token dies after ``calls`` API calls made with it / ``seconds`` after issue."""
        self._max_calls = calls
        self._max_age = seconds

    def revoke_all(self) -> None:
        """Every token issued so far becomes invalid."""
        for token in self._tokens.values():
            token.revoked = True

    def use(self, value: str | None) -> bool:
        """Validate a token for one API call (and count the call against it)."""
        token = self._tokens.get(value) if value else None
        if token is None or token.revoked:
            return False
        if self._max_calls is not None and token.calls >= self._max_calls:
            return False
        if self._max_age is not None and self._monotonic() - token.issued_monotonic >= (
            self._max_age
        ):
            return False
        token.calls += 1
        return True


def token_response(
    *,
    access_token: str,
    org_id: str,
    user_id: str,
    client_secret: str,
    instance_url: str,
    issued_at_ms: int,
) -> JsonObj:
    """The client-credentials token response (no expires_in, no refresh_token)."""
    issued_at = str(issued_at_ms)
    id_url = f"{instance_url}/id/{org_id}/{user_id}"
    # Salesforce signs id + issued_at with the consumer secret (HMAC-SHA256, base64).
    signed = (id_url + issued_at).encode()
    digest = hmac.new(client_secret.encode(), signed, hashlib.sha256).digest()
    return {
        "access_token": access_token,
        "signature": base64.b64encode(digest).decode(),
        "scope": "api",
        "instance_url": instance_url,
        "id": id_url,
        "token_type": "Bearer",
        "issued_at": issued_at,
    }
