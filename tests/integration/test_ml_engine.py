"""The batching engine on the bundled model: every sequence gets its own answer, reuse is exact.

Greedy decoding makes outputs reproducible, so each check compares against the same prompt run
alone or cold. The few-shot "repeat the word" prompt makes the right answer checkable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from aiconv.config import default_model_path
from aiconv.conversation.history import Turn
from aiconv.ml.engine import Completion, Engine, EngineClosed, EngineConfig, PromptTooLong
from aiconv.ml.generator import prompt_tokens
from tests.support.waiting import eventually

WORDS = ["banana", "elephant", "violin", "saxophone", "pumpkin", "giraffe", "umbrella", "castle"]


def repeat(word: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You repeat the word the user gives you, exactly."},
        {"role": "user", "content": "Repeat: apple"},
        {"role": "assistant", "content": "apple"},
        {"role": "user", "content": "Repeat: window"},
        {"role": "assistant", "content": "window"},
        {"role": "user", "content": f"Repeat: {word}"},
    ]


TOPICS = ["photosynthesis", "how glaciers form", "the printing press", "volcanoes", "tides"]
STORY = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]


@pytest.fixture(scope="module")
def engine_options() -> Mapping[str, Any]:
    """The shared `engine` fixture (tests/support/fixtures.py), configured for this module."""
    return {"max_tokens": 16, "parallel": 4, "cache_mb": 64}


async def run(engine: Engine, messages: list[dict[str, str]], **options: object) -> Completion:
    return await engine.submit(engine.chat_tokens(messages), **options).result()  # type: ignore[arg-type]


async def test_concurrent_conversations_each_get_their_own_answer(engine: Engine) -> None:
    await engine.forget()
    alone = {word: (await run(engine, repeat(word))).text for word in WORDS}
    # The prompts are chosen so that the model answers with the word itself.
    assert all(alone[word].strip().lower() == word for word in WORDS), alone

    await engine.forget()
    together = await asyncio.gather(*(run(engine, repeat(word)) for word in WORDS))
    for word, completion in zip(WORDS, together, strict=True):
        assert completion.text == alone[word]
        others = [w for w in WORDS if w != word]
        assert not any(other in completion.text.lower() for other in others)
    # More conversations than slots: some waited for a slot, all were answered.
    assert len(together) > engine.context.n_seq


async def test_a_new_request_joins_while_another_is_generating(engine: Engine) -> None:
    finished: list[str] = []

    async def tracked(name: str, messages: list[dict[str, str]], **options: object) -> None:
        await run(engine, messages, **options)
        finished.append(name)

    long = asyncio.create_task(tracked("long", STORY, max_tokens=200))
    await eventually(lambda: engine.active > 0, timeout=30)
    await tracked("short", repeat("pencil"), max_tokens=3)
    assert finished == ["short"]  # it did not wait for the long one to finish
    await long
    assert finished == ["short", "long"]


async def test_reused_prefix_gives_the_same_output_as_cold(engine: Engine) -> None:
    chat = [{"role": "user", "content": "Hi! My favourite animal is the otter. Tell me why."}]
    first = await run(engine, chat, cache_key="reuse", max_tokens=24)
    follow = [
        *chat,
        {"role": "assistant", "content": first.text.strip()},
        {"role": "user", "content": "And what do otters eat?"},
    ]
    reused = await run(engine, follow, cache_key="reuse", max_tokens=24)
    assert reused.cached_tokens > reused.prompt_tokens // 2  # only the new turn was evaluated

    await engine.forget()
    cold = await run(engine, follow, cache_key="reuse", max_tokens=24)
    assert cold.cached_tokens == 0
    assert reused.text == cold.text


async def test_a_conversation_evicted_from_its_slot_comes_back_from_memory(engine: Engine) -> None:
    await engine.forget()
    chat = [{"role": "user", "content": "Describe a quiet morning by a lake in a few sentences."}]
    first = await run(engine, chat, cache_key="evicted", max_tokens=48)
    follow = [
        *chat,
        {"role": "assistant", "content": first.text.strip()},
        {"role": "user", "content": "Now describe the evening."},
    ]
    # Other conversations take every slot, so this chat's state is saved to host memory.
    for i, topic in enumerate(TOPICS[: engine.context.n_seq]):
        other = [{"role": "user", "content": f"Explain {topic} in a few sentences."}]
        await run(engine, other, cache_key=f"other-{i}")
    restored = await run(engine, follow, cache_key="evicted", max_tokens=24)
    assert restored.cached_tokens > restored.prompt_tokens // 2
    assert engine.cache.hits > 0

    await engine.forget()
    cold = await run(engine, follow, cache_key="evicted", max_tokens=24)
    assert restored.text == cold.text


async def test_cancelling_one_sequence_leaves_the_others_intact(engine: Engine) -> None:
    await engine.forget()
    alone = (await run(engine, repeat("guitar"))).text
    story = engine.submit(engine.chat_tokens(STORY), max_tokens=400)
    other = engine.submit(engine.chat_tokens(repeat("guitar")))
    pieces = []
    async for piece in story:
        pieces.append(piece)
        story.cancel()
    assert story.completion is not None
    assert story.completion.finish_reason == "cancelled"
    assert story.completion.completion_tokens < 400
    assert (await other.result()).text == alone


async def test_a_request_cancelled_before_it_starts_generates_nothing(engine: Engine) -> None:
    generations = [engine.submit(engine.chat_tokens(STORY), max_tokens=100) for _ in range(6)]
    for generation in generations:
        generation.cancel()
    results = [await g.result() for g in generations]
    assert all(r.finish_reason == "cancelled" for r in results)
    assert all(r.completion_tokens < 100 for r in results)


async def test_max_tokens_and_stop_sequences(engine: Engine) -> None:
    limited = await run(engine, STORY, max_tokens=5)
    assert limited.finish_reason == "length"
    assert limited.completion_tokens == 5

    full = await run(engine, STORY, max_tokens=40)
    words = full.text.split()
    stop = words[len(words) // 2]
    stopped = await run(engine, STORY, max_tokens=40, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert full.text.startswith(stopped.text)


async def test_over_long_history_is_trimmed_to_fit(engine: Engine) -> None:
    turns = []
    for i in range(60):
        turns.append(Turn("user", f"Message number {i}: " + "tell me more about rivers. " * 10))
        turns.append(Turn("assistant", "Rivers are long flowing bodies of water. " * 8))
    turns.append(Turn("user", "Thanks! Say goodbye."))
    tokens, _ = await asyncio.to_thread(prompt_tokens, engine, "Be kind.", turns)
    assert len(tokens) + engine.config.max_tokens <= engine.n_ctx_seq
    completion = await engine.submit(tokens).result()
    assert completion.completion_tokens > 0


async def test_a_single_giant_message_keeps_its_end(engine: Engine) -> None:
    giant = "blah " * 50_000 + "What is the capital of France?"
    tokens, _ = await asyncio.to_thread(prompt_tokens, engine, "Be kind.", [Turn("user", giant)])
    assert len(tokens) + engine.config.max_tokens <= engine.n_ctx_seq
    prompt_text = b"".join(engine.model.piece(t) for t in tokens).decode()
    assert "capital of France" in prompt_text
    completion = await engine.submit(tokens).result()
    assert completion.completion_tokens > 0


async def test_a_prompt_that_cannot_fit_is_refused_clearly(engine: Engine) -> None:
    with pytest.raises(PromptTooLong):
        engine.submit([1] * engine.n_ctx_seq)
    with pytest.raises(PromptTooLong):
        engine.submit([])


async def test_a_closed_engine_refuses_work() -> None:
    config = EngineConfig(model_path=default_model_path(), n_ctx=256, n_threads=1, parallel=1)
    engine = Engine.open(config)
    engine.close()
    with pytest.raises(EngineClosed):
        engine.submit([1, 2, 3])


async def test_a_chat_longer_than_the_context_keeps_reusing_its_prefix(engine: Engine) -> None:
    await engine.forget()
    history: list[Turn] = []
    anchor = None
    reused = []
    trimmed = 0
    for n in range(14):
        history.append(Turn("user", f"Question {n}: " + "what else can you say about rivers? " * 6))
        tokens, anchor = await asyncio.to_thread(prompt_tokens, engine, "Be kind.", history, anchor)
        assert len(tokens) + engine.config.max_tokens <= engine.n_ctx_seq
        trimmed += anchor != history[0]
        done = await engine.submit(tokens, cache_key="long-chat", max_tokens=4).result()
        reused.append(done.cached_tokens >= done.prompt_tokens // 2)
        history.append(Turn("assistant", f"Answer {n}: " + "rivers carry water to the sea. " * 6))
    assert trimmed >= 4  # the chat outgrew the context
    # A cut costs one cold turn; the turns between cuts reuse the evaluated prefix.
    assert sum(reused[1:]) >= len(reused) - 4


async def test_a_new_conversation_borrows_the_shared_system_prompt(engine: Engine) -> None:
    system = {"role": "system", "content": "You are a patient teacher of geography. " * 8}
    await engine.forget()
    await run(engine, [system, {"role": "user", "content": "Name a long river."}], cache_key="a")
    other = [system, {"role": "user", "content": "Name a high mountain."}]
    borrowed = await run(engine, other, cache_key="b")
    system_tokens = len(engine.chat_tokens([system])) - 5
    assert borrowed.cached_tokens >= system_tokens
    await engine.forget()
    cold = await run(engine, other, cache_key="b")
    assert cold.cached_tokens == 0
    assert borrowed.text == cold.text
