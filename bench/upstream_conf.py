"""nginx configs for the benchmark: a mock OpenAI upstream that never is the bottleneck, and
a plain `proxy_pass` hop, the yardstick a C reverse proxy sets for Tollway.

The mock answers POST /v1/chat/completions on two ports: a fixed `chat.completion` JSON, and a
fixed SSE stream (role chunk, 20 content chunks, finish chunk, usage chunk, `[DONE]`). nginx
caps one config token at about 4 KB, so each SSE event gets its own variable and `return`
concatenates them.
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL = "gpt-4o-mini"
_ID = "chatcmpl-bench0001"
_CREATED = 1767225600
_USAGE = {"prompt_tokens": 27, "completion_tokens": 20, "total_tokens": 47}
_WORDS = ("Latency budgets are spent in small coins, so a gateway must count every "
          "microsecond it adds between the caller and the model server").split()


def completion_json() -> str:
    """The fixed non-streaming answer."""
    text = " ".join(_WORDS)
    return _dumps({
        "id": _ID, "object": "chat.completion", "created": _CREATED, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _USAGE,
    })


def sse_events(words: list[str] = _WORDS) -> list[str]:
    """The fixed stream, one `data: ...\\n\\n` event per item, as OpenAI sends it."""
    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": _ID, "object": "chat.completion.chunk", "created": _CREATED,
                "model": MODEL, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {_dumps(body)}\n\n"

    def delta(content: dict, finish: str | None = None) -> list[dict]:
        return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]

    events = [chunk(delta({"role": "assistant", "content": ""}))]
    events += [chunk(delta({"content": w if i == 0 else " " + w})) for i, w in enumerate(words)]
    events.append(chunk(delta({}, "stop")))
    events.append(chunk([], _USAGE))
    events.append("data: [DONE]\n\n")
    return events


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _quote(text: str) -> str:
    """An nginx single-quoted string; '$' would start a variable, so it must not occur."""
    if "$" in text:
        raise ValueError("nginx literal must not contain '$'")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _http_block(workdir: Path, name: str, servers: str) -> str:
    return f"""worker_processes 1;
error_log {workdir}/{name}.error.log warn;
pid {workdir}/{name}.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
{servers}
}}
"""


def mock_conf(workdir: Path, json_port: int, sse_port: int) -> str:
    """The mock upstream: JSON completions on json_port, the SSE stream on sse_port."""
    events = sse_events()
    sets = "\n".join(f"            set $e{i} {_quote(e)};" for i, e in enumerate(events))
    joined = "".join(f"${{e{i}}}" for i in range(len(events)))
    servers = f"""
    server {{
        listen 127.0.0.1:{json_port} backlog=4096;
        default_type application/json;
        location = /v1/chat/completions {{ return 200 {_quote(completion_json())}; }}
        location / {{ return 404 '{{"error":{{"message":"not found"}}}}'; }}
    }}
    server {{
        listen 127.0.0.1:{sse_port} backlog=4096;
        default_type text/event-stream;
        location = /v1/chat/completions {{
{sets}
            return 200 "{joined}";
        }}
        location / {{ return 404 '{{"error":{{"message":"not found"}}}}'; }}
    }}"""
    return _http_block(workdir, "mock", servers)


def hop_conf(workdir: Path, routes: list[tuple[int, int]]) -> str:
    """A plain nginx reverse proxy: each (listen_port, upstream_port), keep-alive upstreams,
    no buffering so streams pass through as they arrive."""
    servers = []
    for listen, upstream in routes:
        servers.append(f"""
    upstream up{upstream} {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://up{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}""")
    return _http_block(workdir, "hop", "".join(servers))


def write_confs(workdir: Path, json_port: int, sse_port: int, hop_json: int, hop_sse: int) -> tuple[Path, Path]:
    """Write mock.conf and hop.conf into workdir; returns their paths."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    mock = workdir / "mock.conf"
    hop = workdir / "hop.conf"
    mock.write_text(mock_conf(workdir, json_port, sse_port))
    hop.write_text(hop_conf(workdir, [(hop_json, json_port), (hop_sse, sse_port)]))
    return mock, hop
