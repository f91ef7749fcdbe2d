"""The OpenAI endpoints: chat completions, completions, embeddings, responses, moderations,
images, audio, rerank, and the models (list and retrieve).

They are the gateway's native surface: the `openai` SDK (base_url = the gateway + "/v1") works
unchanged, errors are OpenAI-shaped, and the key is a bearer token.
"""
from __future__ import annotations

from functools import partial
from urllib.parse import unquote

import msgspec
from granian.rsgi import HTTPProtocol, Scope

from tollway.core import errors
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
    "/v1/moderations": ClientAPI.MODERATIONS,
    "/v1/images/generations": ClientAPI.IMAGES,
    "/v1/audio/speech": ClientAPI.SPEECH,
    "/v1/rerank": ClientAPI.RERANK,
}
UPLOADS = {  # multipart bodies (tollway.core.forms)
    "/v1/images/edits": ClientAPI.IMAGE_EDITS,
    "/v1/audio/transcriptions": ClientAPI.TRANSCRIPTIONS,
    "/v1/audio/translations": ClientAPI.TRANSLATIONS,
}
_MODEL_PREFIX = "/v1/models/"


class OpenAIAPI:
    """Handlers for the OpenAI paths; `routes()` is merged into the app's route table."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def routes(self) -> dict[tuple[str, str], Endpoint]:
        table = {("POST", path): Endpoint(api, partial(forward, self.serving, OPENAI, api))
                 for path, api in PROXIED.items()}
        table.update({("POST", path): Endpoint(api, partial(forward, self.serving, OPENAI, api, form=True))
                      for path, api in UPLOADS.items()})
        table["GET", "/v1/models"] = Endpoint("models", self.list_models)
        return table

    def match(self, method: str, path: str) -> Endpoint | None:
        """The endpoint of an OpenAI path with an id in it (`GET /v1/models/{id}`), or None."""
        if method == "GET" and path.startswith(_MODEL_PREFIX) and len(path) > len(_MODEL_PREFIX):
            return Endpoint("models", self.retrieve_model)
        return None

    async def list_models(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        """The configured models this key may use, as `GET /v1/models` lists them."""
        rt = self.serving.runtime
        key = authenticate(rt, OPENAI, scope)
        ex.key_name = key.key.name
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tollway"}
                for name in rt.routes.names() if key.may_use(name)]
        ex.status = 200
        proto.response_bytes(200, [_JSON, ("x-request-id", ex.request_id)], _encode({"object": "list", "data": data}))

    async def retrieve_model(self, scope: Scope, proto: HTTPProtocol, ex: Exchange) -> None:
        """One model, as `GET /v1/models/{id}` (the SDK's `models.retrieve`) shows it. A model
        this key may not use is as absent as one the gateway does not serve: 404 model_not_found,
        so a key cannot probe what other keys may use."""
        rt = self.serving.runtime
        key = authenticate(rt, OPENAI, scope)
        ex.key_name = key.key.name
        name = unquote(scope.path[len(_MODEL_PREFIX):])  # the SDK sends an id with "/" as %2F
        route = rt.routes.resolve(name)
        name = rt.secrets.mask(name)  # echoed: a held credential pasted as the id never comes back
        if route is None or not key.may_use(route.name):
            raise errors.model_not_found(name)
        ex.status = 200
        body = _encode({"id": name, "object": "model", "created": 0, "owned_by": "tollway"})
        proto.response_bytes(200, [_JSON, ("x-request-id", ex.request_id)], body)
