"""The read API for rollout controllers, framework-free: tenant tokens, tenant → partition, and
the JSON documents of ``GET /v1/verdicts/{tenant}/{release}`` and ``GET /v1/incidents``.

The faust views that serve them, and the routing to the worker that owns a tenant's state, are in
:mod:`streams.worker.web`; docs/rollout.md shows an Argo Rollouts AnalysisTemplate and a Flagger
webhook that call them.

Tokens file (``SELFHEAL_API_TOKENS_PATH``): a JSON object, tenant id → list of bearer tokens
(several per tenant allow rotation)::

    {"northwind-health": ["3q8...long random..."], "acme": ["k1...", "k2..."]}

Each token is at least :data:`MIN_TOKEN_CHARS` characters (e.g. ``openssl rand -hex 32``) and
belongs to one tenant. A request names its token in ``Authorization: Bearer <token>`` (RFC 6750);
the token is compared with every configured token by :func:`hmac.compare_digest` (constant time,
no early exit on a match), so the answer time says nothing about how close a guess was. No or an
unknown token: 401; a token of tenant A asking for tenant B: 403. The file is read at worker
start (rotate: add the new token, restart the workers, then remove the old one).
"""

from __future__ import annotations

import hmac
import json
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from schemas import Incident
from streams.errors import ConfigError, SelfhealError

#: shortest accepted token, characters (128 bits as hex is 32)
MIN_TOKEN_CHARS = 24


class AccessDenied(SelfhealError):
    """A read API request without access; ``status`` is the HTTP status to answer (401: no or an
    unknown token; 403: the token's tenant is not the one asked for)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def tenant_partition(tenant: str, partitions: int) -> int:
    """The source partition of ``tenant``'s records, where the worker keeps its state.

    The SDK's producer (confluent-kafka) keys every record with the tenant id and partitions with
    librdkafka's default ``consistent_random`` partitioner: CRC-32 of the key modulo the partition
    count (librdkafka CONFIGURATION.md, ``partitioner``). faust's own table routing hashes keys with
    aiokafka's murmur2 partitioner instead, which names another partition for most tenants, so the
    worker routes with this function and faust's table metadata (:mod:`streams.worker.web`).

    >>> tenant_partition("acme", 6)
    2
    """
    return zlib.crc32(tenant.encode()) % partitions


class TenantTokens:
    """The tenant bearer tokens of the read API (format: module docstring).

    Args:
        tokens: tenant → its tokens.

    Raises:
        ConfigError: a token shorter than :data:`MIN_TOKEN_CHARS` or given to two tenants (names
            the tenant, never the token).
    """

    def __init__(self, tokens: Mapping[str, Iterable[str]]) -> None:
        self.entries: list[tuple[bytes, str]] = []
        owner: dict[str, str] = {}
        for tenant, values in tokens.items():
            if isinstance(values, str):
                values = [values]
            for tok in values:
                if not isinstance(tok, str) or len(tok) < MIN_TOKEN_CHARS:
                    raise ConfigError(f"read API token of tenant {tenant!r} is not a string of at least "
                                      f"{MIN_TOKEN_CHARS} characters (SELFHEAL_API_TOKENS_PATH)")
                if owner.setdefault(tok, tenant) != tenant:
                    raise ConfigError(f"a read API token is given to tenants {owner[tok]!r} and {tenant!r} "
                                      "(SELFHEAL_API_TOKENS_PATH); one token, one tenant")
                self.entries.append((tok.encode(), tenant))

    @classmethod
    def from_file(cls, path: Path) -> TenantTokens:
        """Read a tokens file.

        Raises:
            ConfigError: unreadable, not a JSON object of tenant → list of strings, or a bad token.
        """
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"SELFHEAL_API_TOKENS_PATH={path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(f"SELFHEAL_API_TOKENS_PATH={path}: not JSON ({exc})") from exc
        if not isinstance(data, dict) or not all(isinstance(v, (list, str)) for v in data.values()):
            raise ConfigError(f"SELFHEAL_API_TOKENS_PATH={path}: expected a JSON object tenant -> list of tokens")
        return cls(data)

    def tenant_of(self, authorization: str | None) -> str:
        """The tenant whose token the ``Authorization`` header value carries.

        Every configured token is compared (constant time each, no early exit).

        Raises:
            AccessDenied: 401, no ``Bearer`` token or an unknown one.
        """
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AccessDenied(401, "missing bearer token (Authorization: Bearer <token>)")
        presented = token.encode()
        found = None
        for tok, tenant in self.entries:
            if hmac.compare_digest(presented, tok):
                found = tenant
        if found is None:
            raise AccessDenied(401, "unknown bearer token")
        return found

    def authorize(self, authorization: str | None, tenant: str) -> None:
        """Allow the request only if its token belongs to ``tenant``.

        Raises:
            AccessDenied: 401 (no or an unknown token), 403 (a token of another tenant).
        """
        if self.tenant_of(authorization) != tenant:
            raise AccessDenied(403, f"the token does not grant access to tenant {tenant!r}")


def verdict_document(tenant: str, release: str, scorecards: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of ``GET /v1/verdicts/{tenant}/{release}``.

    ``verdict`` sums the scorecards up for a controller: ``rollback`` if any scorecard says
    rollback, ``promote`` if every scorecard says promote, else ``hold`` (also while a scorecard
    has no verdict yet). ``scorecards``: :meth:`CanaryMonitor.scorecards
    <streams.processors.canary.CanaryMonitor.scorecards>`, one per cohort x workflow scope x arm.
    """
    verdicts = [s["verdict"] for s in scorecards]
    if "rollback" in verdicts:
        overall = "rollback"
    elif verdicts and all(v == "promote" for v in verdicts):
        overall = "promote"
    else:
        overall = "hold"
    return {"tenant": tenant, "release": release, "verdict": overall, "scorecards": scorecards}


#: the overall verdicts of :func:`verdict_document`
VERDICTS = ("promote", "hold", "rollback")


def expected_status(doc: dict[str, Any], expect: str | None) -> int:
    """HTTP status of a verdict document for a caller that states the verdicts it accepts
    (``?expect=promote`` or ``?expect=promote,hold``): 200 when ``doc["verdict"]`` is one of them
    (or nothing is expected), else 409, so a webhook that only looks at the status code (Flagger)
    can gate on the verdict.

    >>> expected_status({"verdict": "hold"}, "promote,hold"), expected_status({"verdict": "hold"}, "promote")
    (200, 409)

    Raises:
        ValueError: ``expect`` names something other than promote, hold, rollback.
    """
    if not expect:
        return 200
    wanted = {v.strip() for v in expect.split(",")}
    if not wanted <= set(VERDICTS):
        raise ValueError(f"expect={expect!r}: expected a comma-separated subset of {', '.join(VERDICTS)}")
    return 200 if doc["verdict"] in wanted else 409


def incidents_document(tenant: str, incidents: list[Incident]) -> dict[str, Any]:
    """The body of ``GET /v1/incidents?tenant=...&status=open``: the tenant's open incidents as
    their latest events (the ``agent.incidents.v1`` contract in JSON), most severe first."""
    return {"tenant": tenant, "status": "open", "count": len(incidents),
            "incidents": [i.model_dump(mode="json") for i in incidents]}
