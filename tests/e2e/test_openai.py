"""The OpenAI-compatible API of a real aiconv process, driven by the official `openai` client."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.support.processes import Launcher
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-test-key"
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name one colour of the rainbow."}
]


def client(process: object, key: str = KEY) -> AsyncOpenAI:
    base = f"{process.web_url}/v1"  # type: ignore[attr-defined]
    return AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)


async def test_chat_completions_streaming_and_not_with_the_openai_client(
    launch: Launcher,
) -> None:
    process = await launch("all", OPENAI_API_KEYS=f"other-key,{KEY}", ML_PARALLEL="2")
    api = client(process)

    models = await api.models.list()
    [model] = models.data
    assert model.id.startswith("SmolLM2")

    whole = await api.chat.completions.create(
        model=model.id,
        messages=QUESTION,
        temperature=0,
        max_tokens=16,
    )
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None
    assert whole.usage.prompt_tokens > 0
    assert 0 < whole.usage.completion_tokens <= 16
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    stream = await api.chat.completions.create(
        model=model.id,
        messages=QUESTION,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish = None
    usage = None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    # Greedy decoding: the stream says exactly what the whole answer said.
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    # The second identical prompt reused the first one's evaluated prefix.
    assert usage.prompt_tokens_details is not None
    assert (
        usage.prompt_tokens_details.cached_tokens and usage.prompt_tokens_details.cached_tokens > 0
    )

    with pytest.raises(openai.AuthenticationError):
        await client(process, "wrong-key").chat.completions.create(
            model=model.id,
            messages=QUESTION,
        )
    with pytest.raises(openai.AuthenticationError):
        await client(process, "wrong-key").models.list()
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model=model.id, messages=[])

    async with httpx.AsyncClient() as http:
        response = await http.post(f"{process.web_url}/v1/chat/completions", json={})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"

    # A client that goes away mid-answer cancels its generation.
    story: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Tell me a very long story about a lighthouse."}
    ]
    stream = await api.chat.completions.create(
        model=model.id,
        messages=story,
        max_tokens=500,
        stream=True,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()

    def cancelled() -> bool:
        return any(
            e.get("event") == "api request generated" and e.get("finish_reason") == "cancelled"
            for e in process.log_events()
        )

    await eventually(cancelled, timeout=60)


async def test_the_api_is_off_without_keys(launch: Launcher) -> None:
    process = await launch("web")
    async with httpx.AsyncClient() as http:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            response = await http.request(method, f"{process.web_url}{path}", json={})
            assert response.status_code == 404
            assert "OPENAI_API_KEYS" in response.json()["error"]["message"]


@pytest.mark.both_redis
async def test_v1_answers_through_a_web_and_an_ml_process_on_either_redis(
    launch: Launcher,
) -> None:
    """The /v1 path across processes, on one Redis and on the cluster: each of the web's
    workers has its own result reader, whose requests' answers lie in its own hash slot; ml
    must write each answer where the job says its reader is (else the request times out).
    Both processes' readiness checks ping Redis (every primary of a cluster) before they count
    as started."""
    web = await launch("web", OPENAI_API_KEYS=KEY, WEB_WORKERS="2")
    await launch("ml", ML_PARALLEL="2")
    api = client(web)
    [model] = (await api.models.list()).data

    async def ask(n: int) -> str:
        answer = await api.chat.completions.create(
            model=model.id,
            messages=[{"role": "user", "content": f"Say the number {n}."}],
            temperature=0,
            max_tokens=8,
        )
        assert answer.choices[0].finish_reason in ("stop", "length")
        return answer.choices[0].message.content or ""

    # Several at once: requests wait side by side, on whichever workers took them.
    answers = await asyncio.gather(*(ask(n) for n in range(4)))
    assert all(answers)
    stream = await api.chat.completions.create(
        model=model.id, messages=QUESTION, temperature=0, max_tokens=8, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces)
