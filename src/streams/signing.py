"""Producer-to-tenant binding: HMAC-SHA256 message signatures with per-tenant keys (issue 18, item 3).

Without it any producer may key records as any tenant and so poison that tenant's baselines. With
``SELFHEAL_TENANT_AUTH=true`` every message on the trace and feedback topics must carry

- header ``selfheal-key-id``: the id of one of its tenant's keys (ASCII), and
- header ``selfheal-signature``: ``HMAC-SHA256(key, value)`` as 64 lower-case hex characters
  (RFC 2104; the message value is the Avro single-object payload as sent),

where the tenant is the message key (every record inside is checked against the key by ingest,
``key_mismatch``). The SDK signs (:meth:`TenantKeys.sign`), the worker verifies
(:meth:`TenantKeys.verify`) before anything of the message is used; a missing or wrong signature
dead-letters the whole message as ``tenant_auth``, so it never reaches a baseline. Comparison is
constant-time (:func:`hmac.compare_digest`).

Keys file (``SELFHEAL_TENANT_KEYS_FILE``), JSON, at most :data:`MAX_ACTIVE_KEYS` keys per tenant
so that a key can be rotated without downtime::

    {"acme": {"2026-11": "<base64 of >= 32 random bytes>", "2026-12": "<base64>"},
     "globex": {"g1": "<base64>"}}

The worker's file holds every tenant; a producer's file holds its own tenant only. A producer signs
with the *last* key listed for its tenant. Rotation: add the new key second on the worker, then
give producers a file whose last key is the new one, then remove the old key from the worker.
Generate a key with ``python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path

from streams.config import Settings
from streams.errors import ConfigError

#: header names (bytes values)
KEY_ID_HEADER = "selfheal-key-id"
SIGNATURE_HEADER = "selfheal-signature"
#: keys a tenant may have at once (the current one and the one being rotated in or out)
MAX_ACTIVE_KEYS = 2
#: shortest key accepted, bytes (the HMAC-SHA256 block output size; RFC 2104 section 3)
MIN_KEY_BYTES = 32


class TenantKeys:
    """Per-tenant HMAC keys: ``{tenant_id: {key_id: key bytes}}`` (insertion order kept).

    Raises:
        ConfigError: a tenant with no key or more than :data:`MAX_ACTIVE_KEYS`, a key shorter than
            :data:`MIN_KEY_BYTES`, or an empty / non-ASCII key id.
    """

    def __init__(self, keys: Mapping[str, Mapping[str, bytes]]) -> None:
        for tenant, ids in keys.items():
            if not ids or len(ids) > MAX_ACTIVE_KEYS:
                raise ConfigError(f"tenant keys: tenant {tenant!r} has {len(ids)} keys; "
                                  f"1 to {MAX_ACTIVE_KEYS} are allowed (two during a rotation)")
            for kid, key in ids.items():
                if not kid or not kid.isascii() or len(kid) > 64:
                    raise ConfigError(f"tenant keys: tenant {tenant!r}: key id {kid!r} must be 1-64 ASCII characters")
                if len(key) < MIN_KEY_BYTES:
                    raise ConfigError(f"tenant keys: tenant {tenant!r} key {kid!r} has {len(key)} bytes; "
                                      f"at least {MIN_KEY_BYTES} are required")
        self.keys = {t: dict(ids) for t, ids in keys.items()}

    @classmethod
    def load(cls, path: Path) -> TenantKeys:
        """Read the JSON keys file (module docstring: format).

        Raises:
            ConfigError: unreadable file, not JSON of that shape, a key that is not base64, or
                the checks of the constructor; the message names the file and the tenant/key id
                (never the key).
        """
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"SELFHEAL_TENANT_KEYS_FILE={path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SELFHEAL_TENANT_KEYS_FILE={path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
            raise ConfigError(f"SELFHEAL_TENANT_KEYS_FILE={path}: expected {{tenant: {{key_id: base64 key}}}}")
        keys: dict[str, dict[str, bytes]] = {}
        for tenant, ids in raw.items():
            keys[tenant] = {}
            for kid, b64 in ids.items():
                try:
                    keys[tenant][kid] = base64.b64decode(str(b64), validate=True)
                except (binascii.Error, ValueError):
                    raise ConfigError(f"SELFHEAL_TENANT_KEYS_FILE={path}: tenant {tenant!r} key {kid!r} "
                                      "is not base64") from None
        return cls(keys)

    def sign(self, tenant: str, value: bytes) -> list[tuple[str, bytes]]:
        """Kafka headers signing ``value`` for ``tenant`` with its last listed key.

        Raises:
            ConfigError: no key for ``tenant`` in the file.
        """
        ids = self.keys.get(tenant)
        if not ids:
            raise ConfigError(f"tenant keys: no signing key for tenant {tenant!r} in SELFHEAL_TENANT_KEYS_FILE")
        kid, key = list(ids.items())[-1]
        return [(KEY_ID_HEADER, kid.encode()), (SIGNATURE_HEADER, signature(key, value).encode())]

    def verify(self, tenant: str | None, value: bytes, headers: Mapping[str, bytes]) -> str | None:
        """Why the message is not authentic for ``tenant``, or ``None`` when it is.

        Args:
            tenant: the tenant the message key names.
            value: the message value as received.
            headers: the message headers by name (last value of a repeated header).

        Returns:
            ``None``, or a reason naming the key id (never a key or the expected signature).
        """
        kid_raw, sig = headers.get(KEY_ID_HEADER), headers.get(SIGNATURE_HEADER)
        if kid_raw is None or sig is None:
            missing = [h for h, v in ((KEY_ID_HEADER, kid_raw), (SIGNATURE_HEADER, sig)) if v is None]
            return f"header {', '.join(missing)} missing: the message is not signed"
        kid = kid_raw.decode("ascii", "replace")
        key = self.keys.get(tenant or "", {}).get(kid)
        if key is None:
            return f"key id {kid[:64]!r} is not an active key of tenant {tenant!r}"
        if not hmac.compare_digest(sig, signature(key, value).encode()):
            return f"signature does not match the value under tenant {tenant!r} key {kid[:64]!r}"
        return None


def signature(key: bytes, value: bytes) -> str:
    """``HMAC-SHA256(key, value)`` as 64 lower-case hex characters (RFC 2104).

    >>> signature(b"k" * 32, b"v")[:16]
    'ec2f228b68caf5e3'
    """
    return hmac.new(key, value, hashlib.sha256).hexdigest()


def header_map(headers: object) -> dict[str, bytes]:
    """Kafka headers as ``{name: value}`` from a list of ``(name, value)`` pairs or a mapping
    (aiokafka/faust, confluent-kafka); ``None`` → ``{}``; a repeated name keeps its last value."""
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): (v if isinstance(v, bytes) else str(v or "").encode()) for k, v in items}  # type: ignore[union-attr]


def verifying_keys(settings: Settings) -> TenantKeys | None:
    """The worker's keys: loaded when ``settings.tenant_auth`` is on, else ``None`` (no check).

    Raises:
        ConfigError: ``tenant_auth`` on without ``tenant_keys_file``, or from :meth:`TenantKeys.load`.
    """
    if not settings.tenant_auth:
        return None
    if settings.tenant_keys_file is None:
        raise ConfigError("SELFHEAL_TENANT_AUTH=true needs SELFHEAL_TENANT_KEYS_FILE (docs/security.md)")
    return TenantKeys.load(settings.tenant_keys_file)


def signing_keys(settings: Settings) -> TenantKeys | None:
    """The producer's keys: loaded when ``settings.tenant_keys_file`` is set, else ``None`` (unsigned).

    Raises:
        ConfigError: from :meth:`TenantKeys.load`.
    """
    return TenantKeys.load(settings.tenant_keys_file) if settings.tenant_keys_file else None
