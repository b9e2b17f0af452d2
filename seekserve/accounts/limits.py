"""Per-key concurrency: a request counts from its arrival until its response is complete
(spec §8.10); one over the key's limit is answered 429 at once, never queued."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from seekserve.errors import RateLimited


class ConcurrencyLimiter:
    def __init__(self) -> None:
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()

    def in_flight(self, key: str) -> int:
        with self._lock:
            return self._in_flight[key]

    def acquire(self, key: str, limit: int) -> None:
        """Count one more request of `key`, or raise RateLimited (DeepSeek's wording)."""
        with self._lock:
            current = self._in_flight[key] + 1
            if current > limit:
                raise RateLimited(
                    f"Your current concurrency is {current}, which exceeds your concurrency "
                    f"limit of {limit}. Please wait for a request to finish, or ask the "
                    "operator to raise the limit."
                )
            self._in_flight[key] = current

    def release(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]

    @contextlib.contextmanager
    def slot(self, key: str, limit: int) -> Iterator[None]:
        self.acquire(key, limit)
        try:
            yield
        finally:
            self.release(key)
