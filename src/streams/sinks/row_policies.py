"""ClickHouse row policies for tenant isolation, generated from the migrations (issue 18, item 5).

Every table and view a migration creates (``CREATE [MATERIALIZED] TABLE|VIEW IF NOT EXISTS
{db}.name``, :func:`relations`) gets, per tenant role, a ``FOR SELECT`` row policy that keeps
the tenant's rows (``tenant_id = 'TENANT'``; :data:`SHARED_ROWS` adds the cross-tenant rows a
relation holds by design) and a ``GRANT SELECT`` on that relation only, never on ``selfheal.*``:
a relation the generator does not know is not readable by a tenant role at all. A relation
without a ``tenant_id`` column is refused (:class:`RowPolicyError`), so a migration that adds one
fails ``tests/unit/sinks/test_row_policies.py`` until it has a tenant column or an entry in
:data:`NOT_TENANT_DATA` with the reason.

ClickHouse semantics this relies on (ClickHouse docs, "CREATE ROW POLICY"): once a table has any
row policy, a user without a policy on it reads *no* rows, so the service role ``selfheal_service``
(the worker and CLI writer/reader) gets a ``USING 1`` policy on every relation; policies are
permissive and combine with OR per user. Normal views run with the invoker's rights (SQL SECURITY
INVOKER), so the base tables' policies apply under a view as well as the view's own.

Output (:func:`render`): the SQL template committed as ``deploy/clickhouse/row_policies.sql``
(a deploy artefact: applied per tenant with ``sed 's/TENANT/acme/g' ... | clickhouse-client
--multiquery``); ``selfheal row-policies`` prints it, the unit test checks the committed file is
the generated one.
"""

from __future__ import annotations

import re

from streams.errors import SelfhealError
from streams.sinks.clickhouse import migrations

#: the placeholder the deploy step replaces with the tenant slug (``[a-z0-9][a-z0-9_-]*``)
TENANT = "TENANT"
#: role of the selfheal service user (worker, CLI): reads every row
SERVICE_ROLE = "selfheal_service"
#: relations that also hold cross-tenant rows readable by every tenant, with their tenant value
#: (``feedback_patterns``: tenant_id '' holds counts and masked templates only, migration 0010)
SHARED_ROWS: dict[str, str] = {"feedback_patterns": ""}
#: relations that hold no tenant data, with the reason (none at present)
NOT_TENANT_DATA: dict[str, str] = {}

_CREATE = re.compile(
    r"CREATE\s+(?P<kind>TABLE|VIEW|MATERIALIZED\s+VIEW|LIVE\s+VIEW|DICTIONARY)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"\{db\}\.(?P<name>\w+)", re.IGNORECASE)
_NEXT_CREATE = re.compile(r";\s*(?:--[^\n]*\n\s*)*CREATE\s", re.IGNORECASE)


class RowPolicyError(SelfhealError):
    """A relation of the migrations cannot be given a tenant row policy (it has no ``tenant_id``)."""


def relations() -> list[tuple[str, str, str]]:
    """Every relation the migrations create: ``[(name, kind, statement), ...]`` in migration order.

    ``kind`` is ``"table"``, ``"view"``, ``"materialized view"``, ... (lower case, one space);
    ``statement`` is the text from its ``CREATE`` up to the next statement.
    """
    out: list[tuple[str, str, str]] = []
    for _version, _name, sql in migrations():
        for m in _CREATE.finditer(sql):
            nxt = _NEXT_CREATE.search(sql, m.end())
            out.append((m.group("name"), " ".join(m.group("kind").lower().split()),
                        sql[m.start(): nxt.start() if nxt else len(sql)]))
    return out


def predicate(name: str, statement: str) -> str:
    """The ``USING`` condition of ``name``'s tenant policy (``TENANT`` is the placeholder).

    Raises:
        RowPolicyError: the statement has no ``tenant_id`` column and ``name`` is not in
            :data:`NOT_TENANT_DATA`.
    """
    if name in NOT_TENANT_DATA:
        return "0"
    if not re.search(r"\btenant_id\b", statement):
        raise RowPolicyError(f"relation {name!r} of the migrations has no tenant_id column: give it one, or add it "
                             "to streams.sinks.row_policies.NOT_TENANT_DATA with the reason")
    if name in SHARED_ROWS:
        return f"tenant_id IN ('{TENANT}', '{SHARED_ROWS[name]}')"
    return f"tenant_id = '{TENANT}'"


def relation_statements(db: str, name: str, statement: str) -> list[str]:
    """The grant and the two policies of one relation (``statement``: its CREATE text).

    Raises:
        RowPolicyError: from :func:`predicate`.
    """
    cond = predicate(name, statement)
    return [
        f"GRANT SELECT ON {db}.{name} TO `tenant_{TENANT}`",
        f"CREATE ROW POLICY IF NOT EXISTS service_{name} ON {db}.{name} FOR SELECT USING 1 TO {SERVICE_ROLE}",
        f"CREATE ROW POLICY IF NOT EXISTS `tenant_{TENANT}_{name}` ON {db}.{name} FOR SELECT USING {cond} "
        f"TO `tenant_{TENANT}`",
    ]


#: the roles, created before any grant
ROLES = (f"CREATE ROLE IF NOT EXISTS {SERVICE_ROLE}", f"CREATE ROLE IF NOT EXISTS `tenant_{TENANT}`")


def statements(db: str = "selfheal") -> list[str]:
    """Every SQL statement of the policy template for database ``db`` (no trailing ``;``).

    Raises:
        RowPolicyError: from :func:`predicate`.
    """
    return [*ROLES, *(s for name, _kind, stmt in relations() for s in relation_statements(db, name, stmt))]


def render(db: str = "selfheal") -> str:
    """The SQL template as committed in ``deploy/clickhouse/row_policies.sql``."""
    lines = [
        "-- GENERATED by `selfheal row-policies` from src/streams/sinks/migrations (streams/sinks/row_policies.py);",
        "-- do not edit: change the migrations or the generator and regenerate.",
        "-- Tenant isolation on a ClickHouse server (the embedded chDB has no access control).",
        f"-- Per tenant: sed 's/{TENANT}/acme/g' row_policies.sql | clickhouse-client --multiquery",
        f"-- (after `selfheal migrate`). Give the selfheal service user the role {SERVICE_ROLE}: once a",
        "-- table has a row policy, a user without one reads no rows. Tenant roles read only these relations.",
        *(s + ";" for s in ROLES),
    ]
    for name, kind, stmt in relations():
        lines += [f"-- {kind} {name}", *(s + ";" for s in relation_statements(db, name, stmt))]
    return "\n".join(lines) + "\n"
