"""The pending user-node mapping: persisted when received, published with the reset rule, cleared only after PUBACK.

State keys in /state.json (rmnode.store.Store):
- "pending_mapping": {"user_id", "secret_key", "reset"}: written the moment cloud_user_assoc
  delivers it, so a reboot before the PUBACK publishes it again;
- "mapped_user_id": the user id whose mapping the cloud acknowledged (Espressif's NVS
  `user_mapping/user_id` with CONFIG_ESP_RMAKER_USER_ID_CHECK=y).

Reset rule (docs/protocol.md 5.3, user-id check on): a mapping carries "reset": true when the node has no
stored user id or a different one. The decision is taken when the mapping arrives and stored
with it, and a different stored user id is erased at that moment ("key erased until PUBACK"),
so retries and reboots send the same payload.
"""

from rmnode import log

try:
    from micropython import const
except ImportError:
    def const(value):
        return value

_TAG = const("mapping")

PENDING_KEY = "pending_mapping"
USER_ID_KEY = "mapped_user_id"
# docs/protocol.md 5.3: the dummy mapping a node sends on factory reset (USER_RESET_ID / USER_RESET_KEY)
RESET_USER_ID = "esp-rmaker"
RESET_SECRET_KEY = "failed"
# The one limit on a user id and a secret key, in characters (docs/protocol.md 4.2): Espressif's node
# formats the mapping into a 200-byte buffer; keep each field well inside it
_MAX_FIELD = const(128)


class MappingError(ValueError):
    """A user id or secret key that cannot be published (the message never contains the secret)."""


def json_string(value):
    """A JSON string literal, identical on MicroPython and CPython (non-ASCII kept as UTF-8).

    The usual value (no quote, backslash or control character) costs one new string (and a bytes copy
    that is garbage at once).
    """
    value = value.replace("\\", "\\\\").replace('"', '\\"')  # no copy when there is nothing to escape
    if _has_control(value):  # rare: rebuild with \u escapes
        value = "".join("\\u%04x" % ord(ch) if ch < " " else ch for ch in value)
    return '"%s"' % value


def _has_control(value):
    # Over the UTF-8 bytes, not the characters: MicroPython interns every character a str loop yields
    # as a qstr, for good, and a new qstr pool at the online phase's peak cost its heap floor 4 KiB.
    # A UTF-8 byte below 0x20 is always that control character itself.
    for byte in value.encode():
        if byte < 0x20:
            return True
    return False


def mapping_payload(node_id, user_id, secret_key, reset=False):
    """docs/protocol.md 5.3: compact JSON, keys in Espressif's order, "reset" only when true.

    Built by hand: MicroPython's dict order and json.dumps separators differ from CPython's.
    """
    return '{"node_id":%s,"user_id":%s,"secret_key":%s%s}' % (
        json_string(node_id), json_string(user_id), json_string(secret_key), ',"reset":true' if reset else "")


def reset_payload(node_id):
    """docs/protocol.md 5.3: the factory-reset report, a dummy mapping that tells the cloud to drop the users."""
    return mapping_payload(node_id, RESET_USER_ID, RESET_SECRET_KEY, True)


def check_mapping(user_id, secret_key):
    """The one check of a mapping (docs/protocol.md 4.2), on arrival and before every publish: two
    non-empty strings of at most 128 characters, no control character (the payload stays one plain JSON
    line), and not the reset report's user id. MappingError says what is wrong, never the secret key."""
    for name, value in (("user id", user_id), ("secret key", secret_key)):
        if not isinstance(value, str) or not value:
            raise MappingError("%s must be a non-empty string" % name)
        if len(value) > _MAX_FIELD:
            raise MappingError("%s too long: %d characters (max %d)" % (name, len(value), _MAX_FIELD))
        if _has_control(value):
            raise MappingError("%s contains a control character" % name)
    if user_id == RESET_USER_ID:
        raise MappingError("user id %r is reserved for the reset report" % user_id)


class MappingState:
    """The mapping lifecycle on a Store: set_pending -> (publish) -> acknowledged."""

    def __init__(self, store):
        self.store = store

    def set_pending(self, user_id, secret_key):
        """Persist a mapping from cloud_user_assoc at once (one atomic write). MappingError on bad input. Returns
        whether the publish will carry "reset"; the caller logs it (rmnode.prov_endpoints: one call level less in the BLE
        IRQ handler that runs this, docs/protocol.md 1.2)."""
        check_mapping(user_id, secret_key)
        stored = self.store.get(USER_ID_KEY)
        reset = stored != user_id  # also true when no user id is stored
        changes = {PENDING_KEY: {"user_id": user_id, "secret_key": secret_key, "reset": reset}}
        if reset and stored is not None:
            changes[USER_ID_KEY] = None  # docs/protocol.md 5.3: erased until the new mapping's PUBACK
        self.store.update(changes)
        return reset

    def pending(self):
        """The pending mapping dict, or None. A malformed entry is dropped with a warning, never raised."""
        entry = self.store.get(PENDING_KEY)
        if entry is None:
            return None
        try:
            check_mapping(entry.get("user_id"), entry.get("secret_key"))
        except (AttributeError, MappingError) as exc:
            log.warning(_TAG, "ignoring malformed pending mapping: %s" % exc)
            return None
        return entry

    def payload(self, node_id, entry=None):
        """The publish payload of `entry` (default: the pending mapping), or None if nothing is pending."""
        entry = entry if entry is not None else self.pending()
        if entry is None:
            return None
        return mapping_payload(node_id, entry["user_id"], entry["secret_key"], bool(entry.get("reset")))

    def mapped_user_id(self):
        return self.store.get(USER_ID_KEY)

    def acknowledged(self, entry):
        """PUBACK of `entry` arrived: store its user id and clear it, in one write.

        If a newer mapping replaced it meanwhile, only that one stays pending.
        """
        current = self.store.get(PENDING_KEY)
        changes = {USER_ID_KEY: entry["user_id"]}
        if current is not None and current.get("user_id") == entry["user_id"] \
                and current.get("secret_key") == entry["secret_key"]:
            changes[PENDING_KEY] = None
        self.store.update(changes)
        log.info(_TAG, "mapping for user %s acknowledged, pending cleared" % entry["user_id"])

    def drop_pending(self):
        """Forget the pending mapping, not the stored user id (a reset it decided stays decided)."""
        self.store.delete(PENDING_KEY)

    def erase(self):
        """Forget the pending mapping and the stored user id (factory reset)."""
        self.store.delete(PENDING_KEY, USER_ID_KEY)
