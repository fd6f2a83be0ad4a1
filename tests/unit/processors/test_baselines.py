"""SliceStore.rows_bytes (the changelog values of many slices at once) gives, row for row, the
bytes of SliceStore.row_bytes, and they load back into the same state."""

import numpy as np

from streams.processors.baselines import FIELDS, SliceInfo, SliceStore


def test_rows_bytes_equal_row_bytes_and_load_back():
    store = SliceStore(capacity=4)
    rng = np.random.default_rng(0)
    for i in range(6):  # grows past its capacity
        store.add(SliceInfo(f"tenant|t{i}", "tenant", f"t{i}", None, None, None, i % 3))
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
