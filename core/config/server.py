"""`server:`: the listener's bounds on what clients may send and hold, draining, reloads, and
who may read /metrics."""
from __future__ import annotations

import msgspec


class MetricsAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`/metrics` answers only to `Authorization: Bearer <credential>` whose hash this is."""

    key_hash: str


class Server(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_body_bytes: int = 10 * 1024 * 1024
    max_json_depth: int = 128
    access_log: bool = True
    key_pepper: str | None = None  # HMAC pepper for key hashes; see tollway.core.security.keys
    reload_check_interval: float = 2.0  # seconds between config file checks (0: only SIGHUP)
    drain_delay: float = 0.0  # on SIGTERM, seconds /readyz says 503 before the listener closes
    drain_timeout: float = 30.0  # then, seconds in-flight requests may take to finish
    # Hostile-peer bounds (README.md, "Hostile peers"):
    body_read_timeout: float = 60.0  # seconds a client may take to upload its request body
    max_upstream_body_bytes: int = 64 * 1024 * 1024  # past it: 502 upstream_too_large
    client_idle_timeout: float = 60.0  # seconds a streaming client may read nothing before it is dropped
    max_count_tokens_bytes: int = 2 * 1024 * 1024  # count_tokens bodies larger than this: 413
    # multipart uploads (image edits, audio) larger than this: 413; OpenAI takes audio files up to 25 MB
    max_upload_bytes: int = 32 * 1024 * 1024
    metrics_auth: MetricsAuth | None = None  # absent: /metrics is open, as before
    admin_requests_per_minute: int = 600  # per admin credential, every /admin/* request
    console: bool = True  # the operator console at /ui (docs/console.md); false: /ui is an unknown path
