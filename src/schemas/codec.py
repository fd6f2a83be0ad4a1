"""Avro codecs for the ``selfheal.v1`` contracts (fastavro).

Wire format: Avro *single-object encoding* (Avro 1.11 specification, "Single object encoding"):
two marker bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's parsing canonical form, then the Avro binary body. The fingerprint lets one topic carry
several record types (``AgentTrace`` or ``AgentTraceBatch``) and several versions of a schema:
a reader that knows an older writer schema resolves it to the current one (Avro schema
resolution); an unknown fingerprint is a dead-letter reason, not a crash.

Timestamps travel as ``timestamp-millis``; on the Python side the codec hands out plain ``int``
epoch milliseconds (decoding into ``datetime`` costs ~10% of decode time on the hot path).
"""

from __future__ import annotations

import copy
import io
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro._read_common import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import BaseModel

from schemas.common import Contract, from_ms, to_ms
from schemas.diagnose import locate

MAGIC = b"\xc3\x01"
HEADER_LEN = 10

#: Files in ``avro/`` in dependency order (a file may use named types of the files before it).
SCHEMA_FILES = (
    "release_manifest.avsc",
    "agent_trace.avsc",
    "agent_trace_batch.avsc",
    "feedback.avsc",
    "feedback_batch.avsc",
    "incident.avsc",
    "dead_letter.avsc",
    "rollout_verdict.avsc",
    "incident_action.avsc",
    "platform_signal.avsc",
)


class CodecError(ValueError):
    """A message that cannot be decoded. ``error_class`` is the dead-letter reason code;
    ``field`` and ``value`` name where it failed (dotted field path, short raw value) when known."""

    error_class = "malformed_avro"

    def __init__(self, message: str, *, fingerprint_hex: str | None = None, field: str | None = None,
                 value: str | None = None, error_class: str | None = None) -> None:
        super().__init__(message)
        self.fingerprint_hex = fingerprint_hex
        self.field = field
        self.value = value
        if error_class is not None:
            self.error_class = error_class


class NotAvroError(CodecError):
    """Payload does not start with the single-object marker ``C3 01`` (or is shorter than 10 B)."""

    error_class = "not_avro"


class UnknownSchemaError(CodecError):
    """The fingerprint names no schema this reader knows."""

    error_class = "unknown_schema"


class TruncatedError(CodecError):
    """The body ended before the record did."""

    error_class = "truncated"


class InvalidUtf8Error(CodecError):
    """A string field holds bytes that are not UTF-8."""

    error_class = "invalid_utf8"


class TrailingBytesError(CodecError):
    """Bytes left over after the record: wrong schema or concatenated messages."""

    error_class = "trailing_bytes"


class BadBooleanError(CodecError):
    """A boolean byte other than 0 or 1 (Avro 1.11 specification, "Binary Encoding": "a boolean is
    written as a single byte whose value is either 0 (false) or 1 (true)")."""

    error_class = "bad_boolean"


class _BadBoolean(Exception):
    """Raised by a boolean fixer; ``path`` collects the field names innermost first."""

    def __init__(self, byte: int) -> None:
        super().__init__(byte)
        self.byte = byte
        self.path: list[str] = []


_BOOLEAN_BYTES = {b"\x00": False, b"\x01": True}


