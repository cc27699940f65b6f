from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiconv.conversation.history import (
    Turn,
    approx_tokens,
    drop_retried,
    fit_history,
    merge_consecutive,
)


def words(text: str) -> int:
    return len(text.split())


def u(text: str) -> Turn:
    return Turn("user", text)


def a(text: str) -> Turn:
    return Turn("assistant", text)


def test_keeps_everything_when_it_fits() -> None:
    turns = [u("hi there"), a("hello"), u("how are you")]
    assert fit_history(turns, words, 100, per_turn_overhead=1) == turns


def test_drops_oldest_whole_turns() -> None:
    turns = [u("one two three"), a("four five"), u("six")]
    # costs with overhead 1: 4, 3, 2 → budget 5 keeps the last two, which start with assistant
    assert fit_history(turns, words, 5, per_turn_overhead=1) == [u("six")]
    assert fit_history(turns, words, 9, per_turn_overhead=1) == turns
    assert fit_history(turns, words, 8, per_turn_overhead=1) == [u("six")]


def test_keeps_system_turn_start() -> None:
    turns = [Turn("system", "be nice"), u("hi")]
    assert fit_history(turns, words, 10, per_turn_overhead=0) == turns


def test_zero_budget() -> None:
    assert fit_history([u("hi")], words, 0) == []
    assert fit_history([u("hi")], words, -5) == []
    assert fit_history([], words, 10) == []


def test_truncates_long_last_turn_from_front() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    result = fit_history([u("old"), u(text)], words, 10, per_turn_overhead=2)
    assert len(result) == 1
    assert result[0].role == "user"
    assert text.endswith(result[0].text)
    assert result[0].text.endswith("w99")
    assert words(result[0].text) + 2 <= 10


def test_truncation_impossible_returns_empty() -> None:
    assert fit_history([u("hello")], words, 3, per_turn_overhead=8) == []


def test_approx_tokens() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("abc") == 1
    assert approx_tokens("abcd") == 2
    assert approx_tokens("é") == 1  # counts bytes, not characters
    # Upper-ish bound: English runs ~4 characters per token.
    sentence = "The quick brown fox jumps over the lazy dog."
    assert approx_tokens(sentence) >= len(sentence) / 4


def test_merge_consecutive() -> None:
    turns = [u("a"), u("b"), u("c"), a("x"), a("y"), u("d")]
    assert merge_consecutive(turns) == [u("a\nb\nc"), a("x\ny"), u("d")]
    assert merge_consecutive([]) == []


roles = st.sampled_from(["system", "user", "assistant"])
turn_st = st.builds(Turn, role=roles, text=st.text(max_size=60))
turns_st = st.lists(turn_st, max_size=12)


@given(turns_st, st.integers(min_value=-5, max_value=200), st.integers(0, 10))
def test_fit_history_properties(turns: list[Turn], budget: int, overhead: int) -> None:
    result = fit_history(turns, approx_tokens, budget, per_turn_overhead=overhead)
    if result:
        assert result[0].role != "assistant"
        assert budget > 0
    total = sum(approx_tokens(t.text) + overhead for t in result)
    last_fits = bool(turns) and approx_tokens(turns[-1].text) + overhead <= budget
    if last_fits:
        assert total <= budget
        # a suffix of the input, made of whole turns
        assert result == turns[len(turns) - len(result) :]
    elif result:
        # only the last turn, cut from the front, within budget
        assert len(result) == 1
        assert result[0].role == turns[-1].role
        assert turns[-1].text.endswith(result[0].text)
        assert total <= budget


@given(turns_st, st.integers(1, 200))
def test_fit_history_keeps_maximal_suffix(turns: list[Turn], budget: int) -> None:
    result = fit_history(turns, approx_tokens, budget)
    if result and len(result) < len(turns) and result == turns[len(turns) - len(result) :]:
        # the dropped turns could not all have been added: either the next older one is too
        # costly or only assistant turns were trimmed from the start
        n = len(result)
        suffix_cost = sum(approx_tokens(t.text) + 8 for t in turns[-n - 1 :])
        assert suffix_cost > budget or turns[-n - 1].role == "assistant"


@given(st.lists(turn_st, max_size=12))
def test_merge_alternates_and_preserves_text(turns: list[Turn]) -> None:
    merged = merge_consecutive(turns)
    for left, right in pairwise(merged):
        assert left.role != right.role
    assert "\n".join(t.text for t in merged) == "\n".join(t.text for t in turns)


