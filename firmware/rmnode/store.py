"""Persistent key-value state (Wi-Fi credentials, pending mapping) in one JSON file with atomic writes.

A write goes to `<path>.tmp`, is flushed, then renamed over `<path>`: a power cut at any
moment leaves either the old or the new file, never a torn one. A missing or corrupt file
is reported with one log line and read as empty.
"""

import json
import os

from rmnode import log

_TAG = "store"


class Store:
    def __init__(self, path):
        self.path = path
        self._tmp = path + ".tmp"
        self._data = self._load()

    def _load(self):
        for path in (self.path, self._tmp):
            try:
                with open(path) as f:
                    text = f.read()
                break
            except OSError:
                continue
        else:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            log.warning(_TAG, "%s is corrupt (%d bytes), treating it as empty" % (self.path, len(text)))
            return {}
        if not isinstance(data, dict):
            log.warning(_TAG, "%s does not hold an object, treating it as empty" % self.path)
            return {}
        return data

    def get(self, key, default=None):
        return self._data.get(key, default)

    def update(self, changes):
        """Set several keys in one atomic write; a value of None deletes its key. The write is inline, not a
        helper: cloud_user_assoc stores the pending mapping from a BLE IRQ handler, where every call level costs
        ~400 bytes of 4 KiB of stack (docs/protocol.md 1.2)."""
        data = dict(self._data)
        for key in changes:
            value = changes[key]
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        with open(self._tmp, "w") as f:
            f.write(json.dumps(data))
            if hasattr(f, "flush"):
                f.flush()
            if hasattr(os, "fsync"):  # CPython; MicroPython's close() writes through
                os.fsync(f.fileno())
        try:
            os.rename(self._tmp, self.path)
        except OSError:
            # FAT refuses to rename onto an existing file (littlefs and POSIX replace it).
            # Between these two calls only the .tmp copy exists; _load() falls back to it.
            os.remove(self.path)
            os.rename(self._tmp, self.path)
        self._data = data

    def set(self, key, value):
        self.update({key: value})

    def delete(self, *keys):
        self.update({key: None for key in keys})

    def clear(self):
        self.update({key: None for key in self._data})
