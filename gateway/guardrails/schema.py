"""The `json_schema` guardrail's per-request part: the request's JSON Schema, and the answer texts
it is checked against (tollway.core.guardrails.json_schema does the checking).

Where the schema is: chat `response_format: {type: json_schema, json_schema: {name, schema,
strict}}`, the Responses API's `text.format: {type: json_schema, name, schema, strict}`. A request
without one is untouched. A `json_schema` format without `schema` is checked for being JSON only.

What is checked, the text the client gets (after any masking guardrail before it):
- chat: each choice's `message.content` (a stream: its content deltas, at its `finish_reason`,
  else at `data: [DONE]`); a choice that refused (`refusal`) or called tools is not an answer;
- responses: each `message` output item's `output_text` parts, joined (a stream: at its
  `response.output_item.done`); an item with a `refusal` part is not checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (the module loads jsonschema: imported when a schema is first checked)
    from tollway.core.guardrails.json_schema import CompiledSchema

_NOT_ANSWERS = ("tool_calls", "function_call")  # finish reasons of a choice that did not answer


def schema_of(api: str, body: Any) -> tuple[object, str] | None:
    """The request's JSON Schema for its answer and the parameter it came in, or None."""
    if not isinstance(body, dict):
        return None
    if api == "chat":
        fmt, param = body.get("response_format"), "response_format.json_schema.schema"
        spec = fmt.get("json_schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
    elif api == "responses":
        text = body.get("text")
        spec, param = text.get("format") if isinstance(text, dict) else None, "text.format.schema"
        spec = spec if isinstance(spec, dict) and spec.get("type") == "json_schema" else None
    else:
        return None
    if not isinstance(spec, dict):
        return None
    return spec.get("schema", {}), param


@dataclass(slots=True)
class AnswerSchema:
    """One request's compiled schema, and its streamed answers' text so far (by choice or output item)."""

    compiled: CompiledSchema
    texts: dict[int, list[str]] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)  # choices/items that refused or called tools

    @classmethod
    def of(cls, schema: object) -> AnswerSchema:
        """Raises SchemaRefused."""
        from tollway.core.guardrails.json_schema import compile_schema
        return cls(compile_schema(schema))

    def check(self, text: str) -> str | None:
        from tollway.core.guardrails.json_schema import violation
        return violation(self.compiled, text)

    def saw(self, index: int, delta: dict[str, Any]) -> None:
        """A chat delta of choice `index`: a refusal is not an answer; content (even "") is one."""
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self.skip.add(index)
        if isinstance(delta.get("content"), str):
            self.add(index, "")  # seen: an empty answer is checked too

    def add(self, index: int, text: str) -> None:
        self.texts.setdefault(index, []).append(text)

    def ended(self, index: int, finish: object = None) -> str | None:
        """The text of the streamed answer `index` that just ended, if it is to be checked."""
        parts = self.texts.pop(index, None)
        if index in self.skip or finish in _NOT_ANSWERS or parts is None:
            self.skip.discard(index)
            return None
        return "".join(parts)


def chat_answers(body: Any) -> list[str]:
    """The answers of a non-stream chat completion to check."""
    found: list[str] = []
    choices = body.get("choices") if isinstance(body, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or message.get("refusal") or choice.get("finish_reason") in _NOT_ANSWERS:
            continue
        if isinstance(message.get("content"), str):
            found.append(message["content"])
    return found


def item_answer(item: Any) -> str | None:
    """The text of one Responses `message` output item to check, or None."""
    if not isinstance(item, dict) or item.get("type") != "message" or not isinstance(item.get("content"), list):
        return None
    parts = [p for p in item["content"] if isinstance(p, dict)]
    if any(p.get("type") == "refusal" for p in parts):
        return None
    texts = [p["text"] for p in parts if p.get("type") == "output_text" and isinstance(p.get("text"), str)]
    return "".join(texts) if texts else None


def responses_answers(body: Any) -> list[str]:
    """The answers of a non-stream Responses API answer to check."""
    output = body.get("output") if isinstance(body, dict) else None
    return [text for item in output if (text := item_answer(item)) is not None] if isinstance(output, list) else []
