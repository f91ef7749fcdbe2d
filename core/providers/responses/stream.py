"""OpenAI chat chunks -> Responses API stream events.

Theory of operation: a translated provider's stream is first turned into OpenAI
`chat.completion.chunk` events by its chat translator, then into the events OpenAI's own
Responses stream sends, in OpenAI's order:

    response.created, response.in_progress,
    per output item: response.output_item.added,
      a message:   response.content_part.added, response.output_text.delta*,
                   response.output_text.done, response.content_part.done
      reasoning:   response.reasoning_summary_part.added, response.reasoning_summary_text.delta*,
                   response.reasoning_summary_text.done, response.reasoning_summary_part.done
      a function call: response.function_call_arguments.delta*, response.function_call_arguments.done
    response.output_item.done,
    response.completed (or response.incomplete), with the whole response and its usage.

Chat deltas carry no item boundaries, so one item is open at a time and a delta of another
kind (or a new tool call id) closes it and opens the next. Every event carries the stream's
`sequence_number`, counted from 0. The closing event waits for `[DONE]` (or the end of the
stream), because usage arrives in the chunk after the one carrying `finish_reason`; usage is
read from the provider's translator itself, which knows cache writes the chat chunk cannot say.
A failure after the first event ends the stream with `error` and `response.failed`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway.core.errors import GatewayError, upstream_failed_mid_stream, upstream_no_answer
from tollway.core.providers.base import SSEStreamTranslator, StreamTranslator
from tollway.core.providers.chained import ChainedStream
from tollway.core.providers.responses import wire
from tollway.core.providers.responses.output import ResponseFrame, ResponseIds
from tollway.core.providers.wire import openai as oa
from tollway.ext.usage import Usage

_encode = wire.encode


class ChatStreamToResponses(SSEStreamTranslator[oa.ChatChunk]):
    """OpenAI `chat.completion.chunk` SSE in, Responses API SSE events out. It keeps no text
    or usage of its own: `responses_over_chat` chains it after the provider translator, whose
    usage it reports."""

    def __init__(self, req: wire.ResponsesRequest, model: str, now: float, usage: Callable[[], Usage | None]) -> None:
        super().__init__(oa.decode_chunk)
        self._req, self._model, self._now, self._usage = req, model, now, usage
        self._frame: ResponseFrame | None = None
        self._seq = 0
        self._output: list[wire.OutputItem] = []
        self._kind = ""  # the open item: "" (none), "reasoning", "message", "function_call"
        self._item_id = ""  # the open item's id
        self._delta_head = b""  # the open item's delta event up to its `delta` value (the hot path)
        self._delta_tail = b""  # ... and from after the value up to its sequence number
        self._parts: list[str] = []  # the open item's text or arguments so far
        self._call: tuple[str, str] = ("", "")  # the open function call's (call_id, name)
        self._reason: str | None = None
        self._closed = False

    # -- SSEStreamTranslator -----------------------------------------------------------------

    def _complete(self) -> bool:
        return self._frame is not None  # [DONE] is optional: the end of the stream closes an answer that began

    def _early_end(self) -> GatewayError:
        return upstream_no_answer()

    def _undecodable(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            return self._close()
        return super()._undecodable(data)

    def _on(self, chunk: oa.ChatChunk) -> bytes:
        if chunk.error is not None:
            raise upstream_failed_mid_stream(chunk.error if isinstance(chunk.error, str) else chunk.error.message)
        out = b"" if self._frame is not None else self._start(chunk)
        for choice in chunk.choices[:1]:
            out += self._delta(choice.delta) if choice.delta else b""
            self._reason = choice.finish_reason or self._reason
        return out

    def _close(self) -> bytes:
        if self._closed or self._frame is None:
            return b""
        self._closed = True
        out = self._end_item()
        snapshot = self._frame.response("completed", self._output, self._usage(), self._reason)
        kind = "response.completed" if snapshot.status == "completed" else "response.incomplete"
        return out + self._event(kind, response=snapshot)

    def error_event(self, err: GatewayError) -> bytes:
        """A failure mid-stream as OpenAI ends a failed Responses stream: `error`, then
        `response.failed` with what was produced so far. Also after this translator wrote its
        closing event: a per-chunk hook (an output guardrail's block) that ends the stream drops
        the chunk it raised on, closing event included, so the client never saw it."""
        out = self._event("error", code=err.code or err.type, message=err.message, param=err.param)
        if self._frame is not None:
            self._closed = True
            code = err.code or ("rate_limit_exceeded" if err.status == 429 else "server_error")
            snapshot = self._frame.response("failed", self._output, self._usage(), None,
                                            wire.ResponseError(code, err.message))
            out += self._event("response.failed", response=snapshot)
        return out

    # -- events ----------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        seq, self._seq = self._seq, self._seq + 1
        data = _encode({"type": kind, **fields, "sequence_number": seq})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def _start(self, chunk: oa.ChatChunk) -> bytes:
        ids = ResponseIds(chunk.id or self._model, self._now)
        self._frame = frame = ResponseFrame(self._req, ids, chunk.model or self._model, self._now)
        snapshot = frame.response("in_progress", [], None)
        return self._event("response.created", response=snapshot) + self._event("response.in_progress", response=snapshot)

    def _delta(self, d: oa.ChoiceDelta) -> bytes:
        out = b""
        reasoning = d.reasoning_text  # (`reasoning_content`, or vLLM's newer `reasoning`)
        if reasoning:
            out += self._open("reasoning") + self._delta_event(reasoning)
        if d.content:
            out += self._open("message") + self._delta_event(d.content)
        for call in d.tool_calls or []:
            fn = call.function or oa.FunctionDelta()
            if call.id:
                # A new call. The open item (maybe the previous call) closes first, while
                # `_call` still names it; then the new call is set and its item opened.
                out += self._end_item()
                self._call = (call.id, fn.name or "")
                out += self._open("function_call")
            if fn.arguments and self._kind == "function_call":
                out += self._delta_event(fn.arguments)
        return out

    @property
    def _index(self) -> int:
        return len(self._output)  # the open item's output_index: every item before it is done

    def _open(self, kind: str) -> bytes:
        if self._kind == kind:
            return b""
        out = self._end_item()
        ids, index = self._require_frame().ids, self._index
        self._kind, self._parts = kind, []
        self._item_id = item_id = _ITEM_IDS[kind](ids, index)
        delta_type, extra = _DELTAS[kind]
        fields = _encode({"type": delta_type, "item_id": item_id, "output_index": index, **extra})
        self._delta_head = b"event: " + delta_type.encode() + b"\ndata: " + fields[:-1] + b',"delta":'
        self._delta_tail = b',"logprobs":[],"sequence_number":' if kind == "message" else b',"sequence_number":'
        out += self._event("response.output_item.added", output_index=index, item=self._item("in_progress"))
        if kind == "message":
            out += self._event("response.content_part.added", item_id=item_id, output_index=index,
                               content_index=0, part=wire.OutputText(""))
        elif kind == "reasoning":
            out += self._event("response.reasoning_summary_part.added", item_id=item_id,
                               output_index=index, summary_index=0, part=wire.SummaryText(""))
        return out

    def _delta_event(self, text: str) -> bytes:
        """The open item's next delta event. Written from the bytes `_open` prepared: deltas are
        most of a stream's events, and only their text and sequence number change."""
        self._parts.append(text)
        seq, self._seq = self._seq, self._seq + 1
        return self._delta_head + _encode(text) + self._delta_tail + str(seq).encode() + b"}\n\n"

    def _item(self, status: str) -> wire.OutputItem:
        text, item_id = "".join(self._parts), self._item_id
        if self._kind == "message":
            return wire.MessageItem(id=item_id, status=status, content=[wire.OutputText(text)] if status == "completed" else [])
        if self._kind == "reasoning":
            return wire.ReasoningItem(id=item_id, summary=[wire.SummaryText(text)] if status == "completed" else [])
        call_id, name = self._call
        return wire.FunctionCallItem(id=item_id, status=status, call_id=call_id, name=name, arguments=text)

    def _end_item(self) -> bytes:
        if not self._kind:
            return b""
        item_id, index, text = self._item_id, self._index, "".join(self._parts)
        if self._kind == "message":
            out = self._event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                              text=text, logprobs=[])
            out += self._event("response.content_part.done", item_id=item_id, output_index=index, content_index=0,
                               part=wire.OutputText(text))
        elif self._kind == "reasoning":
            out = self._event("response.reasoning_summary_text.done", item_id=item_id, output_index=index,
                              summary_index=0, text=text)
            out += self._event("response.reasoning_summary_part.done", item_id=item_id, output_index=index,
                               summary_index=0, part=wire.SummaryText(text))
        else:
            out = self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                              name=self._call[1], arguments=text)
        item = self._item("completed")
        out += self._event("response.output_item.done", output_index=index, item=item)
        self._output.append(item)
        self._kind, self._parts = "", []
        return out

    def _require_frame(self) -> ResponseFrame:
        assert self._frame is not None  # _on starts the frame before any delta
        return self._frame


# Per kind of output item: its id, and its delta event's type and fields besides the delta.
_ITEM_IDS: dict[str, Callable[[ResponseIds, int], str]] = {
    "message": ResponseIds.message, "reasoning": ResponseIds.reasoning, "function_call": ResponseIds.function_call}
_DELTAS: dict[str, tuple[str, dict[str, int]]] = {
    "message": ("response.output_text.delta", {"content_index": 0}),
    "reasoning": ("response.reasoning_summary_text.delta", {"summary_index": 0}),
    "function_call": ("response.function_call_arguments.delta", {}),
}


def responses_over_chat(inner: StreamTranslator, req: wire.ResponsesRequest, model: str, now: float) -> ChainedStream:
    """The provider's stream translator (provider events -> chat chunks), then `ChatStreamToResponses`."""
    return ChainedStream(inner, ChatStreamToResponses(req, model, now, lambda: inner.usage))
