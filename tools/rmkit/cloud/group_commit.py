"""Group commit: many small write transactions from many threads applied in one commit by one writer.

A commit with `synchronous=FULL` waits for the disk (rmkit.cloud.storage), and writers take turns, so
when a thousand clients PUT at once each PUT would queue behind all the fsyncs before it. Here a
caller hands its work (a function of a StorageTx) to the writer thread and waits; the writer runs
everything that is waiting, each piece inside a savepoint of its own, and commits once. A piece
that raises is rolled back alone and its caller gets the exception; a failed commit fails every
caller of that batch. Nothing is answered before its commit, so what a caller is told is on disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable, TypeVar

from rmkit.cloud.storage import Storage, StorageTx

log = logging.getLogger("rmkit.cloud.storage")

T = TypeVar("T")
MAX_BATCH = 500  # pieces of work in one transaction


class GroupCommitter:
    def __init__(self, storage: Storage, max_batch: int = MAX_BATCH):
        self.storage = storage
        self._max_batch = max_batch
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, work: Callable[[StorageTx], T]) -> T:
        """work(tx) inside a committed transaction, shared with whatever else is waiting; its result or exception."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write, name="cloud-writer", daemon=True)
                    self._thread.start()
        future: Future = Future()
        self._waiting.put((work, future))
        return future.result()

    def _write(self) -> None:
        while True:
            batch = [self._waiting.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            outcomes = []
            try:
                with self.storage.transaction() as tx:
                    for work, _ in batch:
                        try:
                            with tx.savepoint():
                                outcomes.append((True, work(tx)))
                        except Exception as exc:  # this caller's error: its own writes are rolled back
                            outcomes.append((False, exc))
            except Exception as exc:  # the commit (or the lock) failed: nothing of this batch is stored
                log.warning("a batch of %d writes was not committed: %s", len(batch), exc)
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), (ok, value) in zip(batch, outcomes):
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
