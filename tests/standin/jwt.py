"""HS256 JSON Web Tokens for the Supabase stand-in, with the standard library only.

Supabase's legacy API keys are JWTs signed with the project's JWT secret (HS256): the anon key
carries ``"role": "anon"``, the service-role key ``"role": "service_role"``, and a signed-in
user's access token ``"role": "authenticated"`` plus ``"sub"`` (the user id that ``auth.uid()``
returns) and ``"aud": "authenticated"``. PostgREST verifies the signature and the time claims
and takes the role from the ``role`` claim (PostgREST ``src/library/PostgREST/Auth.hs``; its
errors are PGRST301 "JWSError…" and PGRST303 "JWT expired", both HTTP 401 with a
``WWW-Authenticate: Bearer error="invalid_token"`` header: ``Error.hs`` lines 639-686 at commit
4834678).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

__all__ = ["JwtError", "sign", "verify"]


class JwtError(Exception):
    """A token PostgREST would refuse: ``code`` is its PGRST code, ``message`` its text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(claims: dict[str, Any], secret: str) -> str:
    """``claims`` as a compact HS256 JWT."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def verify(token: str, secret: str, *, now: float | None = None) -> dict[str, Any]:
    """The claims of a valid token; ``JwtError`` with PostgREST's code and message otherwise."""
    parts = token.split(".")
    if not token:
        raise JwtError("PGRST301", "Empty JWT is sent in Authorization header")
    if len(parts) != 3:
        raise JwtError("PGRST301", f"Expected 3 parts in JWT; got {len(parts)}")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        given = _unb64(parts[2])
    except ValueError:
        raise JwtError("PGRST301", "JWT couldn't be decoded") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise JwtError("PGRST301", "Wrong or unsupported encoding algorithm")
    mac = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, given):
        raise JwtError("PGRST301", "JWT cryptographic operation failed")
    if not isinstance(claims, dict):
        raise JwtError("PGRST303", "Parsing claims failed")
    at = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is not None:
        if not isinstance(exp, int | float):
            raise JwtError("PGRST303", "The JWT 'exp' claim must be a number")
        # PostgREST allows 30 s of clock skew (Auth/Jwt.hs, allowedSkewSeconds).
        if at > exp + 30:
            raise JwtError("PGRST303", "JWT expired")
    return claims
