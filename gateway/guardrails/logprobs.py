"""Token logprobs taken out of an answer an output guardrail masks or blocks.

Logprobs repeat the answer's text token by token (`token`, `bytes`, `top_logprobs`), split
where the model's tokenizer split it: a card number is four or five tokens, each harmless to a
detector alone, and a stream sends each token's logprobs with it, before a finding it starts is
complete. They cannot be masked to match the masked text, so on such a route they are not sent
(docs/guardrails.md): chat and completions choices get `logprobs: null`, the Responses API's
text events and output parts an empty list (the shapes the SDKs read when none were asked for).
"""
from __future__ import annotations

from typing import Any


def strip(obj: Any) -> bool:
    """Take the logprobs out of one answer or stream event (any API), in place; True if any."""
    if not isinstance(obj, dict):
        return False
    changed = False
    for choice in _dicts(obj.get("choices")):  # chat, completions
        if choice.get("logprobs") is not None:
            choice["logprobs"], changed = None, True
    changed |= _empty(obj)  # a Responses text delta/done event
    changed |= _empty(obj.get("part"))  # content_part.added/done
    for item in (obj.get("item"), *_dicts(obj.get("output"))):  # output_item events, a Responses answer
        changed |= _item(item)
    response = obj.get("response")
    if isinstance(response, dict):  # response.created/completed/...
        for item in _dicts(response.get("output")):
            changed |= _item(item)
    return changed


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _item(item: Any) -> bool:
    changed = False
    if isinstance(item, dict):
        for part in _dicts(item.get("content")):
            changed |= _empty(part)
    return changed


def _empty(holder: Any) -> bool:
    if isinstance(holder, dict) and holder.get("logprobs"):
        holder["logprobs"] = []
        return True
    return False
