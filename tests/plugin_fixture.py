"""A plugin whose stages do what its config says, for tests/test_plugins_e2e.py.

config: {<stage>: <action>} for on_request, on_chunk, on_response, on_complete; only the
stages named are defined (the gateway calls only those). Actions: allow, reject, replace,
stop (on_chunk), sleep (longer than any test timeout), raise, bad (a wrong result type),
cancelled (raises CancelledError while its task is not being cancelled: a plugin's bug), deaf
(swallows the CancelledError of its timeout and keeps awaiting, 5 s in all), exit (raises
SystemExit), interrupt (raises KeyboardInterrupt),
bad_reject (a Reject whose status is not an int), bad_replace (a Replace that cannot be encoded),
replace_model (on_request: the body as it came, naming the model gpt-4o), surrogate (text that
cannot be encoded as UTF-8, a lone surrogate: on_chunk's Replace, or a Reject's message),
surrogate_stop (on_chunk: a Stop whose message is such text).
"""
from __future__ import annotations

import asyncio
from typing import Any

from tollway.gateway.plugins.api import ALLOW, PASS, AuthContext, KeyRecord, Reject, Replace, RequestContext, Stop


async def _common(action: str) -> None:
    if action == "sleep":
        await asyncio.sleep(5)
    if action == "raise":
        raise RuntimeError("SECRET-TRACEBACK-DETAIL from the test plugin")
    if action == "cancelled":  # awaiting a future some other code cancelled
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
    if action == "deaf":
        for _ in range(50):
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass
    if action == "exit":
        raise SystemExit(3)
    if action == "interrupt":
        raise KeyboardInterrupt


def scripted(config: dict[str, Any]) -> object:
    namespace: dict[str, Any] = {}
    if "on_request" in config:
        action = config["on_request"]

        async def on_request(self: Any, ctx: RequestContext) -> object:
            await _common(action)
            if action == "reject":
                return Reject(451, f"not for {ctx.key.name} on {ctx.route}")
            if action == "replace":
                body = dict(ctx.body)
                body["messages"] = [{"role": "user", "content": "REPLACED BY PLUGIN"}]
                return Replace(body)
            if action == "surrogate":
                return Reject(403, "lone \ud800 surrogate")
            if action == "replace_model":
                return Replace({**ctx.body, "model": "gpt-4o"})
            if action == "bad":
                return 42
            if action == "bad_reject":
                return Reject("403", "a status that is not an int")  # type: ignore[arg-type]
            if action == "bad_replace":
                return Replace({**ctx.body, "extra": object()})
            return ALLOW
        namespace["on_request"] = on_request
    if "on_chunk" in config:
        chunk_action = config["on_chunk"]

        async def on_chunk(self: Any, ctx: RequestContext, delta: str) -> object:
            await _common(chunk_action)
            if chunk_action == "replace":
                return Replace(delta.upper())
            if chunk_action == "stop":
                return Stop("the plugin saw enough")
            if chunk_action == "surrogate":
                return Replace(delta + "\ud800")
            if chunk_action == "surrogate_stop":
                return Stop("lone \ud800 surrogate")
            return PASS
        namespace["on_chunk"] = on_chunk
    if "on_response" in config:
        response_action = config["on_response"]

        async def on_response(self: Any, ctx: RequestContext, body: dict[str, Any]) -> object:
            await _common(response_action)
            if response_action == "replace":
                body = dict(body)
                body["choices"] = [{**c, "message": {**c["message"], "content": "censored"}} for c in body["choices"]]
                return Replace(body)
            if response_action == "reject":
                return Reject(502, "the answer broke policy")
            if response_action == "bad_reject":
                return Reject(None, "no status")  # type: ignore[arg-type]
            if response_action == "bad_replace":
                return Replace({**body, "extra": object()})
            return PASS
        namespace["on_response"] = on_response
    return type("Scripted", (), namespace)()


def nothing(config: dict[str, Any]) -> object:
    """A factory whose object defines no stage: refused at load."""
    return object()


def broken(config: dict[str, Any]) -> object:
    raise ValueError("the broken plugin's factory always fails")


def counted(config: dict[str, Any]) -> object:
    """Notes each run of its factory in `config["runs"]` (a file), and fails while the file
    `config["fail_while"]` exists (a factory reading a policy file or a JWKS can fail for a while)."""
    import os
    with open(config["runs"], "a") as runs:
        runs.write("run\n")
    if os.path.exists(config["fail_while"]):
        raise RuntimeError("the plugin's policy file is unavailable")
    return Counted()


class Counted:
    async def on_request(self, ctx: RequestContext) -> object:
        return ALLOW


def offered(config: dict[str, Any]) -> object:
    """authenticate: notes every credential it is offered in `config["seen"]` (a file) and maps
    none of them: what the gateway hands a plugin is what the test reads."""
    return Offered(config["seen"])


class Offered:
    def __init__(self, seen: str) -> None:
        self.seen = seen

    async def authenticate(self, ctx: AuthContext) -> KeyRecord | None:
        with open(self.seen, "a") as seen:
            seen.write(ctx.headers.get("authorization", "") + "\n")
        return None
