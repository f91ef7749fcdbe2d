"""The OpenAI endpoints: chat completions, completions, embeddings, responses, and the model list.

They are the gateway's native surface: the `openai` SDK (base_url = the gateway + "/v1") works
unchanged, errors are OpenAI-shaped, and the key is a bearer token.
"""
from __future__ import annotations

from functools import partial

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core.providers.base import ClientAPI
from tollway.gateway.admission import authenticate, forward
from tollway.gateway.exchange import Exchange
from tollway.gateway.serving import Serving
from tollway.gateway.surfaces import OPENAI, Endpoint

_JSON = ("content-type", "application/json")
_encode = msgspec.json.Encoder().encode
PROXIED = {
    "/v1/chat/completions": ClientAPI.CHAT,
    "/v1/completions": ClientAPI.COMPLETIONS,
    "/v1/embeddings": ClientAPI.EMBEDDINGS,
    "/v1/responses": ClientAPI.RESPONSES,
}


class OpenAIAPI:
    """Handlers for the OpenAI paths; `routes()` is merged into the app's route table."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def routes(self) -> dict[tuple[str, str], Endpoint]:
        table = {("POST", path): Endpoint(api, partial(forward, self.serving, OPENAI, api))
                 for path, api in PROXIED.items()}
        table["GET", "/v1/models"] = Endpoint("models", self.list_models)
        return table

    async def list_models(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        """The configured models this key may use, as `GET /v1/models` lists them."""
        rt = self.serving.runtime
        key = authenticate(rt, OPENAI, scope)
        ex.key_name = key.key.name
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tollway"}
                for name in rt.routes.names() if key.may_use(name)]
        ex.status = 200
        proto.response_bytes(200, [_JSON, ("x-request-id", ex.request_id)], _encode({"object": "list", "data": data}))