def _booleans_as_bytes(schema: Any, path: str = "") -> Any:
    """Copy of an expanded schema where every ``boolean`` is a 1-byte ``fixed`` (same binary width).

    fastavro's compiled reader turns any non-zero boolean byte into ``True`` (so a corrupt 0x05
    became ``policy_blocked=True``); reading the byte as ``fixed`` keeps it for
    :func:`_boolean_fixer` to check. The fixed type is named after its field path, so a writer and a
    reader version of one contract resolve it (Avro schema resolution matches fixed by name and
    size); a boolean default becomes the fixed default ``"\\u0000"`` / ``"\\u0001"``.
    """
    if schema == "boolean" or (isinstance(schema, dict) and schema.get("type") == "boolean"):
        return {"type": "fixed", "name": "selfheal_boolean_" + (path or "value"), "size": 1}
    if isinstance(schema, list):
        return [_booleans_as_bytes(s, path) for s in schema]
    if not isinstance(schema, dict):
        return schema
    t = schema.get("type")
    if t == "record":
        out = dict(schema)
        fields = []
        for f in schema["fields"]:
            g = dict(f)
            g["type"] = _booleans_as_bytes(f["type"], f"{path}__{f['name']}" if path else f["name"])
            if isinstance(f.get("default"), bool):
                g["default"] = "\u0001" if f["default"] else "\u0000"
            fields.append(g)
        out["fields"] = fields
        return out
    if t == "array":
        return {**schema, "items": _booleans_as_bytes(schema["items"], f"{path}__items")}
    if t == "map":
        return {**schema, "values": _booleans_as_bytes(schema["values"], f"{path}__values")}
    return schema


def _boolean_fixer(schema: Any) -> Callable[[Any], Any] | None:
    """For the decoded value of an expanded ``schema`` read with :func:`_booleans_as_bytes`: a
    function that turns each 1-byte value back into ``bool`` in place (raising
    :class:`_BadBoolean` for any other byte), or ``None`` when the schema holds no boolean.

    Raises:
        ValueError: a boolean under a union of several non-null branches (the decoded value would
            not say which branch it took); no ``selfheal.v1`` contract has one.
    """
    if schema == "boolean" or (isinstance(schema, dict) and schema.get("type") == "boolean"):
        def fix_bool(v: bytes) -> bool:
            b = _BOOLEAN_BYTES.get(v)
            if b is None:
                raise _BadBoolean(v[0])
            return b
        return fix_bool
    if isinstance(schema, list):
        subs = [(s, _boolean_fixer(s)) for s in schema]
        with_bool = [f for _, f in subs if f is not None]
        if not with_bool:
            return None
        if len(schema) != 2 or "null" not in schema:
            raise ValueError(f"a boolean inside the union {schema!r} is not supported (only [null, T])")
        inner = with_bool[0]
        return lambda v: None if v is None else inner(v)
    if not isinstance(schema, dict):
        return None
    t = schema.get("type")
    if t == "record":
        parts = [(f["name"], fx) for f in schema["fields"] if (fx := _boolean_fixer(f["type"])) is not None]
        if not parts:
            return None

        def fix_record(rec: dict[str, Any]) -> dict[str, Any]:
            for name, fx in parts:
                try:
                    rec[name] = fx(rec[name])
                except _BadBoolean as exc:
                    exc.path.append(name)
                    raise
            return rec
        return fix_record
    if t in ("array", "map"):
        fx = _boolean_fixer(schema["items" if t == "array" else "values"])
        if fx is None:
            return None

        def fix_items(items: Any) -> Any:
            for k in range(len(items)) if t == "array" else list(items):
                try:
                    items[k] = fx(items[k])
                except _BadBoolean as exc:
                    exc.path.append(str(k))
                    raise
            return items
        return fix_items
    return None


def default_avro_dir() -> Path:
    """Directory holding the ``.avsc`` contracts.

    ``SELFHEAL_AVRO_DIR`` wins; then ``avro/`` shipped inside the wheel (``schemas/avro``); then the
    repository's top-level ``avro/`` (editable installs).

    Raises:
        FileNotFoundError: when none exists.
    """
    candidates = [
        os.environ.get("SELFHEAL_AVRO_DIR"),
        Path(__file__).with_name("avro"),
        Path(__file__).resolve().parents[2] / "avro",
    ]
    for c in candidates:
        if c and (Path(c) / SCHEMA_FILES[0]).exists():
            return Path(c)
    raise FileNotFoundError(f"no avro/ directory with {SCHEMA_FILES[0]} in {candidates}")


