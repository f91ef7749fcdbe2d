"""OpenAI client API -> Azure OpenAI (deployment URLs, `api-key` header, `api-version`).

The wire format is OpenAI's, so everything but the URL and the credential is inherited.
The target's upstream model name is the Azure *deployment* name.
"""
from __future__ import annotations

from urllib.parse import quote

from tollway.core.config import Provider
from tollway.core.providers.base import CallContext, ClientAPI
from tollway.core.providers.openai_compat import PATHS, OpenAIAdapter


class AzureOpenAIAdapter(OpenAIAdapter):
    def url(self, ctx: CallContext) -> str:
        base = (ctx.provider.base_url or "").rstrip("/")
        version = quote(ctx.provider.api_version or "", safe="")
        if ctx.api == ClientAPI.RESPONSES:
            return f"{base}/openai{PATHS[ctx.api]}?api-version={version}"
        deployment = quote(ctx.upstream_model, safe="")
        return f"{base}/openai/deployments/{deployment}{PATHS[ctx.api]}?api-version={version}"

    def headers(self, provider: Provider) -> list[tuple[str, str]]:
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if provider.api_key:
            headers.append(("api-key", provider.api_key))
        headers.extend((provider.headers or {}).items())
        return headers
