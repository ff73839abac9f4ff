"""The memory of recently applied forwarded writes: found by id and key, bounded in count, expiring."""

from __future__ import annotations

from dynastore.core.recentwrites import RecentWrites
from dynastore.core.versions import Dot

A = Dot(b"a#1.1", 1)
B = Dot(b"b#1.1", 7)


def test_a_remembered_write_is_found_by_its_id_and_key_only() -> None:
    """An id names one write of one key: the same id asked for another key, or an unknown id, is none."""
    recent = RecentWrites(10, 1_000)
    recent.remember(b"i" * 16, b"key", A, 0)
    assert recent.find(b"i" * 16, b"key", 10) == A
    assert recent.find(b"i" * 16, b"other", 10) is None
    assert recent.find(b"j" * 16, b"key", 10) is None
    assert recent.find(b"", b"key", 10) is None


def test_a_write_without_an_id_is_not_remembered() -> None:
    """Writes nobody retries (no id) take no room."""
    recent = RecentWrites(10, 1_000)
    recent.remember(b"", b"key", A, 0)
    assert len(recent) == 0


def test_entries_expire_and_the_oldest_go_first_past_the_count() -> None:
    """Past its lifetime an entry is gone; past the count bound the least recently remembered goes."""
    recent = RecentWrites(2, 1_000)
    recent.remember(b"1" * 16, b"k1", A, 0)
    recent.remember(b"2" * 16, b"k2", B, 500)
    assert recent.find(b"1" * 16, b"k1", 999) == A
    assert recent.find(b"1" * 16, b"k1", 1_000) is None
    assert recent.find(b"2" * 16, b"k2", 1_000) == B
    recent.remember(b"3" * 16, b"k3", A, 1_100)
    recent.remember(b"4" * 16, b"k4", A, 1_200)
    assert len(recent) == 2
    assert recent.find(b"2" * 16, b"k2", 1_200) is None
    assert recent.find(b"3" * 16, b"k3", 1_200) == A


def test_a_memory_of_size_zero_remembers_nothing() -> None:
    """recent_writes_max = 0 turns the memory off."""
    recent = RecentWrites(0, 1_000)
    recent.remember(b"1" * 16, b"k", A, 0)
    assert recent.find(b"1" * 16, b"k", 1) is None
