"""Responses API request -> OpenAI chat request, which the provider's chat translator carries.

The Responses `input` is a flat list of items where chat has role-tagged messages: message
items become messages (`instructions` the first system message), consecutive `function_call`
items join the assistant message before them as its `tool_calls`, and each
`function_call_output` becomes a `tool` message. Reasoning items are the model's own earlier
thoughts, which no translated provider takes back: they are dropped, as the Anthropic-over-chat
translation drops thinking blocks. A message's text parts become one string with a newline
between them (`wire.openai.join_texts`), as on the Anthropic surface: they are separate pieces of text.

The gateway keeps no state for translated providers, so everything that refers to a stored
response, conversation or prompt is refused with a 400 naming the field, as is any hosted tool
(web search, file search, ...) that only OpenAI runs.
"""
from __future__ import annotations

from tollway.core.errors import bad_request, echoed, responses_state_unsupported
from tollway.core.providers.chat.anthropic import tool_arguments
from tollway.core.providers.responses import wire
from tollway.core.providers.wire import openai as oa
from tollway.core.request import StreamOptions

TOOL_CHOICES = ("auto", "none", "required")
# Input message roles and the chat role each becomes.
ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_STATEFUL = ("previous_response_id", "conversation", "prompt")
_TEXT_PARTS = ("input_text", "output_text", "text")


def to_chat_request(req: wire.ResponsesRequest, model: str, provider: str,
                    json_mode: bool) -> tuple[oa.ChatRequest, list[str]]:
    """The chat request for a Responses request to `provider`, and for each of its messages the
    Responses field it was made from (`instructions`, `input`, `input[3]`): a chat translator's
    400 names a message, which the client must see named as it sent it. Raises
    GatewayError(400) naming the Responses field the provider cannot honour."""
    _refuse_unsupported(req, provider, json_mode)
    messages = [oa.ChatMessage("system", req.instructions)] if req.instructions else []
    sources = ["instructions"] * len(messages)
    if isinstance(req.input, str):
        messages.append(oa.ChatMessage("user", req.input))
        sources.append("input")
    else:
        for i, item in enumerate(req.input or []):
            _add_item(messages, item, i)
            sources += [f"input[{i}]"] * (len(messages) - len(sources))  # (a call may join the turn before it)
    return _chat_request(req, model, messages), sources


def _chat_request(req: wire.ResponsesRequest, model: str, messages: list[oa.ChatMessage]) -> oa.ChatRequest:
    stream = bool(req.stream)
    return oa.ChatRequest(
        messages=messages, model=model, max_tokens=req.max_output_tokens, temperature=req.temperature,
        top_p=req.top_p, stream=stream or None, stream_options=StreamOptions(include_usage=True) if stream else None,
        tools=_tools(req.tools), tool_choice=_tool_choice(req), parallel_tool_calls=req.parallel_tool_calls,
        response_format=_response_format(req.text), user=req.safety_identifier or req.user,
        reasoning_effort=req.reasoning.effort if req.reasoning else None,
    )


def _refuse_unsupported(req: wire.ResponsesRequest, provider: str, json_mode: bool) -> None:
    for field in _STATEFUL:
        if getattr(req, field) is not None:
            raise responses_state_unsupported(field, provider)
    if req.background:
        raise oa.unsupported("background", provider, "The gateway keeps no responses to poll; omit it.")
    if req.top_logprobs:
        raise oa.unsupported("top_logprobs", provider)
    if req.reasoning is not None:
        oa.reasoning_budget(req.reasoning.effort, param="reasoning.effort")  # named as the client wrote it
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type != "text" and not json_mode:
        raise oa.unsupported("text.format", provider)


def _add_item(messages: list[oa.ChatMessage], item: wire.InputItem, i: int) -> None:
    kind = item.type or "message"
    if kind == "message":
        messages.append(_message(item, i))
    elif kind == "function_call":
        _add_call(messages, item, i)
    elif kind == "function_call_output":
        if not item.call_id:
            raise bad_request(f"input[{i}] is a function_call_output without a call_id.", param=f"input[{i}].call_id")
        messages.append(oa.ChatMessage("tool", _output_text(item.output, i), tool_call_id=item.call_id))
    elif kind == "item_reference":
        raise responses_state_unsupported(f"input[{i}]", "this gateway's translated providers")
    elif kind != "reasoning":
        raise bad_request(f"Input item type '{echoed(kind)}' is not supported for this model's provider.",
                          param=f"input[{i}].type")