def _single_definitions(schema: Any, seen: set[str] | None = None) -> Any:
    """Copy of an expanded schema where a named type defined again (``Incident.release`` and
    ``Incident.restore_release`` are both a ``ReleaseManifest``) is a reference to its first
    definition, as the Avro specification requires (a name is defined once per schema; also the
    Parsing Canonical Form writes later occurrences as the name)."""
    seen = set() if seen is None else seen
    if isinstance(schema, list):
        return [_single_definitions(s, seen) for s in schema]
    if not isinstance(schema, dict):
        return schema
    t = schema.get("type")
    if t in ("record", "enum", "fixed"):
        name = schema["name"] if "." in schema["name"] or "namespace" not in schema \
            else f"{schema['namespace']}.{schema['name']}"
        if name in seen:
            return name
        seen.add(name)
        if t == "record":
            return {**schema, "fields": [{**f, "type": _single_definitions(f["type"], seen)}
                                         for f in schema["fields"]]}
        return schema
    if t == "array":
        return {**schema, "items": _single_definitions(schema["items"], seen)}
    if t == "map":
        return {**schema, "values": _single_definitions(schema["values"], seen)}
    return schema


def _strip_logical_types(schema: Any) -> Any:
    """Copy of a schema with ``timestamp-millis`` turned into plain ``long`` (same binary form)."""
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-millis":
            return "long"
        return {k: _strip_logical_types(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    return schema


@dataclass(frozen=True)
class SchemaEntry:
    """One known writer schema: its name, fingerprint and parsed forms."""

    name: str
    fingerprint: bytes
    #: parsed, fully expanded, logical types stripped (what encode/decode use)
    parsed: Any
    #: the expanded JSON form (for tests and schema resolution)
    expanded: Any
    #: like ``parsed`` with each boolean read as its raw byte (:func:`_booleans_as_bytes`)
    decode_parsed: Any = None
    #: turns those bytes back into ``bool`` or raises (:func:`_boolean_fixer`); ``None``: no boolean
    fix_booleans: Callable[[Any], Any] | None = None


class AvroCodec:
    """Registry of the ``selfheal.v1`` schemas plus any older writer versions (those shipped in
    ``avro/history/`` and ``extra_writer_schemas``).

    Args:
        avro_dir: directory with the ``.avsc`` files listed in :data:`SCHEMA_FILES`.
        extra_writer_schemas: older (or newer) versions of the contracts, as JSON dicts with the
            same full names, which this reader must still decode; they are resolved to the
            current schema of the same name (Avro schema resolution, fastavro ``reader_schema``).

    Encode/decode rates on one core (fastavro 1.13, 250-byte traces): ~60k traces/s each.
    """

    def __init__(
        self,
        avro_dir: Path | None = None,
        extra_writer_schemas: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self.avro_dir = Path(avro_dir) if avro_dir else default_avro_dir()
        named: dict[str, Any] = {}
        self.current: dict[str, SchemaEntry] = {}
        self.by_fingerprint: dict[bytes, SchemaEntry] = {}
        self._resolve_to: dict[bytes, SchemaEntry] = {}
        for fname in SCHEMA_FILES:
            raw = json.loads((self.avro_dir / fname).read_text())
            # fastavro expands one level of references; registering the expanded form makes the
            # next file's expansion complete (AgentTraceBatch -> AgentTrace -> ReleaseManifest).
            expanded = _single_definitions(
                parse_schema(raw, named_schemas=dict(named), expand=True, _write_hint=False))
            parse_schema(expanded, named_schemas=named)
            entry = self._entry(expanded)
            self.current[entry.name] = entry
            self.by_fingerprint[entry.fingerprint] = entry
        # earlier versions of the contracts (avro/history/<contract>.<n>.avsc, fully expanded): messages
        # their producers sent stay decodable, resolved to the current schema
        history = sorted((self.avro_dir / "history").glob("*.avsc")) if (self.avro_dir / "history").is_dir() else []
        extra_writer_schemas = [*(json.loads(p.read_text()) for p in history), *extra_writer_schemas]
        for raw in extra_writer_schemas:
            # resolve references against the current named types, then register
            expanded = _single_definitions(
                parse_schema(copy.deepcopy(dict(raw)), named_schemas=dict(named), expand=True, _write_hint=False))
            entry = self._entry(expanded)
            if entry.fingerprint in self.by_fingerprint:
                continue
            if entry.name not in self.current:
                raise ValueError(f"extra writer schema {entry.name!r} has no current version to resolve to")
            self.by_fingerprint[entry.fingerprint] = entry
            self._resolve_to[entry.fingerprint] = self.current[entry.name]

    @staticmethod
    def _entry(expanded: Any) -> SchemaEntry:
        name = expanded["name"] if "." in expanded["name"] else f"{expanded['namespace']}.{expanded['name']}"
        canonical = to_parsing_canonical_form(expanded)
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        plain = _strip_logical_types(expanded)
        stripped = parse_schema(plain, _write_hint=False)
        fixer = _boolean_fixer(plain)
        decode_parsed = stripped if fixer is None else parse_schema(_booleans_as_bytes(plain), _write_hint=False)
        return SchemaEntry(name=name, fingerprint=fp, parsed=stripped, expanded=expanded,
                           decode_parsed=decode_parsed, fix_booleans=fixer)

    # ------------------------------------------------------------------ encode
    def header(self, name: str) -> bytes:
        """The 10-byte single-object header for the current schema ``name``.

        Raises:
            KeyError: unknown schema name.
        """
        return MAGIC + self.current[name].fingerprint

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode one record (plain dict, timestamps as epoch ms) with the current schema ``name``.

        Raises:
            KeyError: unknown schema name.
            ValueError, TypeError: the record does not fit the schema (fastavro names the field).
        """
        entry = self.current[name]
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(entry.fingerprint)
        schemaless_writer(buf, entry.parsed, record)
        return buf.getvalue()

    def encode_model(self, model: Contract) -> bytes:
        """Encode a contract model with its own schema (``model.AVRO_NAME``)."""
        return self.encode(type(model).AVRO_NAME, to_avro_dict(model))

    # ------------------------------------------------------------------ decode
    def peek(self, payload: bytes) -> SchemaEntry:
        """Identify the writer schema of a message without decoding the body.

        Raises:
            NotAvroError: no single-object header.
            UnknownSchemaError: unknown fingerprint.
        """
        if len(payload) < HEADER_LEN or payload[:2] != MAGIC:
            raise NotAvroError(
                f"payload of {len(payload)} bytes does not start with the Avro single-object "
                f"marker C3 01 (starts with {payload[:4].hex() or 'nothing'})",
                field="(header)", value=payload[:4].hex(" ") or "(empty)",
            )
        fp = payload[2:HEADER_LEN]
        entry = self.by_fingerprint.get(fp)
        if entry is None:
            raise UnknownSchemaError(
                f"schema fingerprint {fp.hex()} is not a known selfheal.v1 writer schema",
                fingerprint_hex=fp.hex(), field="(schema fingerprint)", value=fp.hex(),
            )
        return entry

    def decode(self, payload: bytes) -> tuple[str, dict[str, Any]]:
        """Decode one message into ``(schema full name, record dict)``.

        Older writer versions are resolved to the current schema of the same name.

        Raises:
            CodecError: a subclass whose ``error_class`` is the dead-letter reason
                (``not_avro``, ``unknown_schema``, ``truncated``, ``invalid_utf8``,
                ``trailing_bytes``, ``unknown_enum``, ``bad_union_branch``, ``negative_length``,
                ``bad_boolean``, ``schema_resolution``, ``malformed_avro``) with ``field`` and
                ``value`` naming where decoding failed. A boolean byte other than 0 or 1 is
                :class:`BadBooleanError` (fastavro alone would read it as ``True``).
        """
        entry = self.peek(payload)
        target = self._resolve_to.get(entry.fingerprint)
        fo = io.BytesIO(payload)
        fo.seek(HEADER_LEN)
        fp_hex = entry.fingerprint.hex()
        try:
            if target is None:
                record = schemaless_reader(fo, entry.decode_parsed, None)
            else:
                record = schemaless_reader(fo, entry.decode_parsed, target.decode_parsed)
        except SchemaResolutionError as exc:
            raise CodecError(f"{entry.name} cannot be resolved to the current schema: {exc}",
                             fingerprint_hex=fp_hex, error_class="schema_resolution") from exc
        except (EOFError, StopIteration, UnicodeDecodeError, ValueError, IndexError, TypeError, OverflowError,
                MemoryError, struct.error) as exc:
            raise self._explain(entry, payload, exc) from exc
        if fo.tell() != len(payload):
            n = len(payload) - fo.tell()
            raise TrailingBytesError(
                f"{entry.name} decoded in {fo.tell()} of {len(payload)} bytes; {n} trailing bytes",
                fingerprint_hex=fp_hex, field="(end of record)", value=str(n),
            )
        fix = (target or entry).fix_booleans
        if fix is not None:
            try:
                fix(record)
            except _BadBoolean as exc:
                where = ".".join(reversed(exc.path))
                raise BadBooleanError(
                    f"{entry.name}.{where}: boolean byte is {exc.byte} (0x{exc.byte:02x}), not 0 or 1",
                    fingerprint_hex=fp_hex, field=where, value=str(exc.byte)) from None
        return (target or entry).name, record

    @staticmethod
    def _explain(entry: SchemaEntry, payload: bytes, exc: BaseException) -> CodecError:
        """The :class:`CodecError` for a failed decode, naming the field (:func:`schemas.diagnose.locate`)."""
        fp_hex = entry.fingerprint.hex()
        diag = locate(entry.expanded, payload[HEADER_LEN:])
        if diag is None:  # the walker decoded it: report fastavro's own complaint
            return CodecError(f"{entry.name} body is not valid Avro: {exc!r}", fingerprint_hex=fp_hex)
        cls = {"truncated": TruncatedError, "invalid_utf8": InvalidUtf8Error}.get(diag.error_class, CodecError)
        return cls(f"{entry.name}.{diag.message}", fingerprint_hex=fp_hex, field=diag.field, value=diag.value,
                   error_class=diag.error_class)


@lru_cache(maxsize=1)
def default_codec() -> AvroCodec:
    """Process-wide codec over :func:`default_avro_dir` (schemas parsed once)."""
    return AvroCodec()


def to_avro_dict(model: BaseModel) -> dict[str, Any]:
    """Model → plain dict for fastavro: datetimes to epoch ms, enums to their symbol, recursively."""
    return _to_avro(model.model_dump(mode="python"))


def _to_avro(value: Any) -> Any:
    from datetime import datetime
    from enum import Enum

    if isinstance(value, dict):
        return {k: _to_avro(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_avro(v) for v in value]
    if isinstance(value, datetime):
        return to_ms(value)
    if isinstance(value, Enum):
        return value.value
    return value


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """Deterministic JSON bytes of a decoded record (dead-letter payloads, content hashes)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return repr(value)
    return str(value)


__all__ = [
    "HEADER_LEN",
    "MAGIC",
    "AvroCodec",
    "BadBooleanError",
    "CodecError",
    "InvalidUtf8Error",
    "NotAvroError",
    "TrailingBytesError",
    "TruncatedError",
    "UnknownSchemaError",
    "canonical_json",
    "default_codec",
    "from_ms",
    "to_avro_dict",
]
