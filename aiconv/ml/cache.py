"""Saved KV states of conversations that no longer sit in a slot, bounded in bytes, LRU.

An entry is the token list a sequence had processed and the sequence's llama.cpp state for
exactly those tokens. A later prompt that starts with (part of) those tokens restores the state
into a slot and evaluates only the rest. Entries are matched by tokens, never trusted by key
alone: the key (the conversation) only says which entry a newer state of the same conversation
supersedes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import count
from typing import Any

from aiconv.ml.text import common_prefix


@dataclass
class CacheEntry:
    tokens: list[int]
    state: Any  # a ctypes byte array from Context.save_seq; only its len() is used here
    key: str | None

    @property
    def size(self) -> int:
        return len(self.state)


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # oldest first
        self._ids = count()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def put(self, entry: CacheEntry) -> bool:
        """Keep `entry` (evicting least recently used ones); False if it can never fit.

        A newer state of the same conversation supersedes its older ones; an identical token
        list replaces its twin. Entries of other conversations stay, even if they share a
        prefix: a short shared prefix (a system prompt) is cheaper to restore on its own.
        """
        if entry.size > self.max_bytes or not entry.tokens:
            return False
        for entry_id, old in list(self._entries.items()):
            superseded = entry.key is not None and old.key == entry.key
            if superseded or old.tokens == entry.tokens:
                self._drop(entry_id)
        while self._entries and self.bytes + entry.size > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        self._entries[next(self._ids)] = entry
        self.bytes += entry.size
        return True

    def best(self, tokens: list[int], key: str | None = None) -> tuple[int, int] | None:
        """(entry id, matching tokens) of the entry sharing the longest prefix with `tokens`.

        Among equal matches the conversation's own entry wins, then the smallest (cheapest to
        restore).
        """
        best_id, best_rank = -1, (0, False, 0)
        for entry_id, entry in self._entries.items():
            shared = common_prefix(entry.tokens, tokens)
            rank = (shared, key is not None and entry.key == key, -len(entry.tokens))
            if shared > 0 and rank > best_rank:
                best_id, best_rank = entry_id, rank
        return (best_id, best_rank[0]) if best_id >= 0 else None

    def get(self, entry_id: int) -> CacheEntry:
        """An entry, marked as just used."""
        self._entries.move_to_end(entry_id)
        return self._entries[entry_id]

    def take(self, entry_id: int) -> CacheEntry | None:
        """Remove and return an entry (it moves into a slot); None if it is already gone."""
        entry = self._entries.pop(entry_id, None)
        if entry is not None:
            self.bytes -= entry.size
        return entry

    def _drop(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        self.bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
