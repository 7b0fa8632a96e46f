"""Users, logins and sessions: password login, refresh, logout and access-token checks."""

from __future__ import annotations

import logging
import math
import re
import secrets
import string
from dataclasses import dataclass
from typing import Optional

from rmkit.cloud.storage import Storage, User, now as wall_now
from rmkit.cloud.token_cache import TokenCache
from rmkit.cloud.tokens import (DUMMY_PASSWORD_HASH, AccessClaims, TokenError, TokenSigner, hash_password,
                                refresh_token_hash, verify_password)

log = logging.getLogger("rmkit.cloud.accounts")

MAX_EMAIL_LEN = 254
MAX_PASSWORD_LEN = 256
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")  # fullmatch: `$` would take a final newline
_USER_ID_ALPHABET = string.ascii_letters + string.digits


class AccountError(Exception):
    """Login or account problem; `.kind` is "credentials", "exists", "invalid" or "throttled" (then
    `.retry_after_s` says when to try again)."""

    def __init__(self, kind: str, message: str, retry_after_s: int = 0):
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class LoginLimits:
    """Failed logins allowed within `window_s`: `per_user` for one user name, `per_address` from one
    client address. Past either, every login for that name or from that address (the right password
    too) is refused until the oldest failure leaves the window. Kept in storage, so several cloud
    instances on one database count together. RainMaker's cloud has its own limits; these are ours."""

    per_user: int = 5
    per_address: int = 30
    window_s: float = 60.0


@dataclass(frozen=True)
class LoginTokens:
    idtoken: str
    accesstoken: str
    refreshtoken: Optional[str]


def validate_email(email: str) -> str:
    if not isinstance(email, str) or not _EMAIL_RE.fullmatch(email) or len(email) > MAX_EMAIL_LEN:
        raise AccountError("invalid", f"not an email address: {email!r}")
    return email.lower()


class Accounts:
    def __init__(self, storage: Storage, token_ttl_s: int = 3600, login_limits: LoginLimits = LoginLimits()):
        self.storage = storage
        self.signer = TokenSigner(storage.deployment_secret(), token_ttl_s)
        self.login_limits = login_limits
        self.open_sessions = TokenCache(storage.revocation_epoch)

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
        with self.storage.read() as tx:
            return tx.list_users()

    def user(self, user_id: str) -> Optional[User]:
        with self.storage.read() as tx:
            return tx.user_by_id(user_id)

    def login(self, user_name: str, password: str, address: str = "-") -> LoginTokens:
        limits = self.login_limits
        user_key, address_key = "user:" + user_name.lower(), "addr:" + address
        with self.storage.read() as tx:
            wait_s = self._throttled(tx, ((user_key, limits.per_user), (address_key, limits.per_address)))
            user = tx.user_by_email(user_name.lower())
        if wait_s:
            log.warning("login for %s from %s refused: too many failed logins", user_name.lower(), address)
            raise AccountError("throttled", f"too many failed logins; try again in {wait_s} s", wait_s)
        # hash even for unknown users, so timing does not tell which user names exist
        ok = verify_password(password, user.password_hash if user else DUMMY_PASSWORD_HASH)
        if user is None or not ok:
            now = wall_now()
            with self.storage.transaction() as tx:
                tx.add_login_failure(user_key, now)
                tx.add_login_failure(address_key, now)
                tx.prune_login_failures(now - limits.window_s)
            raise AccountError("credentials", "Incorrect user name or password")
        return self.open_session(user, clear_failures_of=user_key)

    def open_session(self, user: User, clear_failures_of: Optional[str] = None) -> LoginTokens:
        """A new session for a user whose password was checked (login), or for a tool that creates
        its users itself (the scale benchmark: a thousand scrypt checks would take half a minute)."""
        session_id = secrets.token_hex(16)
        refresh_token = secrets.token_urlsafe(32)
        with self.storage.transaction() as tx:
            if clear_failures_of is not None:
                tx.clear_login_failures(clear_failures_of)
            tx.add_session(session_id, user.user_id, refresh_token_hash(refresh_token), wall_now())
        log.info("user %s logged in (session %s)", user.user_id, session_id[:8])
        return self._tokens(user, session_id, refresh_token)

    def _throttled(self, tx, keys) -> int:
        """Whole seconds until a login is allowed again for every (key, limit), 0 if it is now."""
        now, window = wall_now(), self.login_limits.window_s
        wait_s = 0.0
        for key, limit in keys:
            failures = tx.login_failures_since(key, now - window)
            if len(failures) >= limit:  # free again once enough of them left the window
                wait_s = max(wait_s, failures[len(failures) - limit] + window - now)
        return math.ceil(wait_s) if wait_s > 0 else 0

    def refresh(self, refresh_token: str) -> LoginTokens:
        with self.storage.read() as tx:
            session = tx.session_by_refresh_hash(refresh_token_hash(refresh_token))
            user = tx.user_by_id(session.user_id) if session else None
        if session is None or session.revoked or user is None:
            raise AccountError("credentials", "refresh token is invalid or revoked")
        log.info("user %s refreshed tokens (session %s)", user.user_id, session.session_id[:8])
        return self._tokens(user, session.session_id, None)

    def authenticate(self, access_token: str) -> AccessClaims:
        """Claims of a valid access token whose session is still open; TokenError otherwise."""
        claims = self.signer.verify(access_token, "access")  # signature and expiry: every time
        if self.open_sessions.get(access_token) is not None:
            return claims
        epoch = self.open_sessions.current_epoch()  # before the read: a logout after it moves the epoch on
        with self.storage.read() as tx:
            session = tx.session_by_id(claims.session_id)
        if session is None or session.revoked or session.user_id != claims.user_id:
            raise TokenError("revoked", "session has ended (logged out)")
        self.open_sessions.put(access_token, claims, epoch)
        return claims

    def logout(self, claims: AccessClaims, everywhere: bool) -> int:
        with self.storage.transaction() as tx:
            if everywhere:
                count = tx.revoke_user_sessions(claims.user_id)
            else:
                tx.revoke_session(claims.session_id)
                count = 1
        self.storage.note_revocation()  # after the commit: every process's token cache checks again
        log.info("user %s logged out (%s)", claims.user_id, "all sessions" if everywhere else "one session")
        return count

    def _tokens(self, user: User, session_id: str, refresh_token: Optional[str]) -> LoginTokens:
        now = wall_now()
        return LoginTokens(
            idtoken=self.signer.issue(user.user_id, user.email, session_id, "id", now),
            accesstoken=self.signer.issue(user.user_id, user.email, session_id, "access", now),
            refreshtoken=refresh_token)
