"""Numba CPU scatter-add of rows: an embedding table's gradient.

    target[rows[i]] += values[i]   for i = 0 … N-1,   rows (N,) integers, values (N, D), target (V, D)

A row id that appears k times gets k rows added. NumPy's ``np.add.at`` does the same one indexed element at a
time through a generic ufunc loop; here it is one compiled loop over the N rows, each a contiguous D-long add
the compiler vectorises. The additions happen in the same order (i = 0, 1, …), so the result is bitwise
``np.add.at``'s. One thread: two threads could add into the same row at once.
"""
import numba


@numba.njit(cache=True)
def add_rows(target, rows, values):
    """target[rows[i]] += values[i] for every i, in order (see the module docstring)."""
    for i in range(rows.shape[0]):
        row, value = target[rows[i]], values[i]  # (D,) views
        for j in range(value.shape[0]):
            row[j] += value[j]
