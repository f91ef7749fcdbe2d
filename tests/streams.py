"""Helpers for stream-translation tests: feed wire bytes split anywhere, read what the client got."""
from __future__ import annotations

import json
from typing import Any


def client_view(translator: Any, data: bytes, cuts: list[int]) -> tuple[list[dict], Any]:
    """Feed `data` to `translator` split at `cuts`; return the client's decoded chunks and usage.

    The OpenAI stream the client sees must end with `data: [DONE]`."""
    out, last = b"", 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += translator.feed(data[last:cut])
        last = cut
    out += translator.flush()
    events = [e.removeprefix(b"data: ") for e in out.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    return [json.loads(e) for e in events[:-1]], translator.usage


def summarize(chunks: list[dict]) -> dict[str, Any]:
    """What a client assembles from chat chunks: text, tool calls by index, finish reasons, usage."""
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
            call = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.get("id") or ""
            call["name"] += tc.get("function", {}).get("name") or ""
            call["arguments"] += tc.get("function", {}).get("arguments") or ""
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    return {"text": text, "calls": calls, "finishes": finishes, "usage": usage}
