"""The worker's web endpoints on faust's web server (aiohttp; ``SELFHEAL_WEB_ENABLED``):
``/metrics`` for Prometheus and the read API for rollout controllers.

- ``GET /metrics``: the worker's :class:`~streams.telemetry.WorkerTelemetry` (its own registry),
  Prometheus text format. No token (bind it to a network Prometheus alone reaches).
- ``GET /v1/verdicts/{tenant}/{release}``: the canary scorecards of a candidate release
  (:func:`streams.readapi.verdict_document`); 404 while the tenant has none for it. With
  ``?expect=promote`` (or ``promote,hold``, ...) the status is 409 unless the verdict is one of
  those (:func:`streams.readapi.expected_status`): for webhooks that only read the status code.
- ``GET /v1/incidents?tenant=...&status=open``: the tenant's open incidents
  (:func:`streams.readapi.incidents_document`). Only ``status=open`` (the default): workers hold
  open incidents only; resolved ones are in ClickHouse (``selfheal incidents``).

Both API views need ``Authorization: Bearer <token>`` of the tenant asked for (401 without or
with an unknown token, 403 for another tenant's token; :class:`streams.readapi.TenantTokens`);
without ``SELFHEAL_API_TOKENS_PATH`` they answer 503.

**Routing.** A tenant's state (canary scorecards in the ``canary-state`` table, open incidents in
``incident-state``) lives on the worker that owns the tenant's source partition
(:func:`streams.readapi.tenant_partition`); any worker answers: one that does not own it forwards
the request (token included) to the owner, found in faust's table metadata
(``app.router.table_metadata``: worker URL → changelog partitions, from the partition assignor).
faust's ``app.table_route`` is not used as is: it hashes the key with aiokafka's murmur2
partitioner, while the SDK's records (and so the state) sit on librdkafka's CRC-32 partition. A
forwarded request carries :data:`ROUTED_HEADER`; a worker that gets one for a partition it does
not own (the assignment moved meanwhile), or that finds no owner (a rebalance in progress),
answers 503 with ``Retry-After``. Each worker advertises ``http://SELFHEAL_WEB_HOST:SELFHEAL_WEB_PORT``
(faust ``canonical_url``); the workers must reach each other there.

faust's own web blueprints (``/table`` would show table contents without a token, ``/router``,
``/graph``, the stats page) are switched off in :func:`streams.worker.app.build_app`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP
from faust.web import Request, Response, View
from yarl import URL

from streams.config import Settings
from streams.pipeline import Pipeline
from streams.readapi import (
    AccessDenied,
    TenantTokens,
    expected_status,
    incidents_document,
    tenant_partition,
    verdict_document,
)
from streams.telemetry import CONTENT_TYPE, WorkerTelemetry

log = logging.getLogger("selfheal.worker")
#: set on a request one worker forwards to the owner (the owner never forwards it again)
ROUTED_HEADER = "X-Selfheal-Routed"
#: seconds a client should wait after a 503 (a rebalance takes a few seconds)
RETRY_AFTER_S = 5


def load_tokens(settings: Settings) -> TenantTokens | None:
    """The read API's tokens, ``None`` without ``api_tokens_path``.

    Raises:
        ConfigError: the file is unreadable or invalid (see :mod:`streams.readapi`).
    """
    return TenantTokens.from_file(settings.api_tokens_path) if settings.api_tokens_path else None


class ReadApi:
    """Authorization and routing of the read API (see the module docstring).

    Args:
        app: the faust app (``assignor.assigned_actives()``, ``router.table_metadata``,
            ``conf.canonical_url``, ``http_client``).
        settings: ``partitions`` and the trace topic's name.
        pipeline: the state read (``canary.scorecards``, ``incidents.open_incidents``).
        tokens: the tenants' tokens; ``None``: the API answers 503.
        changelogs: table name → its changelog topic name.
    """

    def __init__(self, app: faust.App, settings: Settings, pipeline: Pipeline, tokens: TenantTokens | None,
                 changelogs: dict[str, str]) -> None:
        self.app = app
        self.settings = settings
        self.pipeline = pipeline
        self.tokens = tokens
        self.changelogs = changelogs
        self.trace_topic = settings.topic("traces")

    def owns(self, tenant: str) -> bool:
        """This worker owns ``tenant``'s source partition (its state is loaded here)."""
        tp = TP(self.trace_topic, tenant_partition(tenant, self.settings.partitions))
        return tp in self.app.assignor.assigned_actives()

    def owner(self, table: str, tenant: str) -> URL | None:
        """URL of the worker holding ``tenant``'s partition of ``table``, from faust's table
        metadata; ``None`` when no worker has it (a rebalance in progress)."""
        partition = tenant_partition(tenant, self.settings.partitions)
        topic = self.changelogs[table]
        for url, topics in self.app.router.table_metadata(table).items():
            if partition in topics.get(topic, ()):
                return URL(url)
        return None

    async def answer(self, view: View, request: Request, table: str, tenant: str,
                     local: Callable[[], tuple[int, Any]]) -> Response:
        """Authorize, then answer here (``local()`` → ``(status, JSON body)``) or forward to
        the owner of ``tenant``'s state in ``table``."""
        if self.tokens is None:
            return view.error(503, "read API disabled: no tokens configured (SELFHEAL_API_TOKENS_PATH)")
        try:
            self.tokens.authorize(request.headers.get("Authorization"), tenant)
        except AccessDenied as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="selfheal"'} if exc.status == 401 else None
            return view.error(exc.status, str(exc), headers=headers)
        if self.owns(tenant):
            status, body = local()
            return view.json(body, status=status)
        dest = self.owner(table, tenant)
        if request.headers.get(ROUTED_HEADER) or dest is None or _same(dest, URL(str(self.app.conf.canonical_url))):
            return view.error(503, f"the state of tenant {tenant!r} is moving between workers; retry",
                              headers={"Retry-After": str(RETRY_AFTER_S)})
        return await self.forward(view, request, dest)

    async def forward(self, view: View, request: Request, dest: URL) -> Response:
        """Send ``request`` (path, query, Authorization) to the worker at ``dest``; its answer."""
        url = URL(str(request.url)).with_scheme(dest.scheme).with_host(dest.host or "").with_port(dest.port)
        headers = {ROUTED_HEADER: "1"}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            async with self.app.http_client.get(url, headers=headers) as resp:
                body = await resp.read()
                return view.bytes(body, content_type=resp.content_type, status=resp.status)
        except OSError as exc:  # aiohttp.ClientConnectionError is an OSError
            log.warning("read API: forwarding to %s failed: %r", dest, exc)
            return view.error(503, f"the worker owning this tenant ({dest}) did not answer; retry",
                              headers={"Retry-After": str(RETRY_AFTER_S)})


