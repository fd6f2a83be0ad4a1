"""Explain why an Avro body does not decode: the field path, the value at fault and a reason.

fastavro's fast reader raises ``EOFError``, ``IndexError`` or ``UnicodeDecodeError`` without
saying *where*. For a dead letter the operator needs the field, so on the (rare) failure path
:func:`locate` walks the body again with a small pure-Python reader of the Avro binary encoding
(Apache Avro 1.11 specification, "Binary Encoding": zig-zag varints, length-prefixed strings and
bytes, blocked arrays and maps, union branch index, enum symbol index) that keeps the path of the
field it is in. It never runs on valid input, so it is written for clarity, not speed.

Example: an ``AgentTrace`` whose ``outcome`` enum index is 9 gives
``Diagnosis("unknown_enum", "outcome", "9", "enum Outcome has no symbol with index 9 ...")``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

#: longest varint of a 64-bit long (10 bytes of 7 bits)
_MAX_VARINT = 10


@dataclass(frozen=True)
class Diagnosis:
    """Where and why decoding failed.

    Attributes:
        error_class: dead-letter reason (``truncated``, ``invalid_utf8``, ``unknown_enum``,
            ``bad_union_branch``, ``negative_length``, ``bad_boolean``, ``malformed_avro``).
        field: dotted path of the field at fault (``tool_calls.2.status``), ``(record)`` at top level.
        value: the offending raw value, short (``"9"``, ``"ff fe 41"``, ``"-3"``) or ``None``.
        message: one sentence for the dead-letter envelope.
    """

    error_class: str
    field: str
    value: str | None
    message: str


class _Fail(Exception):
    def __init__(self, error_class: str, value: str | None, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.value = value


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.buf = body
        self.pos = 0
        self.path: list[str] = []

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.buf) - self.pos:
            raise _Fail("truncated", None, f"{what} needs {n} bytes but only {len(self.buf) - self.pos} remain")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def long(self, what: str = "varint") -> int:
        shift = result = 0
        for i in range(_MAX_VARINT):
            if self.pos >= len(self.buf):
                raise _Fail("truncated", None, f"{what} ends early")
            b = self.buf[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7
            if i == _MAX_VARINT - 1:
                break
        raise _Fail("malformed_avro", None, f"{what} is longer than {_MAX_VARINT} bytes")

    def length(self, what: str) -> int:
        n = self.long(what)
        if n < 0:
            raise _Fail("negative_length", str(n), f"{what} has negative length {n}")
        return n

    def plausible(self, n: int, items: Any, what: str) -> None:
        # every item of a non-null type takes at least one byte: a count beyond the bytes left
        # is a corrupt or truncated body (and would otherwise loop for a very long time)
        if items != "null" and n > len(self.buf) - self.pos:
            left = len(self.buf) - self.pos
            raise _Fail("truncated", str(n), f"{what} announces {n} items but only {left} bytes remain")

    # ------------------------------------------------------------------ walking
    def read(self, schema: Any, named: dict[str, Any]) -> Any:
        if isinstance(schema, str):
            if schema in named:
                return self.read(named[schema], named)
            return self.primitive(schema)
        if isinstance(schema, list):
            idx = self.long("union branch index")
            if not 0 <= idx < len(schema):
                raise _Fail("bad_union_branch", str(idx),
                            f"union branch index {idx} outside 0..{len(schema) - 1}")
            return self.read(schema[idx], named)
        t = schema["type"]
        if t == "record":
            name = schema.get("name", "")
            named.setdefault(name, schema)
            if "namespace" in schema and "." not in name:
                named.setdefault(f"{schema['namespace']}.{name}", schema)
            for f in schema["fields"]:
                self.path.append(f["name"])
                self.read(f["type"], named)
                self.path.pop()
            return None
        if t == "enum":
            named.setdefault(schema.get("name", ""), schema)
            idx = self.long("enum index")
            symbols = schema["symbols"]
            if not 0 <= idx < len(symbols):
                raise _Fail("unknown_enum", str(idx),
                            f"enum {schema.get('name')} has no symbol with index {idx} "
                            f"(known: {', '.join(symbols)})")
            return symbols[idx]
        if t == "array":
            i = 0
            while True:
                n = self.long("array block count")
                if n == 0:
                    return None
                if n < 0:
                    n = -n
                    self.length("array block size")
                self.plausible(n, schema["items"], "array")
                for _ in range(n):
                    self.path.append(str(i))
                    self.read(schema["items"], named)
                    self.path.pop()
                    i += 1
        if t == "map":
            while True:
                n = self.long("map block count")
                if n == 0:
                    return None
                if n < 0:
                    n = -n
                    self.length("map block size")
                self.plausible(n, "string", "map")
                for _ in range(n):
                    key = self.string("map key")
                    self.path.append(key)
                    self.read(schema["values"], named)
                    self.path.pop()
        if t == "fixed":
            named.setdefault(schema.get("name", ""), schema)
            return self.take(int(schema["size"]), "fixed")
        return self.primitive(t)

    def string(self, what: str = "string") -> str:
        raw = self.take(self.length(f"{what} length"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[max(exc.start - 2, 0) : exc.end + 2]
            raise _Fail("invalid_utf8", bad.hex(" "),
                        f"{what} is not UTF-8 at byte {exc.start} of {len(raw)}: {exc.reason}") from None

    def primitive(self, t: str) -> Any:
        if t == "null":
            return None
        if t == "boolean":
            b = self.take(1, "boolean")[0]
            if b > 1:
                raise _Fail("bad_boolean", str(b), f"boolean byte is {b}, not 0 or 1")
            return bool(b)
        if t in ("int", "long"):
            return self.long(t)
        if t == "float":
            return struct.unpack("<f", self.take(4, "float"))[0]
        if t == "double":
            return struct.unpack("<d", self.take(8, "double"))[0]
        if t == "bytes":
            return self.take(self.length("bytes length"), "bytes")
        if t == "string":
            return self.string()
        raise _Fail("malformed_avro", None, f"unknown Avro type {t!r} in the writer schema")


def locate(schema: Any, body: bytes) -> Diagnosis | None:
    """Walk ``body`` (Avro binary, no header) with the *expanded* writer ``schema`` (JSON form).

    Returns the first problem found, or ``None`` when the body decodes completely (the caller
    then reports its own error, e.g. trailing bytes).
    """
    r = _Reader(body)
    try:
        r.read(schema, {})
    except _Fail as exc:
        return Diagnosis(exc.error_class, ".".join(r.path) or "(record)", exc.value,
                         f"{'.'.join(r.path) or 'record'}: {exc} (byte {r.pos} of the body)")
    except RecursionError:
        return Diagnosis("malformed_avro", ".".join(r.path) or "(record)", None, "schema nesting too deep")
    return None
