"""SliceStore.rows_bytes (the changelog values of many slices at once) gives, row for row, the
bytes of SliceStore.row_bytes, and they load back into the same state; the sparse layout (SHB2)
is bit-exact, an older worker's dense rows (SHB1) still load, and a malformed value is refused."""

import struct

import numpy as np
import pytest

from streams.processors.baselines import (
    FIELD_COLUMN,
    FIELDS,
    ROW_BYTES,
    ROW_COLS,
    ROW_COLS_BEFORE_CP,
    ROW_HEADER,
    ROW_INIT,
    ROW_MAGIC,
    ROW_MASK_BYTES,
    SliceInfo,
    SliceStore,
    decode_row,
)


def _store(rows: int = 6) -> SliceStore:
    store = SliceStore(capacity=4)
    for i in range(rows):  # grows past its capacity
        store.add(SliceInfo(f"tenant|t{i}", "tenant", f"t{i}", None, None, None, i % 3))
    return store


def _row(store: SliceStore, row: int) -> np.ndarray:
    return np.concatenate([store.f[name][row] for name in FIELDS])


def test_rows_bytes_equal_row_bytes_and_load_back():
    store = _store()
    rng = np.random.default_rng(0)
    for name in FIELDS:
        store.f[name][: store.n] = rng.normal(size=store.f[name][: store.n].shape)
    rows = [4, 0, 2]
    assert store.rows_bytes(rows) == [store.row_bytes(r) for r in rows]
    assert store.rows_bytes([]) == []
    other = SliceStore()
    other.add(SliceInfo("tenant|x", "tenant", "x", None, None, None, 0))
    other.load_row(0, store.rows_bytes([4])[0])
    for name in FIELDS:
        assert np.array_equal(other.f[name][0], store.f[name][4])


def test_sparse_rows_hold_only_changed_columns_bit_exact():
    store = _store(3)
    # row 0 stays fresh; row 1: special values in a few columns; row 2: a value equal to another
    # field's initial value (inf) and -0.0 where the initial value is 0.0
    store.f["hist"][1, 5] = -0.0
    store.f["p_cp_ms"][1, 0] = 12.5  # initial inf
    store.f["g_mean"][1, 2] = np.nan
    store.f["count"][2, 0] = np.inf
    store.f["pb_id"][2, 31] = 7.0
    fresh, special, other = store.rows_bytes([0, 1, 2])
    assert len(fresh) == ROW_HEADER.size + ROW_MASK_BYTES + 8  # only "partition" differs from its initial -1
    assert len(special) == ROW_HEADER.size + ROW_MASK_BYTES + 8 * 4
    assert len(other) == ROW_HEADER.size + ROW_MASK_BYTES + 8 * 3
    for row, data in enumerate((fresh, special, other)):
        assert decode_row(data).view(np.uint64).tolist() == _row(store, row).view(np.uint64).tolist()


def test_dense_rows_of_an_older_worker_still_load():
    store = _store(2)
    rng = np.random.default_rng(1)
    for name in FIELDS:
        store.f[name][1] = rng.normal(size=store.f[name][1].shape)
    dense = ROW_HEADER.pack(ROW_MAGIC, ROW_COLS) + _row(store, 1).astype("<f8").tobytes()
    assert len(dense) == ROW_BYTES
    store.load_row(0, dense)
    np.testing.assert_array_equal(_row(store, 0), _row(store, 1))
    assert store.row_bytes(0) == store.row_bytes(1)  # and it is written back in the sparse layout


def test_rows_written_before_the_change_point_times_still_load():
    """A row of a worker that had no ``cp_ms``/``c_win_ms`` columns (appended at the end of FIELDS)
    holds today's prefix: it loads, dense or sparse, with those columns at their initial value."""
    store = _store(2)
    rng = np.random.default_rng(2)
    for name in FIELDS:
        store.f[name][1] = rng.normal(size=store.f[name][1].shape)
    old = _row(store, 1)[:ROW_COLS_BEFORE_CP]
    dense = ROW_HEADER.pack(ROW_MAGIC, ROW_COLS_BEFORE_CP) + old.astype("<f8").tobytes()
    mask = np.packbits(np.ones(ROW_COLS_BEFORE_CP, dtype=bool)).tobytes()
    sparse = ROW_HEADER.pack(b"SHB2", ROW_COLS_BEFORE_CP) + mask + old.astype("<f8").tobytes()
    for data in (dense, sparse):
        row = decode_row(data)
        np.testing.assert_array_equal(row[:ROW_COLS_BEFORE_CP], old)
        assert (row[ROW_COLS_BEFORE_CP:] == ROW_INIT[ROW_COLS_BEFORE_CP:]).all()  # appended fields initial
        assert (row[FIELD_COLUMN["cp_ms"]:FIELD_COLUMN["pa_tick"]] == -1.0).all()  # no change point, no window


@pytest.mark.parametrize(("data", "message"), [
    (b"SHB", "shorter than its 8-byte header"),
    (struct.pack("<4sI", b"XXXX", ROW_COLS) + b"\0" * ROW_MASK_BYTES, "layout b'XXXX'"),
    (struct.pack("<4sI", b"SHB2", ROW_COLS + 1) + b"\0" * ROW_MASK_BYTES, f"{ROW_COLS + 1} cols"),
    (struct.pack("<4sI", b"SHB1", ROW_COLS) + b"\0" * 16, "dense baseline row has 24 B"),
    (struct.pack("<4sI", b"SHB2", ROW_COLS) + b"\0" * 3, "shorter than header and bitmap"),
    (struct.pack("<4sI", b"SHB2", ROW_COLS) + b"\x80" + b"\0" * (ROW_MASK_BYTES - 1), "names 1 columns"),
])
def test_malformed_rows_are_refused_naming_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_row(data)
    assert ROW_INIT.size == ROW_COLS