def install_views(app: faust.App, api: ReadApi, telemetry: WorkerTelemetry) -> None:
    """Register ``/metrics``, ``/v1/verdicts/{tenant}/{release}`` and ``/v1/incidents`` on
    ``app``'s web server (before it starts)."""
    pipeline = api.pipeline

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(telemetry.render(), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/v1/verdicts/{tenant}/{release}")
    class Verdicts(View):
        async def get(self, request: Request, tenant: str, release: str) -> Response:
            expect = request.query.get("expect")

            def local() -> tuple[int, Any]:
                cards = pipeline.canary.scorecards(tenant, release)
                if not cards:
                    return 404, {"error": f"no canary scorecard for release {release!r} of tenant {tenant!r} "
                                          "(no traces with this candidate_release_id yet)"}
                doc = verdict_document(tenant, release, cards)
                return expected_status(doc, expect), doc

            try:
                expected_status({"verdict": "hold"}, expect)
            except ValueError as exc:
                return self.error(400, str(exc))

            return await api.answer(self, request, "canary-state", tenant, local)

    @app.page("/v1/incidents")
    class Incidents(View):
        async def get(self, request: Request) -> Response:
            tenant = request.query.get("tenant")
            status = request.query.get("status", "open")
            if not tenant:
                return self.error(400, "query parameter 'tenant' is required")
            if status != "open":
                return self.error(400, f"status={status!r}: workers serve open incidents only (status=open); "
                                       "resolved ones are in ClickHouse (selfheal incidents)")
            def local() -> tuple[int, Any]:
                return 200, incidents_document(tenant, pipeline.incidents.open_incidents(tenant))

            return await api.answer(self, request, "incident-state", tenant, local)


def _same(a: URL, b: URL) -> bool:
    """Same host and port (faust's own ``Router._urlident`` comparison)."""
    return (a.host, a.port) == (b.host, b.port)