def _message(item: wire.InputItem, i: int) -> oa.ChatMessage:
    role = ROLES.get(item.role or "")
    if role is None:
        raise bad_request(f"Unknown role '{echoed(item.role or '')}' in input[{i}].", param=f"input[{i}].role")
    if item.content is None or isinstance(item.content, str):
        return oa.ChatMessage(role, item.content or "")
    parts = [_part(p, f"input[{i}].content[{j}]") for j, p in enumerate(item.content)]
    if role != "user" or all(p.type == "text" for p in parts):  # only a user turn may carry images
        if any(p.type != "text" for p in parts):
            raise bad_request(f"Only user messages may carry images (input[{i}]).", param=f"input[{i}].content")
        return oa.ChatMessage(role, oa.join_texts(p.text for p in parts))
    return oa.ChatMessage(role, parts)


def _part(p: wire.InputContent, where: str) -> oa.ContentPart:
    if p.type in _TEXT_PARTS:
        return oa.ContentPart("text", text=p.text or "")
    if p.type == "refusal":
        return oa.ContentPart("text", text=p.refusal or "")
    if p.type == "input_image" and p.image_url:
        return oa.ContentPart("image_url", image_url=oa.ImageURL(p.image_url, p.detail))
    if p.type == "input_image":
        raise bad_request("Images by file_id need OpenAI's file store; send an image_url (a data URL or a link).",
                          param=where)
    raise bad_request(f"Content part type '{echoed(p.type)}' is not supported for this model's provider.", param=f"{where}.type")


def _add_call(messages: list[oa.ChatMessage], item: wire.InputItem, i: int) -> None:
    """A function_call joins the assistant turn right before it (text, or other calls of the
    same turn); otherwise it opens an assistant turn of its own."""
    if not item.call_id or not item.name:
        raise bad_request(f"input[{i}] is a function_call without a call_id or name.", param=f"input[{i}]")
    tool_arguments(item.arguments or "", f"input[{i}].arguments")  # named here, not as the chat field it becomes
    call = oa.ToolCall(item.call_id, oa.FunctionCall(item.name, item.arguments or ""))
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        last.tool_calls = [*(last.tool_calls or []), call]
    else:
        messages.append(oa.ChatMessage("assistant", None, tool_calls=[call]))


def _output_text(output: str | list[wire.InputContent] | None, i: int) -> str:
    """A function call's output as the text a chat tool message carries. Raises GatewayError(400)
    for a part that is not text (an image or file result), rather than dropping it unseen."""
    if output is None or isinstance(output, str):
        return output or ""
    for j, p in enumerate(output):
        if p.type not in _TEXT_PARTS:
            raise bad_request(f"A function_call_output part of type '{echoed(p.type)}' is not supported for this model's "
                              "provider; send the output as text.", param=f"input[{i}].output[{j}].type")
    return oa.join_texts(p.text for p in output)


def _tools(tools: list[wire.FunctionTool] | None) -> list[oa.Tool] | None:
    if not tools:
        return None
    out = []
    for i, t in enumerate(tools):
        if t.type != "function" or not t.name:
            raise bad_request(f"Tool type '{echoed(t.type)}' runs only on OpenAI; this model's provider takes function tools.",
                              param=f"tools[{i}].type")
        out.append(oa.Tool(oa.FunctionDef(t.name, t.description, t.parameters)))
    return out


def _tool_choice(req: wire.ResponsesRequest) -> str | oa.NamedToolChoice | None:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        if choice is not None and choice not in TOOL_CHOICES:
            raise bad_request(f"Unknown tool_choice '{echoed(choice)}'.", param="tool_choice")
        return choice
    if choice.type != "function" or not choice.name:
        raise bad_request(f"tool_choice type '{echoed(choice.type)}' is not supported for this model's provider.",
                          param="tool_choice.type")
    return oa.NamedToolChoice(oa.ToolChoiceFunction(choice.name))


def _response_format(text: wire.TextConfig | None) -> oa.ResponseFormat | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    return oa.ResponseFormat(fmt.type, oa.JSONSchemaFormat(fmt.name, fmt.schema) if fmt.schema is not None else None)
