"""What the web, the worker and ml agree on about generation jobs: kinds, Redis key names.

Kept free of llama.cpp imports: the web mode uses it without loading a model.

API requests (kind "openai"): the web enqueues on `{prefix}generate` a job
`{"kind": "openai", "key": "oai:<id>", "id", "messages", "max_tokens", "temperature", "top_p",
"stop", "seed", "created"}`; ml answers on the stream `{prefix}oai:<id>` with entries whose one
field `event` is JSON: `{"type": "start", "attempt"}`, then `{"type": "delta", "text"}`..., then
`{"type": "done", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens"}` or
`{"type": "error", "status", "code", "message"}`. The stream expires after
RESPONSE_TTL_SECONDS. The web sets `{prefix}oai:<id>:cancel` when its client goes away.
"""

from __future__ import annotations

from pathlib import Path

API_KIND = "openai"
RESPONSE_TTL_SECONDS = 600


def served_model_id(model_path: Path) -> str:
    """The model's name for API clients: its GGUF file name without `.gguf`."""
    return model_path.name.removesuffix(".gguf")