def test_only_the_newest_context_turns_are_kept_and_senders_are_named() -> None:
    from aiconv.conversation.history import keep_recent_context

    turns = [
        Turn("user", "c1", sender="Ann", context_only=True),
        Turn("user", "q", sender="Bob"),
        Turn("user", "c2", sender="Ann", context_only=True),
        Turn("user", "c3", sender="Cy", context_only=True),
        Turn("assistant", "a"),
    ]
    assert [t.text for t in keep_recent_context(turns, 2)] == ["q", "c2", "c3", "a"]
    assert [t.text for t in keep_recent_context(turns, 0)] == ["q", "a"]
    assert [t.text for t in keep_recent_context(turns, 9)] == ["c1", "q", "c2", "c3", "a"]
    assert turns[1].speaker_text() == "Bob: q"
    assert turns[4].speaker_text() == "a"


# --- /retry markers ----------------------------------------------------------------------------

_roles = st.sampled_from(["user", "assistant", "retry", "context"])


def _turn(kind: str, index: int) -> Turn:
    if kind == "retry":
        return Turn("user", "/retry", retry=True)
    if kind == "context":
        return Turn("user", f"chatter {index}", context_only=True)
    return Turn(kind, f"{kind} {index}")  # type: ignore[arg-type]


def test_a_retry_drops_the_answer_it_follows_and_itself() -> None:
    turns = [
        Turn("user", "hi"),
        Turn("assistant", "hello"),
        Turn("user", "tell a joke"),
        Turn("assistant", "joke one, part 1"),
        Turn("assistant", "joke one, part 2"),
        Turn("user", "x", context_only=True),
        Turn("user", "/retry", retry=True),
    ]
    assert drop_retried(turns) == [*turns[:3], turns[5]]


def test_a_retry_before_any_answer_drops_nothing_else() -> None:
    marker = Turn("user", "/retry", retry=True)
    turns = [Turn("user", "hi"), marker, marker]
    assert drop_retried(turns) == [Turn("user", "hi")]


@given(st.lists(_roles, max_size=30))
def test_retry_markers_only_ever_remove_answers(kinds: list[str]) -> None:
    turns = [_turn(kind, i) for i, kind in enumerate(kinds)]
    kept = drop_retried(turns)
    assert not any(t.retry for t in kept)
    # Every user turn stays, in order; what goes is markers and assistant turns.
    assert [t for t in kept if t.role == "user"] == [
        t for t in turns if t.role == "user" and not t.retry
    ]

    # An answer goes exactly when a later marker follows it with no addressed user turn between.
    def retried(index: int) -> bool:
        for later in turns[index + 1 :]:
            if later.retry:
                return True
            if later.role == "user" and not later.context_only:
                return False
        return False

    assert [t for t in kept if t.role == "assistant"] == [
        t for i, t in enumerate(turns) if t.role == "assistant" and not retried(i)
    ]
    # After a marker, the history ends with user turns: the new turn answers them again.
    if turns and turns[-1].retry:
        assert all(t.role == "user" for t in kept[-1:])
    if not any(t.retry for t in turns):
        assert kept == turns


def _u(message_id: int, retry: bool = False) -> Turn:
    return Turn("user", "/retry" if retry else f"m{message_id}", retry=retry, message_id=message_id)


def _a(message_id: int, reply_to: int) -> Turn:
    return Turn("assistant", f"answer {message_id}", message_id=message_id, reply_to=reply_to)


@pytest.mark.parametrize(
    ("turns", "kept"),
    [
        # The answer right before the marker.
        ([_u(1), _a(2, 1), _u(3, True)], [_u(1)]),
        # /retry sent while the answer was written: stored after the marker, still retried.
        ([_u(1), _u(2, True), _a(3, 1)], [_u(1)]),
        ([_u(1), _u(2), _u(3, True), _a(4, 1)], [_u(1), _u(2)]),
        ([_u(1), _u(2, True), _u(3), _a(4, 1)], [_u(1), _u(3)]),
        # Only the newest answer; both parts of it.
        ([_u(1), _a(2, 1), _u(3), _a(4, 3), _a(5, 3), _u(6, True)], [_u(1), _a(2, 1), _u(3)]),
        # The answer to a marker is retried by the next marker, not by its own.
        ([_u(1), _a(2, 1), _u(3, True), _a(4, 3)], [_u(1), _a(4, 3)]),
        ([_u(1), _a(2, 1), _u(3, True), _a(4, 3), _u(5, True)], [_u(1)]),
        # A command's fixed reply (its command is not stored) is not the answer retried.
        ([_u(1), _a(2, 1), _a(4, 3), _u(5, True)], [_u(1), _a(4, 3)]),
    ],
)
def test_a_retry_finds_the_answer_it_retries_by_ids(turns: list[Turn], kept: list[Turn]) -> None:
    assert drop_retried(turns) == kept
