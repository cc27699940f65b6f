"""The host-memory cache of conversation states: bounded in bytes, least recently used first."""

from __future__ import annotations

from aiconv.ml.cache import CacheEntry, PrefixCache


def entry(tokens: list[int], size: int, key: str | None = None) -> CacheEntry:
    return CacheEntry(tokens=tokens, state=bytes(size), key=key)


def test_best_is_the_longest_shared_prefix() -> None:
    cache = PrefixCache(1000)
    cache.put(entry([1, 2, 3], 10, "a"))
    cache.put(entry([1, 2, 9, 9], 10, "b"))
    cache.put(entry([7, 7], 10, "c"))
    found = cache.best([1, 2, 9, 9, 5])
    assert found is not None and found[1] == 4
    assert cache.get(found[0]).key == "b"
    assert cache.best([5, 5]) is None


def test_equal_matches_prefer_the_conversation_then_the_smaller_entry() -> None:
    cache = PrefixCache(1000)
    cache.put(entry([1, 2, 3, 4], 40, "a"))
    cache.put(entry([1, 2, 8], 10, None))
    found = cache.best([1, 2, 5])
    assert found is not None and cache.get(found[0]).key is None  # cheaper to restore
    found = cache.best([1, 2, 5], key="a")
    assert found is not None and cache.get(found[0]).key == "a"


def test_least_recently_used_entries_go_first_when_full() -> None:
    cache = PrefixCache(30)
    cache.put(entry([1], 10, "a"))
    cache.put(entry([2], 10, "b"))
    cache.put(entry([3], 10, "c"))
    found = cache.best([1])
    assert found is not None
    cache.get(found[0])  # "a" used: "b" is now the oldest
    cache.put(entry([4], 10, "d"))
    keys = {cache.get(i).key for i in list(cache._entries)}
    assert keys == {"a", "c", "d"}
    assert cache.bytes == 30
    assert cache.evictions == 1


def test_a_newer_state_of_a_conversation_supersedes_the_older() -> None:
    cache = PrefixCache(1000)
    cache.put(entry([1, 2], 10, "a"))
    cache.put(entry([1, 2, 3, 4], 20, "a"))
    assert len(cache) == 1 and cache.bytes == 20


def test_an_entry_larger_than_the_budget_is_refused() -> None:
    cache = PrefixCache(10)
    assert not cache.put(entry([1], 11))
    assert len(cache) == 0
    assert not PrefixCache(0).enabled


def test_take_removes() -> None:
    cache = PrefixCache(100)
    cache.put(entry([1, 2], 10, "a"))
    found = cache.best([1, 2])
    assert found is not None
    taken = cache.take(found[0])
    assert taken is not None and taken.key == "a"
    assert len(cache) == 0 and cache.bytes == 0
    assert cache.take(found[0]) is None
