"""Where the text is in a request or an answer body: `Slot`s a guardrail reads and may replace.

Input (what the model would see), all roles:
- chat: `messages[].content` (a string or text parts), tool results (`role: tool`), assistant
  `tool_calls[].function.arguments` (and the legacy `function_call.arguments`);
- messages (Anthropic) and count_tokens: `system` (a string or text blocks),
  `messages[].content` (a string, `text` blocks, `tool_result` content, `tool_use` input's strings,
  `document` blocks' title, context and plain-text or content source);
- completions: `prompt` (a string or strings) and `suffix`; embeddings: `input` (a string or strings; token
  arrays are not text);
- responses: `instructions`, `input` (a string, or items' `content` strings and text parts,
  `function_call.arguments`, `custom_tool_call.input`, `function_call_output.output`: a string
  or `input_text` parts);
- moderations: `input` (a string, strings, or text parts); speech: `input`; images: `prompt`;
  rerank: `query` and `documents` (strings, or objects with `text`). The multipart uploads
  (image edits, transcriptions) are not JSON: their `prompt` is not scanned.

Output (a non-stream answer): chat `choices[].message.content`, `.reasoning_content` (or vLLM's `.reasoning`), `.refusal`
and tool-call arguments, completions `choices[].text`, Anthropic `content[].text` and
`tool_use` input's strings, responses `output[].content[].text` and `.refusal`, reasoning
`summary[].text`, `function_call.arguments` and `custom_tool_call.input`. Anthropic `thinking` blocks only when the
gateway wrote them (`thinking=True`: an OpenAI-schema backend's reasoning, translated): Anthropic's
own are signed, and a changed one is refused when the client sends it back.

A message's `reasoning` that repeats its `reasoning_content` (vLLM 0.11+ sends both) is not a
slot of its own: it is one text, scanned and counted once, and given the other's result
(`reasoning_echoes`).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Slot = tuple[Any, Any]  # (container, key): container[key] is a str


def _str(holder: Any, key: Any) -> Iterator[Slot]:
    if isinstance(holder, dict) and isinstance(holder.get(key), str):
        yield holder, key
    elif isinstance(holder, list) and isinstance(key, int) and isinstance(holder[key], str):
        yield holder, key


def _strings(value: Any) -> Iterator[Slot]:
    """Every string inside a JSON value (tool_use input)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                yield value, k
            else:
                yield from _strings(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                yield value, i
            else:
                yield from _strings(v)


def _parts(holder: dict[str, Any], key: str) -> Iterator[Slot]:
    """A string field, or a list of parts/blocks with text in it."""
    content = holder.get(key)
    if isinstance(content, str):
        yield holder, key
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "tool_result":
                yield from _parts(part, "content")
            elif kind == "tool_use":
                yield from _strings(part.get("input"))
            elif kind == "document":
                yield from _document(part)
            else:
                yield from _str(part, "text")
                yield from _str(part, "refusal")  # a refusal part (chat, responses)
                yield from _parts(part, "output")  # responses: function_call_output (a string or input_text parts)
                yield from _str(part, "arguments")  # responses: function_call
                if kind == "custom_tool_call":  # responses: a freeform tool call's input
                    yield from _str(part, "input")
                if "content" in part:
                    yield from _parts(part, "content")
                if "summary" in part:  # responses: a reasoning item
                    yield from _parts(part, "summary")


def _document(block: dict[str, Any]) -> Iterator[Slot]:
    """An Anthropic document block's text: its title and context, and a plain-text source's
    `data` or a content source's text blocks (a base64 PDF or a URL is not text)."""
    yield from _str(block, "title")
    yield from _str(block, "context")
    source = block.get("source")
    if not isinstance(source, dict):
        return
    if source.get("type") == "text":
        yield from _str(source, "data")
    elif source.get("type") == "content":
        yield from _parts(source, "content")


def _items(holder: dict[str, Any], key: str) -> list[Any]:
    """`holder[key]` if it is a list, else no items: a body is the client's or the upstream's,
    and a field of another type (`"messages": 5`) has no text to scan; the upstream answers it."""
    value = holder.get(key)
    return value if isinstance(value, list) else []


def _list_or_str(holder: dict[str, Any], key: str) -> Iterator[Slot]:
    value = holder.get(key)
    if isinstance(value, str):
        yield holder, key
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                yield value, i


def input_slots(api: str, body: Any) -> list[Slot]:
    if not isinstance(body, dict):
        return []
    slots: list[Slot] = []
    if api in ("chat", "messages", "count_tokens"):
        slots += _parts(body, "system")
        for message in _items(body, "messages"):
            if not isinstance(message, dict):
                continue
            slots += _parts(message, "content")
            slots += _str(message, "refusal")  # (an earlier assistant turn's)
            for call in _items(message, "tool_calls"):
                if isinstance(call, dict):
                    slots += _str(call.get("function"), "arguments")
            slots += _str(message.get("function_call"), "arguments")
    elif api == "completions":
        slots += _list_or_str(body, "prompt")
        slots += _str(body, "suffix")  # (the text after the insertion point: the model reads it too)
    elif api == "embeddings":
        slots += _list_or_str(body, "input")
    elif api == "responses":
        slots += _str(body, "instructions")
        slots += _parts(body, "input")
    elif api in ("moderations", "speech"):
        slots += _list_or_str(body, "input")
        slots += _parts(body, "input") if isinstance(body.get("input"), list) else ()  # moderations' text parts
    elif api == "images":
        slots += _str(body, "prompt")
    elif api == "rerank":
        slots += _str(body, "query")
        slots += _list_or_str(body, "documents")
        slots += _parts(body, "documents") if isinstance(body.get("documents"), list) else ()  # Jina's {text}
    return slots


def _thinking(content: Any) -> Iterator[Slot]:
    """The text of an Anthropic message's thinking blocks."""
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "thinking":
                yield from _str(block, "thinking")


def _echoes(message: dict[str, Any]) -> bool:
    """Whether the message's `reasoning` repeats its `reasoning_content`."""
    text = message.get("reasoning_content")
    return isinstance(text, str) and text == message.get("reasoning")


def reasoning_echoes(body: Any) -> list[dict[str, Any]]:
    """The messages of a chat answer whose `reasoning` repeats their `reasoning_content`: once the
    slots are scanned, `reasoning` is set to what `reasoning_content` became."""
    if not isinstance(body, dict):
        return []
    messages = (choice.get("message") for choice in _items(body, "choices") if isinstance(choice, dict))
    return [m for m in messages if isinstance(m, dict) and _echoes(m)]


def output_slots(body: Any, thinking: bool = False) -> list[Slot]:
    """The texts of an answer; `thinking`: an Anthropic message's thinking blocks too."""
    if not isinstance(body, dict):
        return []
    slots: list[Slot] = []
    for choice in _items(body, "choices"):
        if not isinstance(choice, dict):
            continue
        slots += _str(choice, "text")
        message = choice.get("message")
        if isinstance(message, dict):
            slots += _str(message, "content")
            slots += _str(message, "reasoning_content")  # (what the gateway makes of a provider's thinking)
            if not _echoes(message):  # (vLLM 0.11+'s newer name for it; a repeat is not scanned twice)
                slots += _str(message, "reasoning")
            slots += _str(message, "refusal")
            for call in _items(message, "tool_calls"):
                if isinstance(call, dict):
                    slots += _str(call.get("function"), "arguments")
    if body.get("type") == "message":
        slots += _parts(body, "content")
        if thinking:
            slots += _thinking(body.get("content"))
    for item in _items(body, "output"):
        if isinstance(item, dict):
            slots += _str(item, "arguments")
            if item.get("type") == "custom_tool_call":  # a freeform tool's input: its arguments
                slots += _str(item, "input")
            slots += _parts(item, "content")  # (a reasoning item's reasoning_text parts too)
            slots += _parts(item, "summary")  # a reasoning item's summary text
    return slots
