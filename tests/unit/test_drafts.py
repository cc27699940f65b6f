"""The pacing and shaping of streamed drafts (aiconv/worker/drafts.py), without Redis."""

from __future__ import annotations

import pytest

from aiconv.config import ConfigError, Settings
from aiconv.telegram.formatting import Entity, FormattedText
from aiconv.worker.drafts import DRAFT_TEXT_LIMIT, ProgressThrottle, draft_id, draft_part


def test_progress_is_written_at_once_then_at_most_once_per_interval() -> None:
    throttle = ProgressThrottle(interval=1.0)
    written = []
    # Text arrives every 0.1 s for 3.5 s.
    for tick in range(36):
        now = 100.0 + tick / 10
        if throttle.due(now):
            throttle.written(now)
            written.append(round(now - 100.0, 1))
    assert written == [0.0, 1.0, 2.0, 3.0]


def test_a_slow_generation_is_written_whenever_text_comes() -> None:
    throttle = ProgressThrottle(interval=1.0)
    throttle.written(10.0)
    assert not throttle.due(10.9)
    assert throttle.due(13.5)  # nothing for a while: the next text goes out at once


def test_draft_ids_are_stable_non_zero_and_per_turn() -> None:
    turns = [f"turn-{n}" for n in range(2000)]
    ids = [draft_id(turn) for turn in turns]
    assert all(0 < value < 2**31 for value in ids)
    assert draft_id("turn-7") == draft_id("turn-7")
    assert len(set(ids)) > 1990  # distinct turns: distinct drafts (not animated into each other)


def test_a_draft_shows_the_part_being_written() -> None:
    assert draft_part(FormattedText.plain("   ")) is None
    short = FormattedText("hello world", (Entity("bold", 0, 5),))
    assert draft_part(short) == short
    long = FormattedText.plain("word " * 1500)  # 7500 characters: two messages
    part = draft_part(long)
    assert part is not None
    assert 0 < len(part.text) <= DRAFT_TEXT_LIMIT
    assert len(part.text) < len(long.text.strip()) - DRAFT_TEXT_LIMIT + 100


def test_reply_style_defaults_to_typing_and_drafts_are_opt_in() -> None:
    assert Settings.from_env({}).reply_style == "typing"
    assert Settings.from_env({}).draft_interval is None
    drafting = Settings.from_env({"REPLY_STYLE": "Draft", "DRAFT_INTERVAL_SECONDS": "1.5"})
    assert drafting.draft_interval == 1.5


@pytest.mark.parametrize(
    "env", [{"REPLY_STYLE": "stream"}, {"REPLY_STYLE": "draft", "DRAFT_INTERVAL_SECONDS": "0.2"}]
)
def test_bad_draft_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)
