"""OpenAI response bodies: chat.completion, text_completion, and their stream chunks."""

from __future__ import annotations

from typing import Any

from gateway.types import ChatResult, StreamChunk, Usage


def chat_completion(response_id: str, created: int, model: str, result: ChatResult) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": result.usage.to_openai(),
    }


def text_completion(response_id: str, created: int, model: str, result: ChatResult) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": result.usage.to_openai(),
    }


class ChunkFormatter:
    """Builds the stream objects of one response: chat chunks or text_completion objects."""

    def __init__(self, endpoint: str, response_id: str, created: int, model: str, include_usage: bool) -> None:
        self.chat = endpoint == "chat.completions"
        self.id = response_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self._role_sent = False

    def _base(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
        }
        return body

    def content(self, chunk: StreamChunk) -> dict[str, Any] | None:
        """The client object for one upstream chunk, or None when it carries nothing to say."""
        if not chunk.text and chunk.finish_reason is None and self._role_sent:
            return None
        body = self._base()
        if self.chat:
            delta: dict[str, Any] = {}
            if not self._role_sent:
                delta["role"] = "assistant"
                delta["content"] = chunk.text
                self._role_sent = True
            elif chunk.text:
                delta["content"] = chunk.text
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": chunk.finish_reason,
            }
        else:
            self._role_sent = True
            choice = {"index": 0, "text": chunk.text, "logprobs": None, "finish_reason": chunk.finish_reason}
        body["choices"] = [choice]
        if self.include_usage:
            body["usage"] = None
        return body

    def usage(self, usage: Usage, extension: dict[str, Any]) -> dict[str, Any]:
        """The final ``choices: []`` chunk with the totals and the gateway's extension field."""
        body = self._base()
        body["choices"] = []
        body["usage"] = usage.to_openai()
        body["x_llm_gateway"] = extension
        return body
