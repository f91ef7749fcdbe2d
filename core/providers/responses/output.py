"""Writing Responses API answers: the `response` object, from an OpenAI chat completion.

Every translated provider ends here (through its chat translator), so ids, statuses and usage
are decided once. The `response` object echoes the request's settings as OpenAI does
(`instructions`, `tools`, `tool_choice`, `temperature`, ...); `store` is always false, since
the gateway keeps nothing a later request could refer to.
"""
from __future__ import annotations

import hashlib

from tollway.core.providers.responses import wire
from tollway.core.providers.wire import openai as oa
from tollway.ext.usage import Usage

# Chat finish reasons that end a response early: status "incomplete" and the reason why.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponseIds:
    """The ids of one response and its output items, derived from the upstream answer's id so
    that every event of a stream, and the final snapshot, name an item the same way."""

    def __init__(self, seed: str, now: float) -> None:
        self.stem = hashlib.blake2b(f"{seed}|{now!r}".encode(), digest_size=12).hexdigest()
        self.response = "resp_" + self.stem

    def message(self, n: int) -> str:
        return f"msg_{self.stem}{n}"

    def reasoning(self, n: int) -> str:
        return f"rs_{self.stem}{n}"

    def function_call(self, n: int) -> str:
        return f"fc_{self.stem}{n}"


def usage_out(u: Usage) -> wire.ResponseUsage:
    """The Responses usage object: cached and cache-write tokens are part of `input_tokens`,
    reasoning tokens part of `output_tokens`, as OpenAI counts them."""
    return wire.ResponseUsage(u.prompt_tokens, wire.InputTokensDetails(u.cached_tokens, u.cache_write_tokens),
                              u.completion_tokens, wire.OutputTokensDetails(u.reasoning_tokens), u.total_tokens)


class ResponseFrame:
    """The request's settings a `response` object echoes, and the object for given output."""

    def __init__(self, req: wire.ResponsesRequest, ids: ResponseIds, model: str, now: float) -> None:
        self.req, self.ids, self.model, self.created = req, ids, model, int(now)

    def response(self, status: str, output: list[wire.OutputItem], usage: Usage | None,
                 finish_reason: str | None = None, error: wire.ResponseError | None = None) -> wire.Response:
        req = self.req
        reason = INCOMPLETE.get(finish_reason or "")
        if reason is not None and status == "completed":
            status = "incomplete"
        effort = req.reasoning.effort if req.reasoning else None
        return wire.Response(
            id=self.ids.response, created_at=self.created, model=self.model, status=status, output=output,
            usage=usage_out(usage) if usage is not None else None, error=error,
            incomplete_details=wire.IncompleteDetails(reason) if reason and status == "incomplete" else None,
            instructions=req.instructions, max_output_tokens=req.max_output_tokens,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            reasoning=wire.ReasoningOut(effort, req.reasoning.summary if req.reasoning else None),
            temperature=req.temperature, text=req.text or wire.TextConfig(wire.TextFormat("text")),
            tool_choice=req.tool_choice or "auto", tools=req.tools or [], top_p=req.top_p,
            user=req.user, metadata=req.metadata or {},
        )


def output_items(ids: ResponseIds, m: oa.AnswerMessage) -> list[wire.OutputItem]:
    """The output items of a chat answer, in the order a model produces them: its reasoning,
    its text, its function calls."""
    items: list[wire.OutputItem] = []
    reasoning = m.reasoning_text  # (`reasoning_content`, or vLLM's newer `reasoning`)
    if reasoning:
        items.append(wire.ReasoningItem(id=ids.reasoning(0), summary=[wire.SummaryText(reasoning)]))
    if m.content:
        items.append(wire.MessageItem(id=ids.message(len(items)), content=[wire.OutputText(m.content)]))
    for call in m.tool_calls or []:
        items.append(wire.FunctionCallItem(id=ids.function_call(len(items)), call_id=call.id,
                                           name=call.function.name, arguments=call.function.arguments))
    return items


def response_body(req: wire.ResponsesRequest, done: oa.ChatCompletion, usage: Usage | None, model: str,
                  now: float) -> bytes:
    """The whole `response` body for a chat completion answering `req`."""
    ids = ResponseIds(done.id or model, now)
    choice = done.choices[0] if done.choices else oa.AnswerChoice(oa.AnswerMessage(), "content_filter")
    frame = ResponseFrame(req, ids, done.model or model, now)
    return wire.encode(frame.response("completed", output_items(ids, choice.message), usage, choice.finish_reason))
