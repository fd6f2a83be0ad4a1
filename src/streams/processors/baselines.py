"""Layered online baselines: one row of state per slice, columnar (numpy), updated per batch.

Slices and layers
-----------------
A *slice* is a subset of traffic with its own baseline. Layers (configurable, see
``Settings.layers``) and their key parts:

==========================  ======================================  =================
layer                       key                                     parent (prior)
==========================  ======================================  =================
``tenant``                  tenant                                  none
``tenant_cohort``           tenant, cohort                          none
``tenant_workflow``         tenant, workflow                        none
``tenant_cohort_workflow``  tenant, cohort, workflow                none
``release``                 tenant, cohort, workflow, release_id    tenant_cohort_workflow
==========================  ======================================  =================

A new ``release`` slice starts from its parent's baseline (the hypothesis under test is "the new
release behaves like what it replaces"), so a regression is detectable from its first traces.
Other slices warm up on their own data first (cohorts legitimately differ).
There is no all-tenants baseline, because a worker only sees the tenants of its partitions:
platform-wide changes are recognised from alarms of one metric group in many tenants by
:class:`streams.processors.incidents.IncidentManager` (``platform_window_s``).

Metrics
-------
Every metric is declared once in :mod:`streams.processors.metrics` (family, group, direction,
how it is read and on which scale); the families' columns here are derived from it. Per family
the baseline keeps:

- ``bernoulli``: a 0/1 outcome per trace (failure, escalation, policy block, tool failure, ...),
  and the *tail* metrics ``latency_p95``/``latency_p99``: 1 when latency exceeds the baseline's
  95th/99th percentile bin edge, so a tail regression is a rate increase (quantile-aware).
- ``gaussian``: a per-trace value after a variance-stabilising transform (log latency, log1p
  tokens, log cost, logit confidence), standardised with the baseline mean and variance and
  winsorised; the baseline also tracks the log-moment-generating function of the standardised
  value, which makes the CUSUM increment an exact likelihood ratio for any shape of data.
- ``poisson``: counts that arrive on the feedback stream against trace exposure (corrections,
  unsafe-recommendation feedback per trace). Feedback is a *delayed label*: traces and their
  feedback are counted in event-time buckets of the trace (a ring of ``N_BUCKETS`` per slice,
  coarsened when full, folded into the baseline once their feedback is due); each bucket's
  feedback so far is compared with the baseline rate x traces x the learned delay CDF at its age
  (see :mod:`streams.processors.drift.delayed`).
- ``categorical``: the input mix (workflow × intent), hashed into ``N_CAT`` buckets.

Baselines are exponentially weighted with a half-life in traces (``baseline_half_life_traces``),
merged per batch (weights of the batch's samples equal; exact decay of the old state), and frozen
per metric group while an incident on the slice is open, so a regression is never absorbed.

State layout
------------
Each state array has one row per slice (capacity doubles as slices appear). A row serialises
(:meth:`SliceStore.row_bytes`) to the value written to the faust changelog table, and
deserialises into any row (:meth:`SliceStore.load_row`, :func:`decode_row`). Two layouts, told
apart by the 4-byte magic that starts the value:

- ``SHB2`` (written now, :data:`ROW_MAGIC_SPARSE`): header (magic, ``ROW_COLS`` as uint32), a
  bitmap of ``ROW_COLS`` bits (:data:`ROW_MASK_BYTES` bytes, ``numpy.packbits`` order: column
  ``i`` is bit ``7 - i % 8`` of byte ``i // 8``) marking the columns whose float64 differs bit for
  bit from its initial value (:data:`ROW_INIT`), then those columns' values, little-endian
  float64, in column order. Most of a row is at its initial value (no feedback yet: the Poisson
  and delayed-label ring columns; CUSUMs at zero; empty histogram bins), so a row is 0.6-1.5 KB
  instead of 4 KB (BENCHMARKS.md, issue 16). Lossless: bit-exact comparison keeps ``-0.0``,
  ``inf`` and NaN payloads.
- ``SHB1`` (written before; still read, so a changelog written by an older worker restores):
  header, then all ``ROW_COLS`` float64 (``ROW_BYTES`` bytes in all).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.processors.metrics import (
    BERNOULLI,
    BERNOULLI_GROUP,
    BERNOULLI_INDEX,
    GAUSSIAN,
    GAUSSIAN_DIRECTION,
    GAUSSIAN_GROUP,
    GROUPS,
    INPUT_MIX_GROUP,
    N_BERNOULLI,
    N_GAUSSIAN,
    N_POISSON,
    POISSON,
    POISSON_GROUP,
)

#: latency histogram: log-spaced bins from 1 ms to 1 h (ratio 1.178 per bin; quantiles are
#: taken at bin edges and the tail mass above the chosen edge is the exact baseline rate).
N_HIST = 96
HIST_LO_MS, HIST_HI_MS = 1.0, 3_600_000.0
HIST_LOG_LO = np.log(HIST_LO_MS)
HIST_LOG_STEP = (np.log(HIST_HI_MS) - np.log(HIST_LO_MS)) / N_HIST
HIST_EDGES_MS = np.exp(HIST_LOG_LO + HIST_LOG_STEP * np.arange(N_HIST + 1))
N_CAT = 16
#: ring of event-time buckets per slice for label-delayed metrics (corrections arrive after traces)
N_BUCKETS = 32
#: ticks of traces per slice held out of the ring until the feedback clock reaches them
#: (``streams.processors.drift.delayed``): the trace consumer may run this many ticks ahead of the
#: feedback clock (192 ticks = 2 h of event time at the default 37.5 s tick)
N_AHEAD = 192

LAYER_PARTS = {
    "tenant": (True, False, False, False),
    "tenant_cohort": (True, True, False, False),
    "tenant_workflow": (True, False, True, False),
    "tenant_cohort_workflow": (True, True, True, False),
    "release": (True, True, True, True),
}
LAYER_PARENT = {"release": "tenant_cohort_workflow"}


def slice_key(layer: str, tenant: str, cohort: str | None, workflow: str | None, release: str | None) -> str:
    """Canonical slice key, e.g. ``release|acme|cardiology|soap_note|rel-2``; ``*`` = all."""
    return f"{layer}|{tenant}|{cohort or '*'}|{workflow or '*'}|{release or '*'}"


def parse_slice_key(key: str) -> tuple[str, str, str | None, str | None, str | None]:
    """Inverse of :func:`slice_key`: ``(layer, tenant, cohort, workflow, release)``.

    Raises:
        ValueError: the key does not have five ``|``-separated parts.
    """
    parts = key.split("|")
    if len(parts) != 5:
        raise ValueError(f"slice key {key!r} must have 5 '|'-separated parts")
    layer, tenant, c, w, r = parts
    return layer, tenant, None if c == "*" else c, None if w == "*" else w, None if r == "*" else r


def hist_bins(latency_ms: np.ndarray) -> np.ndarray:
    """Histogram bin index (int) of each latency in ms; values outside [1 ms, 1 h] are clipped."""
    idx = np.floor((np.log(np.maximum(latency_ms, HIST_LO_MS)) - HIST_LOG_LO) / HIST_LOG_STEP)
    return np.clip(idx, 0, N_HIST - 1).astype(np.intp)


#: Per-row state fields: name -> (columns, initial value). Order is the serialisation order.
#: b_* Bernoulli, g_* Gaussian, p_* Poisson (a column per metric of the family, catalogue order),
#: c_* categorical, i_* incident groups.
FIELDS: dict[str, tuple[int, float]] = {
    "count": (1, 0.0),  # traces applied, plus the pseudo-count of an inherited baseline
    "own": (1, 0.0),  # traces of this slice actually seen
    "born": (1, 0.0),  # the parent slice's traces when this slice first appeared (release slices)
    "last_offset": (1, -1.0),  # last source offset applied (replay guard), exact in float64 below 2**53
    "partition": (1, -1.0),
    "weight": (1, 0.0),  # EW effective sample size of the baseline
    "b_rate": (N_BERNOULLI, 0.0),  # baseline rate
    "b_w": (N_BERNOULLI, 0.0),  # EW weight per Bernoulli metric (a tail indicator is missing while its stratum is cold)
    "b_s": (2 * N_BERNOULLI, 0.0),  # CUSUM statistics: tuned for rate_shift, then for rate_shift_large
    "b_n": (2 * N_BERNOULLI, 0.0),  # samples since each CUSUM last left zero (change-point estimate)
    "b_k": (2 * N_BERNOULLI, 0.0),  # successes since then
    "g_mean": (N_GAUSSIAN, 0.0),
    "g_var": (N_GAUSSIAN, 0.0),
    "g_w": (N_GAUSSIAN, 0.0),  # EW weight per Gaussian metric (confidence may be absent)
    "g_mgf_u": (N_GAUSSIAN, float(np.exp(0.5))),  # EW mean of exp(+delta * clip(z)): the up detector's log-MGF
    "g_mgf_d": (N_GAUSSIAN, float(np.exp(0.5))),  # EW mean of exp(-delta * clip(z))
    "g_su": (N_GAUSSIAN, 0.0),  # upward CUSUM
    "g_sd": (N_GAUSSIAN, 0.0),  # downward CUSUM
    "g_nu": (N_GAUSSIAN, 0.0),
    "g_xu": (N_GAUSSIAN, 0.0),  # sum of transformed values since up change point
    "g_nd": (N_GAUSSIAN, 0.0),
    "g_xd": (N_GAUSSIAN, 0.0),
    "p_num": (N_POISSON, 0.0),  # EW count of events (corrections)
    "p_den": (N_POISSON, 0.0),  # EW exposure (traces)
    "p_s": (N_POISSON, 0.0),
    "p_n": (N_POISSON, 0.0),  # folded exposure since the change point
    "p_k": (N_POISSON, 0.0),  # folded events since the change point
    "p_t": (N_POISSON, 0.0),  # folded traces since the change point
    "p_cp_ms": (N_POISSON, float("inf")),  # trace time of the change point the CUSUM holds (inf: none)
    "p_reset_ms": (1, -1.0),  # buckets ending before this trace time belong to an alarmed episode
    "p_fold_ms": (1, -1.0),  # latest trace time folded (feedback for older traces is late)
    "pb_id": (N_BUCKETS, -1.0),  # first tick bucket (trace ms // bucket_ms) of each ring slot (-1 empty)
    "pb_span": (N_BUCKETS, 1.0),  # tick buckets it covers (coarsened buckets cover several)
    "pb_lo": (N_BUCKETS, 0.0),  # earliest trace event time in it, ms
    "pb_hi": (N_BUCKETS, 0.0),  # latest trace event time in it, ms
    "pb_n": (N_BUCKETS, 0.0),  # traces in the slot's bucket
    "pb_k": (N_BUCKETS * N_POISSON, 0.0),  # feedback events in the slot's bucket, slot-major
    "hist": (N_HIST, 0.0),  # EW latency histogram (weights)
    "c_base": (N_CAT, 0.0),  # EW input-mix distribution (weights)
    "c_win": (N_CAT, 0.0),  # current window counts
    "i_open": (len(GROUPS), 0.0),  # 1 while an incident of the group is open on this slice
    # appended fields (a row written before they existed is a prefix of today's: decode_row pads it)
    # trace event time (ms) of the change point each detector column holds (the first trace after its
    # CUSUM last left zero; -1: none), columns as b_s then g_su then g_sd: an alarm's change point in
    # time whatever batch it lies in
    "cp_ms": (2 * N_BERNOULLI + 2 * N_GAUSSIAN, -1.0),
    "c_win_ms": (1, -1.0),  # event time (ms) of the current input-mix window's first evidence trace (-1: not yet)
    # the label-delay ring holds traces up to its partition's feedback clock; later ticks wait here
    "pa_tick": (1, -1.0),  # tick bucket up to which the ring holds this slice's traces (-1: none yet)
    "pa_n": (N_AHEAD, 0.0),  # traces held of tick pa_tick + 1 + i, i = 0 .. N_AHEAD - 1
}
ROW_COLS = sum(c for c, _ in FIELDS.values())
#: first column of each field in a row (the serialisation order of :data:`FIELDS`)
FIELD_COLUMN: dict[str, int] = {name: int(sum(c for c, _ in list(FIELDS.values())[:i]))
                                for i, name in enumerate(FIELDS)}
#: columns of a row before the change-point times (``cp_ms``, ``c_win_ms``) were appended: such rows still load
ROW_COLS_BEFORE_CP = FIELD_COLUMN["cp_ms"]
ROW_HEADER = struct.Struct("<4sI")
#: dense layout (every column), read for changelogs written before the sparse one
ROW_MAGIC = b"SHB1"
#: sparse layout (bitmap of the columns not at their initial value, then their values), written now
ROW_MAGIC_SPARSE = b"SHB2"
#: size of a dense (``SHB1``) row, and the upper bound of a sparse one minus its bitmap
ROW_BYTES = ROW_HEADER.size + 8 * ROW_COLS
ROW_MASK_BYTES = (ROW_COLS + 7) // 8
#: a fresh row's values (the initial values of :data:`FIELDS`), float64, ``ROW_COLS`` long
ROW_INIT = np.concatenate([np.full(c, init, dtype="<f8") for c, init in FIELDS.values()])
ROW_INIT.flags.writeable = False


def decode_row(data: bytes) -> np.ndarray:
    """The ``ROW_COLS`` float64 values of a serialised row, either layout (module docstring).

    Raises:
        ValueError: neither layout: unknown magic, another column count, or a length that does
            not match (names what was found and what was expected).
    """
    if len(data) < ROW_HEADER.size:
        raise ValueError(f"baseline row has {len(data)} B, shorter than its {ROW_HEADER.size}-byte header")
    magic, cols = ROW_HEADER.unpack_from(data)
    if cols > ROW_COLS or cols < ROW_COLS_BEFORE_CP or magic not in (ROW_MAGIC, ROW_MAGIC_SPARSE):
        raise ValueError(f"baseline row has layout {magic!r}/{cols} cols; expected {ROW_MAGIC_SPARSE!r} or "
                         f"{ROW_MAGIC!r} with {ROW_COLS} cols")
    # a row written before fields were appended to FIELDS holds their prefix: the rest is initial
    values = ROW_INIT.copy()
    if magic == ROW_MAGIC:
        dense = ROW_HEADER.size + 8 * cols
        if len(data) != dense:
            raise ValueError(f"dense baseline row has {len(data)} B; expected {dense} B")
        values[:cols] = np.frombuffer(data, dtype="<f8", offset=ROW_HEADER.size)
        return values
    mask_bytes = (cols + 7) // 8
    start = ROW_HEADER.size + mask_bytes
    if len(data) < start:
        raise ValueError(f"sparse baseline row has {len(data)} B, shorter than header and bitmap ({start} B)")
    mask = np.zeros(ROW_COLS, dtype=bool)
    mask[:cols] = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=mask_bytes, offset=ROW_HEADER.size),
                                count=cols).astype(bool)
    n = int(mask.sum())
    if len(data) != start + 8 * n:
        raise ValueError(f"sparse baseline row has {len(data)} B; its bitmap names {n} columns, so "
                         f"{start + 8 * n} B were expected")
    values[mask] = np.frombuffer(data, dtype="<f8", offset=start)
    return values


@dataclass(slots=True)
class SliceInfo:
    """Identity of one slice row."""

    key: str
    layer: str
    tenant_id: str
    cohort: str | None
    workflow: str | None
    release_id: str | None
    partition: int


class SliceStore:
    """Columnar state of all slices a worker owns.

    ``self.f[name]`` is a ``(capacity, columns)`` float64 array per field of :data:`FIELDS`,
    all rows of one slice at the same index. ``index`` maps slice key → row.
    Memory: ``8 * ROW_COLS`` bytes per slice (see BENCHMARKS.md for bytes per slice-metric).
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self.n = 0
        self.f: dict[str, np.ndarray] = {name: np.full((capacity, cols), init) for name, (cols, init) in FIELDS.items()}
        self.index: dict[str, int] = {}
        self.info: list[SliceInfo] = []
        self.dirty: set[int] = set()

    def __len__(self) -> int:
        return self.n

    def _grow(self) -> None:
        new = self.capacity * 2
        for name, (cols, init) in FIELDS.items():
            arr = np.full((new, cols), init)
            arr[: self.capacity] = self.f[name]
            self.f[name] = arr
        self.capacity = new

    def add(self, info: SliceInfo) -> int:
        """Append a fresh row for ``info`` (initial state) and return its index.

        Raises:
            KeyError: the key already has a row.
        """
        if info.key in self.index:
            raise KeyError(f"slice {info.key!r} already has a row")
        if self.n == self.capacity:
            self._grow()
        row = self.n
        self.n += 1
        self.index[info.key] = row
        self.info.append(info)
        self.f["partition"][row, 0] = info.partition
        return row

    def copy_baseline(self, src: int, dst: int, weight: float) -> None:
        """Seed row ``dst``'s baselines from row ``src`` with effective sample size ``weight``.

        Only baselines are copied (rates, means, variances, histogram, mix), not detector or
        incident state; the copy counts as ``weight`` traces of evidence.
        """
        f = self.f
        w = min(weight, float(f["weight"][src, 0]))
        if w <= 0:
            return
        for name in ("b_rate", "g_mean", "g_var", "c_base"):
            f[name][dst] = f[name][src]
        scale = w / max(float(f["weight"][src, 0]), 1e-12)
        f["hist"][dst] = f["hist"][src] * scale
        f["c_base"][dst] = f["c_base"][src] * scale
        f["g_w"][dst] = np.minimum(f["g_w"][src], w)
        f["b_w"][dst] = np.minimum(f["b_w"][src], w)
        f["p_num"][dst] = f["p_num"][src] * scale
        f["p_den"][dst] = f["p_den"][src] * scale
        f["weight"][dst, 0] = w
        f["count"][dst, 0] = w

    def row_bytes(self, row: int) -> bytes:
        """Serialise one row (changelog value) in the sparse ``SHB2`` layout (module docstring)."""
        return self.rows_bytes([row])[0]

    def rows_bytes(self, rows: Sequence[int]) -> list[bytes]:
        """:meth:`row_bytes` of many rows at once: one gather per field, one bit-exact comparison
        with :data:`ROW_INIT` and one ``packbits`` for all rows; per row only the concatenation."""
        if not len(rows):
            return []
        idx = np.asarray(rows, dtype=np.intp)
        body = np.concatenate([self.f[name][idx] for name in FIELDS], axis=1).astype("<f8", copy=False)
        changed = body.view(np.uint64) != ROW_INIT.view(np.uint64)
        masks = np.packbits(changed, axis=1)
        values = body[changed]  # row-major: each row's changed columns, in column order
        ends = np.cumsum(changed.sum(axis=1)) * 8
        flat = values.tobytes()
        head = ROW_HEADER.pack(ROW_MAGIC_SPARSE, ROW_COLS)
        out, start = [], 0
        for mask, end in zip(masks, ends.tolist(), strict=True):
            out.append(head + mask.tobytes() + flat[start:end])
            start = end
        return out

    def load_row(self, row: int, data: bytes) -> None:
        """Overwrite row ``row`` with serialised state (either layout, :func:`decode_row`).

        Raises:
            ValueError: the bytes are not a row of this layout (magic, column count or length).
        """
        values = decode_row(data)
        pos = 0
        for name, (cols_, _) in FIELDS.items():
            self.f[name][row] = values[pos : pos + cols_]
            pos += cols_

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the slices of revoked partitions (they are reloaded from the changelog if they
        come back). Returns the number of rows dropped. Rows are compacted in place."""
        keep = [i for i in range(self.n) if self.info[i].partition not in partitions]
        dropped = self.n - len(keep)
        if not dropped:
            return 0
        idx = np.asarray(keep, dtype=np.intp)
        for name in FIELDS:
            arr = self.f[name]
            arr[: len(keep)] = arr[idx]
            arr[len(keep) : self.n] = FIELDS[name][1]
        self.info = [self.info[i] for i in keep]
        self.index = {info.key: i for i, info in enumerate(self.info)}
        self.n = len(keep)
        self.dirty = {i for i in range(self.n) if False}
        return dropped

    def restart_detectors(self, row: int, group: int) -> None:
        """Set every CUSUM of metric group ``group`` on ``row`` back to zero (statistic and
        change-point counts): an incident marked false positive starts no evidence over."""
        f = self.f
        b = np.concatenate([group == BERNOULLI_GROUP] * 2)
        g = group == GAUSSIAN_GROUP
        p = group == POISSON_GROUP
        for name in ("b_s", "b_n", "b_k"):
            f[name][row, b] = 0.0
        f["cp_ms"][row, np.concatenate([b, g, g])] = -1.0
        for name in ("g_su", "g_sd", "g_nu", "g_xu", "g_nd", "g_xd"):
            f[name][row, g] = 0.0
        for name in ("p_s", "p_n", "p_k"):
            f[name][row, p] = 0.0
        self.dirty.add(row)

    def rebaseline(self, row: int, group: int, retain_traces: float) -> None:
        """The slice adopts the level of the traffic that follows: the baselines of metric group
        ``group`` on ``row`` keep at most ``retain_traces`` traces of weight (rates and means are
        kept, their weight shrinks; the latency histogram and input mix are scaled down likewise),
        the group's CUSUMs restart, and the slice warms up again (``count = 0``: its detectors
        are disarmed until ``warmup_traces`` new traces have been learnt, so the new level is
        learnt before anything is compared with it). Used by ``accept_new_baseline``.

        With ``retain_traces = warmup/10`` the baseline after a warm-up of new traffic is about
        91 % the new level (exponential weighting, ``weight_old / (weight_old + warmup)``).
        """
        f = self.f
        bm = group == BERNOULLI_GROUP
        f["b_w"][row, bm] = np.minimum(f["b_w"][row, bm], retain_traces)
        gm = group == GAUSSIAN_GROUP
        f["g_w"][row, gm] = np.minimum(f["g_w"][row, gm], retain_traces)
        pm = group == POISSON_GROUP
        den = f["p_den"][row, pm]
        scale = np.minimum(1.0, retain_traces / np.maximum(den, 1e-12))
        f["p_den"][row, pm] = den * scale
        f["p_num"][row, pm] = f["p_num"][row, pm] * scale
        scaled = (["hist"] if bm[BERNOULLI_INDEX["latency_p95"]] else []) + (["c_base"] if group == INPUT_MIX_GROUP
                                                                             else [])
        for name in scaled:
            tot = float(f[name][row].sum())
            if tot > retain_traces:
                f[name][row] *= retain_traces / tot
        self.restart_detectors(row, group)
        f["count"][row, 0] = 0.0

    def group_statistic(self, row: int, group: int) -> float:
        """Largest CUSUM statistic (nats) among the detectors of metric group ``group`` on ``row``."""
        f = self.f
        vals = [0.0]
        b = group == BERNOULLI_GROUP
        g = group == GAUSSIAN_GROUP
        p = group == POISSON_GROUP
        if b.any():
            vals.append(float(f["b_s"][row, np.concatenate([b, b])].max()))
        up = g & (GAUSSIAN_DIRECTION >= 0)  # only the sides that can alarm
        dn = g & (GAUSSIAN_DIRECTION <= 0)
        if up.any():
            vals.append(float(f["g_su"][row, up].max()))
        if dn.any():
            vals.append(float(f["g_sd"][row, dn].max()))
        if p.any():
            vals.append(float(f["p_s"][row, p].max()))
        return max(vals)

    def snapshot_rows(self, rows: list[int], at_ms: int) -> list[dict[str, Any]]:
        """Long-format baseline snapshot of ``rows``: one dict per slice and metric (the
        ``baseline_snapshots`` table's columns; ``snapshot_at`` in epoch ms)."""
        f = self.f
        out: list[dict[str, Any]] = []
        for row in rows:
            info = self.info[row]
            h = f["hist"][row]
            tot = float(h.sum())
            q = {}
            if tot > 0:
                cdf = np.cumsum(h) / tot
                for name, level in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
                    q[name] = float(HIST_EDGES_MS[min(int(np.searchsorted(cdf, level)) + 1, N_HIST)])
            base = {"tenant_id": info.tenant_id, "slice_key": info.key, "layer": info.layer,
                    "cohort": info.cohort or "", "workflow": info.workflow or "", "release_id": info.release_id or "",
                    "snapshot_at": at_ms, "traces": int(f["own"][row, 0]), "weight": float(f["weight"][row, 0])}
            none_q = {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
            for i, m in enumerate(BERNOULLI):
                out.append(base | none_q | {"metric": m.name, "family": m.family, "value": float(f["b_rate"][row, i]),
                                            "variance": 0.0,
                                            "cusum": float(max(f["b_s"][row, i], f["b_s"][row, N_BERNOULLI + i])),
                                            "frozen": bool(f["i_open"][row, BERNOULLI_GROUP[i]])}
                           | (q if m.group == "latency" and q else {}))
            for i, m in enumerate(GAUSSIAN):
                out.append(base | none_q | {"metric": m.name, "family": m.family,
                                            "value": m.scale.from_scale(float(f["g_mean"][row, i])),
                                            "variance": float(f["g_var"][row, i]),
                                            "cusum": float(max(f["g_su"][row, i], f["g_sd"][row, i])),
                                            "frozen": bool(f["i_open"][row, GAUSSIAN_GROUP[i]])}
                           | (q if m.group == "latency" and q else {}))
            for i, m in enumerate(POISSON):
                out.append(base | none_q | {"metric": m.name, "family": m.family,
                                            "value": float(f["p_num"][row, i] / max(f["p_den"][row, i], 1e-12)),
                                            "variance": 0.0, "cusum": float(f["p_s"][row, i]),
                                            "frozen": bool(f["i_open"][row, POISSON_GROUP[i]])})
        return out

    def snapshot(self, row: int) -> dict[str, Any]:
        """Human-readable baseline of one slice (for snapshots to ClickHouse and debugging)."""
        f = self.f
        info = self.info[row]
        out: dict[str, Any] = {"slice_key": info.key, "count": int(f["count"][row, 0]),
                               "weight": float(f["weight"][row, 0])}
        for i, m in enumerate(BERNOULLI):
            out[m.name] = float(f["b_rate"][row, i])
        for i, m in enumerate(GAUSSIAN):
            out[m.name + "_mean"] = float(f["g_mean"][row, i])
            out[m.name + "_var"] = float(f["g_var"][row, i])
        for i, m in enumerate(POISSON):
            out[m.name] = float(f["p_num"][row, i] / max(f["p_den"][row, i], 1e-12))
        h = f["hist"][row]
        tot = h.sum()
        if tot > 0:
            cdf = np.cumsum(h) / tot
            for q in (0.5, 0.95, 0.99):
                out[f"latency_q{int(q * 100)}_ms"] = float(HIST_EDGES_MS[min(int(np.searchsorted(cdf, q)) + 1, N_HIST)])
        return out

