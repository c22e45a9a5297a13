"""Chapter 19 (data parallelism): its checks reject wrong versions of what it builds — a plain mean of padded
shards' gradients, all-reduces that stop half-way or add twice, wrong message counts. The chapter is imported
(quick mode), which skips its measurement section; tests/test_tutorials.py runs it whole, as a script."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import import_chapter

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
STEM = "19_data_parallel"
FIGURES = ["ring_allreduce_steps", "alpha_beta_model"]  # measured_scaling: only when run as a script


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    """The chapter imported as a module in quick mode (all but the measurement), and its figure folder."""
    out = tmp_path_factory.mktemp(STEM)
    # Not NUMBA_NUM_THREADS: when this module runs first in a process, Numba would start with it set and later
    # tests that read Numba's configuration again would fail ("cannot set NUMBA_NUM_THREADS ... once launched").
    one_thread = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1")
    module = import_chapter(TUTORIALS, STEM, out, **one_thread)
    return module, out / STEM


def test_imported_chapter_writes_its_figures(chapter):
    _, folder = chapter
    for name in FIGURES:
        data = (folder / f"{name}.png").read_bytes()
        assert len(data) > 1000 and data.startswith(b"\x89PNG"), name


def test_gradient_averaging_check_rejects_an_unweighted_mean(chapter):
    ch, _ = chapter
    ch.check_gradient_averaging(ch.combine_weighted)
    with pytest.raises(AssertionError, match="padded rows"):  # right for full rows only
        ch.check_gradient_averaging(ch.combine_mean)
    with pytest.raises(AssertionError, match="full rows"):  # the sum: N times too large
        ch.check_gradient_averaging(lambda grads, counts: [sum(g) for g in zip(*grads)])


def _reduce_scatter_only(comm, buffer):
    """The ring's first half: each rank ends with one complete chunk, the others partial."""
    n, r = comm.Get_size(), comm.Get_rank()
    chunks = np.array_split(buffer, n)
    for step in range(n - 1):
        send, receive = (r - step) % n, (r - step - 1) % n
        incoming = np.empty_like(chunks[receive])
        comm.Sendrecv(chunks[send], dest=(r + 1) % n, recvbuf=incoming, source=(r - 1) % n)
        chunks[receive] += incoming


def _adds_in_the_all_gather(comm, buffer):
    """Both phases add: the finished chunks are counted again on their way round."""
    n, r = comm.Get_size(), comm.Get_rank()
    chunks = np.array_split(buffer, n)
    for step in range(2 * (n - 1)):
        s = step if step < n - 1 else step - (n - 1) - 1
        send, receive = (r - s) % n, (r - s - 1) % n
        incoming = np.empty_like(chunks[receive])
        comm.Sendrecv(chunks[send], dest=(r + 1) % n, recvbuf=incoming, source=(r - 1) % n)
        chunks[receive] += incoming


def test_allreduce_check_rejects_broken_rings(chapter):
    ch, _ = chapter
    ch.check_allreduce(ch.distributed.ring_allreduce)
    for wrong in (_reduce_scatter_only, _adds_in_the_all_gather):
        with pytest.raises(AssertionError):
            ch.check_allreduce(wrong)


def test_message_count_check_rejects_wrong_counts(chapter):
    ch, _ = chapter
    ch.check_ring_message_counts(ch.ring_messages)
    for wrong in (lambda n, m: (n - 1, (n - 1) / n * m),  # only the reduce-scatter
                  lambda n, m: (2 * (n - 1), 2 * (n - 1) * m)):  # whole buffers, as through a root
        with pytest.raises(AssertionError):
            ch.check_ring_message_counts(wrong)
