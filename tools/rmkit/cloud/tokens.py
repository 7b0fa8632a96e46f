"""Passwords (scrypt with a per-user salt) and JWT-shaped tokens signed with HMAC-SHA256.

Token payloads are padded with a filler claim until their base64url text holds none of `-_+/`:
esp-rainmaker-cli decodes the payload with the *standard* base64 alphabet, which silently drops `-`
and `_` and then fails ("Incorrect padding") (docs/protocol.md 6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

ISSUER = "rmkit-local-cloud"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2 ** 14, 8, 1
_FORBIDDEN_B64 = set("-_+/")


class TokenError(Exception):
    """A token that cannot be used; `.reason` is one of "invalid", "expired", "revoked"."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------- passwords

def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt_hex, digest_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r),
                                p=int(p), dklen=len(digest_hex) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


# A fixed hash to check against when the user does not exist, so both failures cost the same.
DUMMY_PASSWORD_HASH = hash_password(secrets.token_hex(8))


# ------------------------------------------------------------------------------------------- tokens

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())


def encode_payload(claims: dict) -> str:
    """base64url of the claims' JSON, with a filler claim `pad` grown until no `-_+/` appears."""
    body = dict(claims)
    for filler in range(0, 64):
        if filler:
            body["pad"] = "x" * filler
        text = _b64url(json.dumps(body, separators=(",", ":")).encode())
        if not _FORBIDDEN_B64.intersection(text):
            return text
    raise RuntimeError("no filler length gives a CLI-safe token payload")  # never seen in practice


def refresh_token_hash(refresh_token: str) -> str:
    """Refresh tokens are stored only as this hash (they are 256-bit random, so no salt is needed)."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    email: str
    session_id: str
    exp: int


class TokenSigner:
    """Issues and checks access/id tokens for one deployment secret."""

    def __init__(self, secret: bytes, ttl_s: int = 3600):
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    def _sign(self, signing_input: str) -> str:
        return _b64url(hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest())

    def issue(self, user_id: str, email: str, session_id: str, token_use: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {"iss": ISSUER, "token_use": token_use, "custom:user_id": user_id, "email": email,
                  "sid": session_id, "iat": issued, "exp": issued + self.ttl_s}
        signing_input = _HEADER + "." + encode_payload(claims)
        return signing_input + "." + self._sign(signing_input)

    def verify(self, token: str, token_use: str = "access", now: float | None = None) -> AccessClaims:
        """The claims of a well-signed, unexpired token of `token_use`; TokenError otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 4096:
            raise TokenError("invalid", "token is not a JWT")
        expected = self._sign(parts[0] + "." + parts[1])
        if not hmac.compare_digest(expected, parts[2]):
            raise TokenError("invalid", "token signature does not verify")
        try:
            claims = json.loads(_b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenError("invalid", "token payload is not JSON") from exc
        if not isinstance(claims, dict) or claims.get("token_use") != token_use:
            raise TokenError("invalid", f"not an {token_use} token")
        fields = (claims.get("custom:user_id"), claims.get("email"), claims.get("sid"))
        exp = claims.get("exp")
        if not all(isinstance(f, str) for f in fields) or not isinstance(exp, int):
            raise TokenError("invalid", "token lacks claims")
        if exp <= (time.time() if now is None else now):
            raise TokenError("expired", "token has expired")
        return AccessClaims(fields[0], fields[1], fields[2], exp)
