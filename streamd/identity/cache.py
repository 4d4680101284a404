"""The in-process cache of validated tokens: bounded, for ``token_cache_time`` at most.

Keystone is asked about a token once per ``token_cache_time`` (keystonemiddleware's
option, default 300 s); meanwhile the answer is reused. An entry never outlives the
token's own ``expires_at``. A token revoked in Keystone (``DELETE /v3/auth/tokens``)
is therefore still accepted until its cache entry ages out: at most
``token_cache_time`` after it was validated, which is keystonemiddleware's bound too
(it asks Keystone again only when its cache entry expires). The cache holds at most
``max_entries`` tokens and forgets the least recently used first, so a flood of
distinct tokens costs memory once. Keys are SHA-256 digests, never the tokens.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Callable

from .tokens import ValidatedToken

DEFAULT_MAX_ENTRIES = 10_000


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenCache:
    def __init__(self, ttl: float, max_entries: int = DEFAULT_MAX_ENTRIES, *,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        """``ttl`` seconds per entry; ``ttl`` < 0 or 0 keeps nothing (keystonemiddleware's -1)."""
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: OrderedDict[str, tuple[float, ValidatedToken]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ValidatedToken | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, token = entry
        if self._clock() - stored_at >= self.ttl or token.expired(self._wall_clock()):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return token

    def put(self, key: str, token: ValidatedToken) -> None:
        if self.ttl <= 0 or token.expired(self._wall_clock()):
            return  # an expired token (let through by a service token) is asked about every time
        self._entries[key] = (self._clock(), token)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
