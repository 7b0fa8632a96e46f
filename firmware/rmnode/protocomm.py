"""Protocomm core: endpoint registry and per-session security, independent of the transport.

A transport (SoftAP HTTP, BLE, console) calls `dispatch(session_id, endpoint, body) -> bytes`
and `session_closed(session_id)`. Three kinds of endpoint (docs/protocol.md 2.1):
- the version endpoint: unsecured, request body ignored;
- the security endpoint: the `prov-session` handshake, which creates the session's security;
- secured endpoints: request decrypted, handled, response encrypted with that session.
Every failure leaves `dispatch` as a ProtocommError subclass with the reason; the transport
answers it with an error status or by closing the connection (docs/protocol.md 1.1).
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log
from rmnode import pb
from rmnode import security

_TAG = const("protocomm")

# A session is a list [id, security, dead], not an object: a class would cost its own heap in the
# provisioning phase, the one with the least to spare. const() names for its fields are inlined: free.
# `dead` is None, or the reason string once the CTR stream may be out of step.
_ID = const(0)
_SECURITY = const(1)
_DEAD = const(2)


class ProtocommError(Exception):
    """A request could not be served; the message says why (no secrets in it)."""


class UnknownEndpoint(ProtocommError):
    pass


class SessionError(ProtocommError):
    """No usable security session: never opened, superseded, or desynchronised."""


class HandshakeFailed(ProtocommError):
    pass


class BadRequest(ProtocommError):
    """The (decrypted) request is malformed or the handler refused it."""


class InternalError(ProtocommError):
    """A handler failed unexpectedly; a bug, reported instead of crashing the node."""


class RequestRejected(Exception):
    """Raised by an endpoint handler for a request it cannot answer with a protobuf status."""


class Protocomm:
    """`new_security()` returns a fresh security object (see rmnode.security) per session.

    `version` is (endpoint name, handler() -> version bytes; the request body is ignored, docs/protocol.md 2.2);
    `security_endpoint` names the handshake endpoint; `handlers` maps each secured endpoint to
    `handler(session_id, plaintext, may_block) -> plaintext response`; `may_block` is False when the request
    came from a BLE IRQ handler, which must not block (rmnode.ble).
    At most `max_sessions` sessions are kept; a handshake on a new session id evicts the
    oldest (ESP-IDF keeps exactly one: a new client replaces the previous one, docs/protocol.md 1.1).
    `on_established(session_id)`, if given, is called each time a handshake completes, before its
    last response goes out: a new session has started (also when a client restarts the handshake).
    """

    def __init__(self, new_security, version, security_endpoint, handlers, max_sessions=1, on_established=None):
        self._new_security = new_security
        self._version_endpoint, self._version_handler = version
        self._security_endpoint = security_endpoint
        self._handlers = handlers
        self._max_sessions = max_sessions
        self._on_established = on_established
        self._sessions = []  # oldest first

    def endpoints(self):
        return list(self._handlers) + [self._version_endpoint, self._security_endpoint]

    # -- sessions ------------------------------------------------------------------------------
    def _find(self, session_id):
        for session in self._sessions:
            if session[_ID] == session_id:
                return session
        return None

    def session_closed(self, session_id):
        """The transport ended this session (connection gone, session replaced)."""
        session = self._find(session_id)
        if session is not None:
            self._sessions.remove(session)

    def session_established(self, session_id):
        session = self._find(session_id)
        return session is not None and session[_DEAD] is None and session[_SECURITY].established

    # -- dispatch ------------------------------------------------------------------------------
    def dispatch(self, session_id, endpoint, body, may_block=True):
        """Serve one request; returns the response bytes or raises a ProtocommError. may_block=False: the caller
        is a BLE IRQ handler, so nothing may wait (a Wi-Fi scan or join is left to the main task). One function,
        not a wrapper around another: in that handler every call level costs ~400 of its 4096 bytes of stack
        (docs/protocol.md 1.2)."""
        try:
            if endpoint == self._version_endpoint:
                return self._version_handler()
            if endpoint == self._security_endpoint:
                session = self._find(session_id)
                if session is None or session[_DEAD] is not None:
                    # a new session: drop a dead one under this id, evict the oldest beyond the limit
                    self.session_closed(session_id)
                    while len(self._sessions) >= self._max_sessions:
                        old = self._sessions.pop(0)
                        log.info(_TAG, "session %d replaced by session %d" % (old[_ID], session_id))
                    session = [session_id, self._new_security(), None]
                    self._sessions.append(session)
                sec = session[_SECURITY]
                try:
                    response = sec.handle(body)
                except security.SecurityError as e:
                    session[_DEAD] = "handshake failed"
                    raise HandshakeFailed(str(e))
                if sec.established and self._on_established is not None:
                    # dead until the hook returns: if it raises, the session must not be usable without what it does
                    session[_DEAD] = "session start failed"
                    self._on_established(session_id)
                    session[_DEAD] = None
                return response
            handler = self._handlers.get(endpoint)
            if handler is None:
                raise UnknownEndpoint("unknown endpoint %r" % endpoint)
            session = self._find(session_id)
            if session is None:
                raise SessionError("no security session %d: run the %s handshake first"
                                   % (session_id, self._security_endpoint))
            if session[_DEAD] is not None:
                raise SessionError("session %d is unusable (%s): start a new one" % (session_id, session[_DEAD]))
            try:
                request = session[_SECURITY].decrypt(body)
            except security.NotEstablished as e:
                raise SessionError(str(e))
            # From here on the keystream has advanced: any failure desynchronises the two sides
            # for good (docs/protocol.md 3.3 step 6), so the session dies with the request.
            try:
                response = handler(session_id, request, may_block)
            except pb.DecodeError as e:
                session[_DEAD] = "bad request"
                raise BadRequest("undecodable request: %s" % e)
            except RequestRejected as e:
                session[_DEAD] = "request rejected"
                raise BadRequest(str(e))
            except Exception:
                session[_DEAD] = "handler failed"
                raise
            return session[_SECURITY].encrypt(response)
        except ProtocommError as e:
            log.warning(_TAG, "%s (session %d): %s" % (endpoint, session_id, e))
            raise
        except Exception as e:  # a bug must not take the node down (docs/protocol.md 1.1: handler error)
            # the type only: a message could quote request bytes (a passphrase)
            log.error(_TAG, "%s (session %d): internal error %s" % (endpoint, session_id, type(e).__name__))
            raise InternalError("internal error in %s: %s" % (endpoint, type(e).__name__))
