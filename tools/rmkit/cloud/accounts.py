"""Users, logins and sessions: password login, refresh, logout and access-token checks."""

from __future__ import annotations

import logging
import re
import secrets
import string
from dataclasses import dataclass
from typing import Optional

from rmkit.cloud.storage import Storage, User, now as wall_now
from rmkit.cloud.tokens import (DUMMY_PASSWORD_HASH, AccessClaims, TokenError, TokenSigner, hash_password,
                                refresh_token_hash, verify_password)

log = logging.getLogger("rmkit.cloud.accounts")

MAX_EMAIL_LEN = 254
MAX_PASSWORD_LEN = 256
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
_USER_ID_ALPHABET = string.ascii_letters + string.digits


class AccountError(Exception):
    """Login or account problem; `.kind` is "credentials", "exists" or "invalid"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class LoginTokens:
    idtoken: str
    accesstoken: str
    refreshtoken: Optional[str]


def validate_email(email: str) -> str:
    if not isinstance(email, str) or not _EMAIL_RE.match(email) or len(email) > MAX_EMAIL_LEN:
        raise AccountError("invalid", f"not an email address: {email!r}")
    return email.lower()


class Accounts:
    def __init__(self, storage: Storage, token_ttl_s: int = 3600):
        self.storage = storage
        self.signer = TokenSigner(storage.deployment_secret(), token_ttl_s)

    def add_user(self, email: str, password: str) -> str:
        email = validate_email(email)
        if not isinstance(password, str) or not 8 <= len(password) <= MAX_PASSWORD_LEN:
            raise AccountError("invalid", f"password must be 8 to {MAX_PASSWORD_LEN} characters")
        user_id = "".join(secrets.choice(_USER_ID_ALPHABET) for _ in range(22))
        password_hash = hash_password(password)
        with self.storage.transaction() as tx:
            if tx.user_by_email(email) is not None:
                raise AccountError("exists", f"user {email} already exists")
            tx.add_user(user_id, email, password_hash, wall_now())
        log.info("user %s added (%s)", user_id, email)
        return user_id

    def list_users(self) -> list[User]:
        with self.storage.transaction() as tx:
            return tx.list_users()

    def user(self, user_id: str) -> Optional[User]:
        with self.storage.transaction() as tx:
            return tx.user_by_id(user_id)

    def login(self, user_name: str, password: str) -> LoginTokens:
        with self.storage.transaction() as tx:
            user = tx.user_by_email(user_name.lower())
        # hash even for unknown users, so timing does not tell which user names exist
        ok = verify_password(password, user.password_hash if user else DUMMY_PASSWORD_HASH)
        if user is None or not ok:
            raise AccountError("credentials", "Incorrect user name or password")
        session_id = secrets.token_hex(16)
        refresh_token = secrets.token_urlsafe(32)
        with self.storage.transaction() as tx:
            tx.add_session(session_id, user.user_id, refresh_token_hash(refresh_token), wall_now())
        log.info("user %s logged in (session %s)", user.user_id, session_id[:8])
        return self._tokens(user, session_id, refresh_token)

    def refresh(self, refresh_token: str) -> LoginTokens:
        with self.storage.transaction() as tx:
            session = tx.session_by_refresh_hash(refresh_token_hash(refresh_token))
            user = tx.user_by_id(session.user_id) if session else None
        if session is None or session.revoked or user is None:
            raise AccountError("credentials", "refresh token is invalid or revoked")
        log.info("user %s refreshed tokens (session %s)", user.user_id, session.session_id[:8])
        return self._tokens(user, session.session_id, None)

    def authenticate(self, access_token: str) -> AccessClaims:
        """Claims of a valid access token whose session is still open; TokenError otherwise."""
        claims = self.signer.verify(access_token, "access")
        with self.storage.transaction() as tx:
            session = tx.session_by_id(claims.session_id)
        if session is None or session.revoked or session.user_id != claims.user_id:
            raise TokenError("revoked", "session has ended (logged out)")
        return claims

    def logout(self, claims: AccessClaims, everywhere: bool) -> int:
        with self.storage.transaction() as tx:
            if everywhere:
                count = tx.revoke_user_sessions(claims.user_id)
            else:
                tx.revoke_session(claims.session_id)
                count = 1
        log.info("user %s logged out (%s)", claims.user_id, "all sessions" if everywhere else "one session")
        return count

    def _tokens(self, user: User, session_id: str, refresh_token: Optional[str]) -> LoginTokens:
        now = wall_now()
        return LoginTokens(
            idtoken=self.signer.issue(user.user_id, user.email, session_id, "id", now),
            accesstoken=self.signer.issue(user.user_id, user.email, session_id, "access", now),
            refreshtoken=refresh_token)
