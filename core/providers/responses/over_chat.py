"""The Responses API (`POST /v1/responses`) served by a provider's chat translator.

A Responses request becomes an OpenAI chat request (`request.py`), which the provider's own
(chat, schema) adapter turns into its native call, exactly as it does for chat clients; its
answer comes back as OpenAI chat bytes and becomes a `response` object (`output.py`) or the
Responses stream events (`stream.py`). Each provider's pair module (`anthropic.py`,
`bedrock.py`, `gemini.py`) names its chat adapter and what the provider can honour, so the
mapping of messages, tools, tool results, usage and errors is written once per provider (in
`providers/chat/`) and once for the Responses API (here), not once per pair.
"""
from __future__ import annotations

import re
from typing import ClassVar

from tollway.core.errors import GatewayError
from tollway.core.providers.base import Adapter, CallContext, ClientAPI, UpstreamCall
from tollway.core.providers.chained import ChainedStream
from tollway.core.providers.registry import adapter_for
from tollway.core.providers.responses.output import response_body
from tollway.core.providers.responses.request import to_chat_request
from tollway.core.providers.responses.stream import responses_over_chat
from tollway.core.providers.responses.wire import decode_responses
from tollway.core.providers.wire import openai as oa
from tollway.core.request import RequestHead, StreamOptions
from tollway.ext.usage import Usage


class ResponsesOverChat:
    """Adapter: Responses API requests served through the provider's chat adapter."""

    inner_schema: ClassVar[str]  # whose (chat, schema) adapter carries the request
    provider: ClassVar[str]  # the provider's name in error messages
    json_mode: ClassVar[bool] = False  # whether its chat translator honours `response_format`

    def inner(self) -> Adapter:
        adapter = adapter_for(ClientAPI.CHAT, self.inner_schema)
        assert adapter is not None  # every inner_schema has a chat adapter (registry.ADAPTERS)
        return adapter

    def build(self, ctx: CallContext) -> UpstreamCall:
        chat, sources = to_chat_request(decode_responses(ctx.body), ctx.upstream_model, self.provider, self.json_mode)
        try:
            return self.inner().build(_chat_ctx(ctx, oa.encode(chat)))
        except GatewayError as err:
            raise _named_as_responses(err, sources) from None

    def response(self, ctx: CallContext, status: int, body: bytes) -> tuple[bytes, Usage | None]:
        chat_body, usage = self.inner().response(_chat_ctx(ctx), status, body)
        return response_body(decode_responses(ctx.body), oa.decode_completion(chat_body), usage, ctx.upstream_model,
                             ctx.now), usage

    def stream(self, ctx: CallContext) -> ChainedStream:
        return responses_over_chat(self.inner().stream(_chat_ctx(ctx)), decode_responses(ctx.body),
                                       ctx.upstream_model, ctx.now)

    def error(self, ctx: CallContext, status: int, headers: list[tuple[str, str]], body: bytes) -> GatewayError:
        return self.inner().error(_chat_ctx(ctx), status, headers, body)


# The chat request fields the Responses fields become (request.py), by their chat names: a chat
# translator's 400 names its own field, which a Responses client never sent.
RESPONSES_FIELDS = {"max_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort",
                    "response_format": "text.format"}
# A chat message (and one of its fields), in a param or a message; the chat message fields a
# Responses item calls otherwise.
_MESSAGE = re.compile(r"messages\[(\d+)\](\.\w+)?")
_ITEM_FIELDS = {".tool_call_id": ".call_id"}


def _named_as_responses(err: GatewayError, sources: list[str]) -> GatewayError:
    """`err` naming the Responses field its chat field came from (its param and its message);
    `sources` names the field each chat message was made from (`to_chat_request`)."""
    field = RESPONSES_FIELDS.get(err.param or "")
    if field is not None:
        err.message = err.message.replace(f"'{err.param}'", f"'{field}'")
        err.param = field
    elif err.param and _MESSAGE.match(err.param):
        err.param = _MESSAGE.sub(lambda m: _source(m, sources), err.param)
        err.message = _MESSAGE.sub(lambda m: _source(m, sources), err.message)
    return err


def _source(found: re.Match[str], sources: list[str]) -> str:
    """The Responses name of the chat message (and field) `found` names."""
    k, field = int(found.group(1)), found.group(2) or ""
    return (sources[k] if k < len(sources) else "input") + _ITEM_FIELDS.get(field, field)


def _chat_ctx(ctx: CallContext, body: bytes = b"") -> CallContext:
    """The context the inner chat adapter sees: an OpenAI chat body that always asks for usage."""
    head = RequestHead(model=ctx.upstream_model, stream=ctx.head.stream, max_tokens=ctx.head.output_limit,
                       stream_options=StreamOptions(include_usage=True))
    return CallContext(ClientAPI.CHAT, body, head, ctx.upstream_model, ctx.provider, ctx.now)
