"""Sending finished spans to an OTLP/HTTP collector, in batches, off the request path.

Theory of operation: `add` appends a span to a bounded list and returns; a full list drops the
span and counts it (`tollway_trace_spans_dropped_total{reason="queue_full"}`). A task on the
gateway's loop wakes every `export_interval` seconds, or as soon as a batch's worth is queued,
and POSTs the queue in batches of BATCH spans. A batch the collector does not take (no
connection, a timeout, a non-2xx answer) is dropped and counted, never retried: a request must
never wait for telemetry, and a dead collector must not grow memory. While export fails, one
warning says so; one line says when it works again; nothing is logged per batch. On shutdown
or reload `close` exports what is queued within a short deadline; every span it could not send
(still queued, or in a batch its cancel or deadline cut off mid-POST) is counted as `shutdown`,
and so is any span added after it (a request still in flight keeps the exporter it began with).

The collector gets its own small `UpstreamClient` rather than the gateway's upstream pool: its
lifetime follows the telemetry config (a reload can replace it while the pool lives on), its
shutdown flush cannot race the pool's close, and its connections never count against an
upstream's idle limit.
"""
from __future__ import annotations

import asyncio
import logging
import os

from tollway.core.config import Traces
from tollway.core.telemetry.otlp import Attribute, Span, export_request
from tollway.gateway.telemetry.metrics import Metrics
from tollway.gateway.upstream.client import Timeouts, UpstreamClient, UpstreamError, endpoint_of
from tollway.gateway.upstream.errors import UpstreamTooLarge

log = logging.getLogger("tollway")
BATCH = 512  # spans per POST; a full batch wakes the exporter before its interval
# A slow collector costs the exporter task at most `total` per batch, never a request.
TIMEOUTS = Timeouts(connect=2.0, first_byte=5.0, idle=5.0, total=10.0)
_MAX_ANSWER_BYTES = 64 * 1024  # a collector's answer is a small status document


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - once per exporter

    try:
        return version("tollway")
    except PackageNotFoundError:
        return "unknown"


class SpanExporter:
    def __init__(self, config: Traces, metrics: Metrics, client: UpstreamClient | None = None) -> None:
        self.url = config.endpoint
        self.headers = [("content-type", "application/json"), *config.headers.items()]
        self.interval = config.export_interval
        self.max_queue = config.max_queue
        self.queue: list[Span] = []
        self.version = _version()
        self.resource: list[Attribute] = [("service.name", config.service_name),
                                                ("service.version", self.version)]
        self.where = _origin_label(config.endpoint)  # logs name the collector by host:port only
        self.failing = False
        self.closed = False
        self._client = client
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue_full = metrics.trace_spans_dropped.labels("queue_full")
        self._export_failed = metrics.trace_spans_dropped.labels("export_failed")
        self._shutdown = metrics.trace_spans_dropped.labels("shutdown")
        self._ok = metrics.trace_exports.labels("ok")
        self._failed = metrics.trace_exports.labels("failed")

    def add(self, span: Span) -> None:
        """Queue a finished span; drop (and count) it when the queue is full or closed."""
        if self.closed:  # nothing would ever send it
            self._shutdown.inc()
            return
        queue = self.queue
        if len(queue) >= self.max_queue:
            self._queue_full.inc()
            return
        queue.append(span)
        if len(queue) == BATCH and self._wake is not None:
            self._wake.set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin exporting from `loop`."""
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run())

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the task and export what is queued, for at most `timeout` seconds."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            async with asyncio.timeout(timeout):
                await self.export_queued()
        except TimeoutError:
            pass
        self.closed = True  # spans could join the flush above; from here on they are only counted
        if self.queue:
            self._shutdown.inc(len(self.queue))
            self.queue = []
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.export_queued()

    async def export_queued(self) -> None:
        """POST everything queued now, BATCH spans at a time."""
        while self.queue:
            batch, self.queue = self.queue[:BATCH], self.queue[BATCH:]
            try:
                problem = await self._post(export_request(batch, self.resource, ("tollway", self.version)))
            except asyncio.CancelledError:  # close() cancelled the task, or its deadline ran out, mid-POST
                self._shutdown.inc(len(batch))
                raise
            self._outcome(problem, len(batch))

    async def _post(self, body: bytes) -> str:
        """"" if the collector took the batch, else why not (no secret: host:port and a reason)."""
        if self._client is None:
            self._client = UpstreamClient(max_idle_per_host=2, ca_bundle=os.environ.get("TOLLWAY_CA_BUNDLE"))
        try:
            resp = await self._client.request("POST", self.url, self.headers, body, TIMEOUTS)
            try:
                await resp.read(_MAX_ANSWER_BYTES)  # only its status matters
            except UpstreamTooLarge:
                pass  # not buffered (a wrong endpoint's page, a hostile one); the connection is not pooled
            finally:
                resp.close()
        except UpstreamError as exc:
            return str(exc)
        except (OSError, ValueError) as exc:
            return type(exc).__name__
        return "" if 200 <= resp.status < 300 else f"the collector answered HTTP {resp.status}"

    def _outcome(self, problem: str, spans: int) -> None:
        if not problem:
            self._ok.inc()
            if self.failing:
                self.failing = False
                log.info("trace export to %s works again", self.where)
            return
        self._failed.inc()
        self._export_failed.inc(spans)
        if not self.failing:
            self.failing = True
            log.warning("trace export to %s failing (%s); spans are dropped and counted in "
                        "tollway_trace_spans_dropped_total until it recovers", self.where, problem)


def _origin_label(url: str) -> str:
    _, host, port = endpoint_of(url)  # leaves out any user:password@
    return f"{host}:{port}"
