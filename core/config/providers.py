"""The `providers:` section: where requests go, over which API schema, with which timeouts,
and (for a self-hosted pool) which endpoints and how one is picked."""
from __future__ import annotations

from typing import Literal

import msgspec

SCHEMAS = ("openai", "azure_openai", "fake", "anthropic", "bedrock", "vertex", "gemini", "cohere")
PICK_POLICIES = ("least_queue", "least_inflight", "round_robin")


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connect: float = 5.0
    first_byte: float = 300.0
    idle: float = 120.0
    # The whole exchange, connect to last byte: a trickling upstream cannot hold a stream (and
    # its client's slot) forever. null lifts the bound.
    total: float | None = 600.0


class Scrape(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a pool reads its endpoints' Prometheus metrics (vLLM names)."""

    interval: float = 1.0  # seconds between scrapes of one endpoint
    timeout: float = 0.5  # an endpoint slower than this counts as a failed scrape
    path: str = "/metrics"  # on the endpoint's origin (scheme://host:port)


class Discover(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pool's endpoints from DNS: every address of `dns` (a headless Service) is one endpoint."""

    dns: str
    port: int
    path: str = "/v1"
    scheme: Literal["http", "https"] = "http"
    interval: float = 10.0  # seconds between lookups


class Provider(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    schema: str
    base_url: str | None = None
    api_key: str | None = None
    api_version: str | None = None  # azure_openai: the `api-version` query value
    timeouts: Timeouts = Timeouts()
    # Later schemas (bedrock, vertex, pools) read these; unused ones stay None.
    region: str | None = None
    project: str | None = None
    location: str | None = None
    credentials: dict[str, str] | None = None
    endpoints: list[str] | None = None  # a pool: one base URL per replica, instead of base_url
    discover: Discover | None = None  # ... or a pool found by DNS
    pick: str | None = None  # pool policy, one of PICK_POLICIES (default least_queue)
    scrape: Scrape = Scrape()
    headers: dict[str, str] | None = None
    # fake: how long to wait between streamed chunks, and how many chunks to send.
    fake_chunk_delay: float = 0.0
    fake_chunks: int = 8
