"""Provider credentials that need I/O or the clock: AWS SigV4 and Google OAuth tokens.

Static API keys are plain headers the adapters set; the schemas here sign each call after
the adapter built it. `credential_for(provider)` picks the credential from a table keyed by
schema (None when the adapter's header suffices). botocore and google-auth are imported only
when a config uses their schema, and every blocking step (reading the AWS credential chain,
instance-metadata and STS calls, Google's token endpoint) runs in a worker thread so the
event loop never waits on it.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tollway.core.config import Provider
from tollway.core.errors import upstream_auth_failed, upstream_no_credentials
from tollway.core.providers.base import UpstreamCall
from tollway.core.security.secrets import KnownSecrets

log = logging.getLogger("tollway")
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Refresh a Google token this long before it expires, so no request carries a token that
# expires on its way (google-auth's own margin is 3m45s; a slow upstream call can outlast it).
TOKEN_MARGIN = datetime.timedelta(minutes=5)
# After the token endpoint failed, requests fail fast this long rather than each calling it
# again (behind one lock: a queue of slow failures) while it refuses.
TOKEN_BACKOFF_SECONDS = 5.0


def _with_header(call: UpstreamCall, name: str, value: str) -> UpstreamCall:
    headers = [(k, v) for k, v in call.headers if k.lower() != name] + [(name, value)]
    return UpstreamCall(call.method, call.url, headers, call.body, call.stream)


class SigV4Credential:
    """Signs Bedrock calls with SigV4 (service `bedrock`) using botocore's signer.

    Keys come from the provider's `credentials` (access_key_id, secret_access_key,
    session_token) or, when it names none, from the AWS default chain (environment, shared
    config and `profile`, web identity/IRSA, container and instance roles), resolved on the
    first call and refreshed by botocore when temporary keys near their expiry.
    """

    service = "bedrock"

    def __init__(self, provider: Provider, secrets: KnownSecrets) -> None:
        self._provider = provider
        self._secrets = secrets
        self._source: Any = None
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Future[Any] | None = None  # the one refresh in flight, shared
        self._incident: str | None = None  # the failure already logged ("stale", "failing"), until keys come

    async def sign(self, call: UpstreamCall) -> UpstreamCall:
        from botocore.auth import SigV4Auth  # noqa: PLC0415
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        keys = await self._frozen_keys()
        self._secrets.add(keys.access_key, keys.secret_key, keys.token)  # fetched keys rotate: learn each
        request = AWSRequest(method=call.method, url=call.url, data=call.body, headers=dict(call.headers))
        SigV4Auth(keys, self.service, self._provider.region or "us-east-1").add_auth(request)
        return UpstreamCall(call.method, call.url, list(request.headers.items()), call.body, call.stream)

    async def _frozen_keys(self) -> Any:
        """The keys to sign with. Raises GatewayError(502) naming the provider when the chain
        has none or fails (a missing profile, a credential_process that exits non-zero, STS
        refusing a refresh): the provider's failure, so a route falls back and the health
        tracker counts it, never a 500. Nothing is remembered of a failed resolution (the
        source stays unset), so the next call reads the chain afresh."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            keys = await self._chain_keys()
        except (BotoCoreError, ClientError) as exc:
            # botocore's message can hold a credential process's stderr: the client gets the
            # catalogue's message, the operator the exception's class, once per incident.
            self._report("failing", "AWS credentials for provider %s could not be had (%s); its requests fail "
                         "with 502 until they can", type(exc).__name__)
            raise upstream_no_credentials(self._provider.name, "AWS credentials") from None
        if self._incident != "stale":
            self._incident = None
        return keys

    def rejected(self, call: UpstreamCall) -> None:
        """Nothing to drop: botocore refreshes keys by their expiry, and a 401 from Bedrock is
        a key's permissions, which new keys from the same chain would not change."""

    def _report(self, incident: str, message: str, *args: str) -> None:
        """Log a credential failure once per incident: botocore's own lines are dropped
        (telemetry/logs.py), so this is the operator's only word of it."""
        if self._incident != incident:
            log.warning(message, self._provider.name, *args)
        self._incident = incident

    async def _chain_keys(self) -> Any:
        if self._source is None:
            async with self._lock:
                if self._source is None:
                    self._source = await asyncio.to_thread(self._resolve)
        source = self._source
        refresh_needed = getattr(source, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            return await self._refreshed(source)
        return source.get_frozen_credentials()

    async def _refreshed(self, source: Any) -> Any:
        """The keys once temporary ones near expiry, from one refresh shared by every request
        that needs it (botocore would otherwise run the credential process or STS call once per
        concurrent request). Within botocore's advisory window a failed refresh is swallowed
        (the current keys still sign): the keys still needing a refresh after it says so."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(source.get_frozen_credentials))  # STS/IMDS
            self._refreshing.add_done_callback(self._refreshed_done)
        return await asyncio.shield(self._refreshing)

    def _refreshed_done(self, refresh: asyncio.Future[Any]) -> None:
        self._refreshing = None
        if refresh.cancelled() or refresh.exception() is not None:
            return  # the mandatory window: the awaiting requests fail and report it
        if self._source.refresh_needed():
            self._report("stale", "AWS credentials for provider %s could not be refreshed; its requests are "
                         "signed with the current keys until they near expiry, then fail with 502")
        else:
            self._incident = None

    def _resolve(self) -> Any:
        import botocore.credentials  # noqa: PLC0415
        import botocore.session  # noqa: PLC0415

        named = self._provider.credentials or {}
        if named.get("access_key_id"):
            return botocore.credentials.Credentials(
                named["access_key_id"], named.get("secret_access_key", ""), named.get("session_token"))
        found = botocore.session.Session(profile=named.get("profile")).get_credentials()
        if found is None:
            raise upstream_no_credentials(self._provider.name, "AWS credentials")
        return found


class GoogleOAuthCredential:
    """Adds a Google OAuth access token (Vertex AI), cached until shortly before it expires.

    The token comes from the service-account file named by `credentials.service_account_file`
    or from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, workload
    identity, the metadata server).
    """

    def __init__(self, provider: Provider, secrets: KnownSecrets) -> None:
        self._provider = provider
        self._secrets = secrets
        self._google: Any = None
        self._lock = asyncio.Lock()
        self._margin = TOKEN_MARGIN  # how long before its expiry the current token is replaced
        self._retry_at = 0.0  # monotonic time before which a failed token fetch is not retried
        self._failing = False  # the last fetch failed: a failure already logged
        self._revoked: str | None = None  # the cached token the upstream refused (401): not reused

    async def sign(self, call: UpstreamCall) -> UpstreamCall:
        return _with_header(call, "authorization", "Bearer " + await self.token())

    async def token(self) -> str:
        """A token valid for at least its margin. Raises GatewayError(502) if none can be had."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._refresh()
        token: str = self._google.token
        # On every return: a refresh whose waiter was cancelled still installed its token.
        self._secrets.add(token)
        return token

    def rejected(self, call: UpstreamCall) -> None:
        """A token revoked before its expiry gets 401s: the next request fetches another
        (unless a newer token already replaced the one this call carried)."""
        sent = next((v for k, v in call.headers if k.lower() == "authorization"), "")
        if self._google is not None and sent == f"Bearer {self._google.token}":
            self._revoked = self._google.token

    def _fresh(self) -> bool:
        g = self._google
        if g is None or not g.token or g.token == self._revoked:
            return False
        if g.expiry is None:
            return True
        return g.expiry - _google_now() > self._margin

    async def _refresh(self) -> None:
        if time.monotonic() < self._retry_at:  # the endpoint just failed: fail fast, as it did
            raise upstream_auth_failed(self._provider.name)
        try:
            await asyncio.to_thread(self._fetch)
        except GoogleTokenError as exc:
            self._retry_at = time.monotonic() + TOKEN_BACKOFF_SECONDS
            if not self._failing:  # the class only: google-auth's message quotes the endpoint's answer
                log.warning("Google OAuth token for provider %s could not be had (%s); its requests fail with 502 "
                            "until one can", self._provider.name, exc.kind)
            self._failing = True
            raise upstream_auth_failed(self._provider.name) from None
        self._failing = False
        self._revoked = None  # a metadata server can hand the same token back: it is all there is
        self._margin = _margin_for(self._google.expiry)

    def _fetch(self) -> None:
        import google.auth.exceptions  # noqa: PLC0415
        import google.auth.transport.requests  # noqa: PLC0415

        try:
            if self._google is None:
                self._google = self._load()
            self._google.refresh(google.auth.transport.requests.Request())
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
            raise GoogleTokenError(type(exc).__name__) from None

    def _load(self) -> Any:
        import google.auth  # noqa: PLC0415
        from google.oauth2 import service_account  # noqa: PLC0415

        path = (self._provider.credentials or {}).get("service_account_file")
        if path:
            return service_account.Credentials.from_service_account_file(path, scopes=GOOGLE_SCOPES)
        return google.auth.default(scopes=GOOGLE_SCOPES)[0]


