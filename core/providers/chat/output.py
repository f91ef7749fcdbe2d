"""Writing OpenAI chat answers: `chat.completion` bodies and `chat.completion.chunk` events.

Every translator from a non-OpenAI provider ends here, so the client-visible shape (ids,
`finish_reason` rules, usage with its details) is decided once. Two rules from the issue:
`finish_reason` is `tool_calls` whenever tool calls are present, whatever the provider said,
and any max-tokens stop is `length`.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from tollway.ext.usage import Usage

_encode = msgspec.json.encode
DONE = b"data: [DONE]\n\n"


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class UsageOut(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


def usage_out(u: Usage) -> UsageOut:
    """OpenAI's usage object for `u`, details included."""
    return UsageOut(u.prompt_tokens, u.completion_tokens, u.total_tokens,
                    PromptTokensDetails(u.cached_tokens), CompletionTokensDetails(u.reasoning_tokens))


def completion_id(seed: bytes, now: float) -> str:
    """A stable-looking `chatcmpl-` id for providers that give none."""
    return "chatcmpl-" + hashlib.blake2b(seed + repr(now).encode(), digest_size=12).hexdigest()


def finish_reason(mapped: str | None, has_tool_calls: bool) -> str:
    """OpenAI's finish_reason for a provider's mapped stop reason. Tool calls turn an ordinary
    stop into `tool_calls` (Gemini says STOP after a call); a max-tokens or safety stop stays
    what it is, as OpenAI reports it: a call cut off there may hold half its arguments, and a
    client told `tool_calls` would run the tool with them."""
    if has_tool_calls and (mapped is None or mapped == "stop"):
        return "tool_calls"
    return mapped or "stop"


class FunctionOut(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    id: str
    function: FunctionOut
    type: str = "function"


class MessageOut(msgspec.Struct):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None
    refusal: None = None


class ChoiceOut(msgspec.Struct):
    message: MessageOut
    finish_reason: str
    index: int = 0
    logprobs: None = None


class CompletionOut(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut | None
    object: str = "chat.completion"


def completion_body(
    id: str, created: float, model: str, text: str | None, tool_calls: list[ToolCallOut],
    reason: str | None, usage: Usage | None, reasoning: str | None = None,
) -> bytes:
    """A whole `chat.completion` body; `reason` is the already-mapped finish reason."""
    message = MessageOut(text if (text or not tool_calls) else None, tool_calls=tool_calls or None,
                         reasoning_content=reasoning or None)
    choice = ChoiceOut(message, finish_reason(reason, bool(tool_calls)))
    return _encode(CompletionOut(id, int(created), model, [choice], usage_out(usage) if usage else None))


class ChunkWriter:
    """Encodes the `chat.completion.chunk` events of one streamed answer.

    Tool calls are numbered in the order they start, as OpenAI numbers them, whatever
    index the provider used for its content block.
    """

    def __init__(self, id: str, created: float, model: str, include_usage: bool) -> None:
        self._head = _encode({"id": id, "object": "chat.completion.chunk", "created": int(created), "model": model})[:-1]
        self.include_usage = include_usage
        self.tool_calls = 0
        self.finished = False

    def _event(self, choices: bytes, usage: bytes = b"null") -> bytes:
        tail = b',"usage":' + usage if self.include_usage else b""
        return b"data: " + self._head + b',"choices":' + choices + tail + b"}\n\n"

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._event(_encode([choice]))

    def role(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def text(self, text: str) -> bytes:
        return self.delta({"content": text}) if text else b""

    def reasoning(self, text: str) -> bytes:
        return self.delta({"reasoning_content": text}) if text else b""

    def tool_start(self, call_id: str, name: str, arguments: str = "",
                   extra_content: dict[str, Any] | None = None) -> bytes:
        """Open a new tool call; returns its first chunk. `extra_content`: a provider's own
        fields of the call that a client must send back with it (Gemini's thought signature)."""
        index = self.tool_calls
        self.tool_calls += 1
        call: dict[str, Any] = {"index": index, "id": call_id, "type": "function",
                                "function": {"name": name, "arguments": arguments}}
        if extra_content is not None:
            call["extra_content"] = extra_content
        return self.delta({"tool_calls": [call]})

    def tool_arguments(self, fragment: str) -> bytes:
        """More argument JSON for the most recently opened tool call."""
        if not fragment or not self.tool_calls:
            return b""
        return self.delta({"tool_calls": [{"index": self.tool_calls - 1, "function": {"arguments": fragment}}]})

    def finish(self, mapped_reason: str | None) -> bytes:
        """The closing chunk carrying `finish_reason` (once)."""
        if self.finished:
            return b""
        self.finished = True
        return self.delta({}, finish_reason(mapped_reason, self.tool_calls > 0))

    def end(self, usage: Usage | None) -> bytes:
        """The usage chunk (when the client asked for one) and `[DONE]`."""
        out = self.finish(None)
        if self.include_usage and usage is not None:
            out += self._event(b"[]", _encode(usage_out(usage)))
        return out + DONE