class GoogleTokenError(Exception):
    """A token fetch failed; `kind` is the exception's class, safe to log (its text is not)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _google_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # google-auth uses naive UTC


def _margin_for(expiry: datetime.datetime | None) -> datetime.timedelta:
    """How long before expiry to replace a token just fetched: TOKEN_MARGIN, or half its life
    when it arrived with less (impersonated and metadata-server tokens can), so a short-lived
    token still serves requests for a while instead of each request fetching another."""
    if expiry is None:
        return TOKEN_MARGIN
    return min(TOKEN_MARGIN, (expiry - _google_now()) / 2)


# schema -> the credential that signs its calls when the provider has no static api_key.
class Credential(Protocol):
    """Applies credentials that need I/O or the clock to an upstream call."""

    async def sign(self, call: UpstreamCall) -> UpstreamCall: ...

    def rejected(self, call: UpstreamCall) -> None:
        """The upstream answered this signed call 401: a credential it carried is no good."""


SIGNERS: dict[str, Callable[[Provider, KnownSecrets], Credential]] = {
    "bedrock": SigV4Credential,
    "vertex": GoogleOAuthCredential,
}


def credential_for(provider: Provider, secrets: KnownSecrets) -> Credential | None:
    """The signer for this provider's calls, or None when the adapter's headers suffice.
    The signer adds every credential it fetches to `secrets`."""
    factory = SIGNERS.get(provider.schema)
    if factory is None or provider.api_key:
        return None
    return factory(provider, secrets)
