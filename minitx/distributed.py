"""Data-parallel training: N processes, one model replica each, the same weights after every step.

Launch any minitx training under MPI (``mpiexec -n N minitx train-gpt …``) and each process (a *rank*,
0…N-1) keeps a full copy of the model. Every optimizer step:

1. each rank takes its own slice of the global batch (:class:`ShardedLoader`: the same global order as one
   process, B/N rows each);
2. each rank runs forward and backward on its slice, its loss scaled by its share of the global batch
   (1/N, or n_r / Σ n for a loss that is a mean over a varying number of items, e.g. non-padding tokens);
3. the gradients are **summed over the ranks** (:class:`GradientReducer`: an all-reduce), so every rank
   holds the gradient of the mean loss over the whole global batch:

       g = Σ_r (n_r / Σ_s n_s) ∇L_r      (L_r: rank r's mean loss over its n_r items)

4. every rank applies the same optimizer step to the same weights, so the replicas never drift apart.

Not launched under MPI (no ``mpiexec``), :func:`world` is a single process and mpi4py is never imported.

The all-reduce (every rank ends with the sum of every rank's buffer) is done three ways, one switch:
NumPy buffers go through MPI, either its ``Allreduce`` (``algorithm="mpi"``, the production path) or the
ring all-reduce written here over point-to-point messages (``algorithm="ring"``, the lesson; environment
variable ``MINITX_ALLREDUCE=ring``); CuPy buffers (GPU) go through NCCL (:class:`NcclAllReduce`).

The ring (:func:`ring_allreduce`), for N ranks and a buffer of M numbers cut into N chunks of M/N:

- reduce-scatter, N-1 steps: at step s, rank r sends chunk (r - s) mod N to rank r+1 and adds the chunk
  (r - s - 1) mod N that it receives from rank r-1; afterwards rank r holds the complete sum of chunk
  (r + 1) mod N;
- all-gather, N-1 steps: the complete chunks travel once more around the ring, copied instead of added.

Each rank sends 2(N-1)·M/N numbers, almost independent of N: with latency α per message and β seconds per
byte, T_ring = 2(N-1)·α + 2(N-1)/N · M·bytes·β.

Failure: a rank that raises makes the others wait forever in their next all-reduce, so an MPI world aborts
the whole job when any rank ends with an error (``sys.excepthook`` and :func:`abort_if_distributed`), and a
watchdog aborts it when a collective waits longer than ``timeout`` seconds (a rank that hangs; default 600,
environment variable ``MINITX_DIST_TIMEOUT``). A rank killed by a signal is seen by ``mpiexec`` itself,
which then ends the others. (NCCL calls return at once and the GPU waits later, where the watchdog does
not look.)

Randomness, drawn as one process would: every rank starts from rank 0's random state, builds the whole global
batch (so a random collate function, like BERT's token masking, masks every row as one process would, and
pads to the global batch's longest row) and keeps its rows; during a training step each dropout draws the
numbers for the whole global batch and keeps this rank's piece (:func:`minitx.backend.batch_piece`). The
ranks' generators therefore stay equal to one process's, a run with dropout ends with one process's weights
(up to float32 rounding), and a checkpoint resumes on any world size. The price is N times the collating and
the random numbers on every rank (frameworks instead give each rank its own stream, seed + rank, and accept
that the run differs from one process's).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time

import numpy as np

from . import backend
from .data.loader import DataLoader

# Environment variables through which launchers tell a process how many ranks there are
# (MPICH/Hydra and Intel MPI: PMI_SIZE; Open MPI: OMPI_COMM_WORLD_SIZE).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
ALGORITHMS = ("mpi", "ring")
OUTPUT_GRACE_S = 0.5  # seconds between a failing rank's last words and MPI_Abort (see World.abort)


class DistributedError(RuntimeError):
    """The ranks of a data-parallel run disagree, or a collective operation failed.

    ``on_every_rank``: every rank raised this same error (a disagreement all of them found), so each can end by
    itself and only rank 0 needs to report it."""

    def __init__(self, message: str, on_every_rank: bool = False):
        super().__init__(message)
        self.on_every_rank = on_every_rank


def launched_size() -> int:
    """How many ranks the launcher started (1 when this process was not started by ``mpiexec``)."""
    for name in _SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


# ------------------------------------------------------------------------------------------------ the world
class World:
    """The ranks of this run: ``rank``, ``size``, and the collective operations every rank calls together.

    ``World()`` is a single process (every operation is the identity); ``World(comm)`` wraps an mpi4py
    communicator. Collectives must be called by every rank in the same order, or the run deadlocks.
    """

    def __init__(self, comm=None, algorithm: str = "mpi", timeout: float | None = None):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"World: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.comm, self.algorithm = comm, algorithm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.timeout = float(os.environ.get("MINITX_DIST_TIMEOUT", 600)) if timeout is None else timeout
        self._nccl = None
        self._waiting_since: tuple[str, float] | None = None
        if self.size > 1:
            threading.Thread(target=self._watchdog, name="minitx-dist-watchdog", daemon=True).start()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, shows progress and writes files."""
        return self.rank == 0

    # ------------------------------------------------------------------------------------ collectives
    def allreduce_(self, buffer) -> None:
        """Sum ``buffer`` (a flat NumPy or CuPy array) over the ranks, in place: afterwards every rank holds
        Σ_r buffer_r. The buffer's array module picks the engine: NumPy -> MPI, CuPy -> NCCL."""
        if self.size == 1:
            return
        if backend.device_of(buffer) == "cuda":
            if self._nccl is None:
                self._nccl = NcclAllReduce(self.comm)
            self._collective("allreduce", self._nccl, buffer)
        elif self.algorithm == "ring":
            self._collective("allreduce", ring_allreduce, self.comm, buffer)
        else:
            from mpi4py import MPI

            self._collective("allreduce", self.comm.Allreduce, MPI.IN_PLACE, buffer, op=MPI.SUM)

    def sum(self, value: float) -> float:
        """Σ_r value_r, the same on every rank."""
        return self.sums([value])[0]

    def sums(self, values) -> list[float]:
        """[Σ_r values_r[0], Σ_r values_r[1], …] in one all-reduce, the same on every rank."""
        buffer = np.array(values, dtype=np.float64)
        self.allreduce_(buffer)
        return [float(v) for v in buffer]

    def broadcast_(self, array) -> None:
        """Overwrite ``array`` (NumPy) on every rank with rank 0's, in place."""
        if self.size > 1:
            self._collective("broadcast", self.comm.Bcast, array, root=0)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` (anything JSON-able) on every rank."""
        return obj if self.size == 1 else self._collective("broadcast", self.comm.bcast, obj, root=0)

    def allgather_object(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, …] on every rank."""
        return [obj] if self.size == 1 else self._collective("allgather", self.comm.allgather, obj)

    def barrier(self) -> None:
        if self.size > 1:
            self._collective("barrier", self.comm.Barrier)

    def broadcast_seed(self, seed: int) -> int:
        """Rank 0's seed, so that every rank draws the same initial weights and the same data order."""
        return int(self.broadcast_object(int(seed)))

    def check_same(self, facts: dict, what: str = "the run") -> None:
        """Raise :class:`DistributedError` on every rank unless every rank has the same ``facts`` (a dict of
        JSON-able values: configs, data sizes…); the message names each differing key and its values."""
        if self.size == 1:
            return
        everyone = self.allgather_object(json.loads(json.dumps(facts, sort_keys=True, default=str)))
        problems = [f"{key}: rank 0 has {everyone[0].get(key)!r}, rank {r} has {other.get(key)!r}"
                    for r, other in enumerate(everyone) for key in sorted(set(other) | set(everyone[0]))
                    if other.get(key) != everyone[0].get(key)]
        if problems:
            raise DistributedError(f"the {self.size} ranks disagree on {what} (were they started with the same "
                                   f"arguments and files?): " + "; ".join(problems), on_every_rank=True)

    def use_local_gpu(self) -> None:
        """Make this rank's GPU the current CUDA device: GPU (rank on this node) mod (GPUs on this node).
        Call it before moving a model to ``"cuda"`` (the CLI does, for ``--device cuda``)."""
        cp = backend.cupy()
        local_rank = 0
        if self.size > 1:
            from mpi4py import MPI

            local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        cp.cuda.Device(local_rank % cp.cuda.runtime.getDeviceCount()).use()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (MPI_Abort), after flushing this rank's output and giving mpiexec a
        moment to forward it: the abort ends the forwarding too, and a report cut mid-traceback was seen."""
        if self.size > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(OUTPUT_GRACE_S)
            self.comm.Abort(code)

    # ------------------------------------------------------------------------------------- failures
    def _collective(self, name: str, fn, *args, **kwargs):
        """Call ``fn`` (a collective) under the watchdog; an MPI failure becomes a DistributedError."""
        from mpi4py import MPI

        self._waiting_since = (name, time.monotonic())
        try:
            return fn(*args, **kwargs)
        except MPI.Exception as exc:
            raise DistributedError(f"rank {self.rank}: {name} failed, another rank probably died: {exc}") from exc
        finally:
            self._waiting_since = None

    def _watchdog(self) -> None:
        """Abort the job when a collective has waited longer than ``timeout`` (a rank hangs or died silently)."""
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            waiting = self._waiting_since
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                print(f"minitx: rank {self.rank}: waited more than {self.timeout:g} s in {waiting[0]} for the other "
                      f"ranks; one of them died or hangs. Aborting all {self.size} ranks.", file=sys.stderr,
                      flush=True)
                self.abort(1)

    def _abort_on_uncaught(self, previous_hook):
        """A ``sys.excepthook`` that reports the error, then ends every rank (they would wait for this one)."""

        def hook(kind, value, traceback):
            previous_hook(kind, value, traceback)
            print(f"minitx: rank {self.rank} failed; aborting all {self.size} ranks", file=sys.stderr, flush=True)
            self.abort(1)

        return hook


_world: World | None = None


def world() -> World:
    """This process's :class:`World`: MPI's COMM_WORLD when launched by ``mpiexec`` with 2 or more ranks,
    else a single process (mpi4py is then not imported). ``MINITX_ALLREDUCE`` (mpi or ring) picks the
    all-reduce for NumPy buffers."""
    global _world
    if _world is None:
        if launched_size() > 1:
            try:
                from mpi4py import MPI
            except ImportError as exc:
                raise DistributedError("this process was started by mpiexec, but mpi4py is not installed: "
                                       "pip install 'minitx[mpi]'") from exc
            _world = World(MPI.COMM_WORLD, algorithm=os.environ.get("MINITX_ALLREDUCE", "mpi"))
            sys.excepthook = _world._abort_on_uncaught(sys.excepthook)
        else:
            _world = World()
    return _world


def abort_if_distributed(code: int) -> None:
    """After a failed command: end the other ranks too, which would otherwise wait for this one forever."""
    if _world is not None and _world.size > 1:
        _world.abort(code)


# ------------------------------------------------------------------------------------- the ring by hand
def ring_allreduce(comm, buffer: np.ndarray) -> None:
    """Sum the 1-D ``buffer`` over the ranks of ``comm`` in place, by reduce-scatter then all-gather around a
    ring, with point-to-point messages only (``Sendrecv``: send right, receive from the left, in one call,
    so no rank waits for a send that nobody receives)."""
    n, r = comm.Get_size(), comm.Get_rank()
    if buffer.ndim != 1 or not buffer.flags.c_contiguous:
        raise ValueError(f"ring_allreduce: buffer must be a contiguous 1-D array, got shape {buffer.shape}")
    chunks = np.array_split(buffer, n)  # views into buffer; chunk c is reduced completely on rank (c - 1) mod n
    right, left = (r + 1) % n, (r - 1) % n
    incoming = np.empty_like(chunks[0])
    for step in range(n - 1):  # reduce-scatter: add what comes from the left into our copy of that chunk
        send, receive = (r - step) % n, (r - step - 1) % n
        comm.Sendrecv(chunks[send], dest=right, recvbuf=incoming[:chunks[receive].size], source=left)
        chunks[receive] += incoming[:chunks[receive].size]
    for step in range(n - 1):  # all-gather: pass the finished chunks on, copied into place
        send, receive = (r + 1 - step) % n, (r - step) % n
        comm.Sendrecv(chunks[send], dest=right, recvbuf=chunks[receive], source=left)


# ----------------------------------------------------------------------------------------- NCCL (GPU)
class NcclAllReduce:
    """Sum CuPy buffers over the ranks with NCCL: one GPU per rank (:meth:`World.use_local_gpu`), MPI only to
    hand out NCCL's id. NCCL runs the all-reduce on the GPUs (rings or trees over NVLink or the network),
    queued on the current CUDA stream like any other kernel.
    """

    def __init__(self, comm):
        cp = backend.cupy()
        from cupy.cuda import nccl

        unique_id = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        self.nccl, self.cupy = nccl, cp
        self.comm = nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank())
        self.dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def __call__(self, buffer) -> None:
        self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self.dtypes[buffer.dtype],
                            self.nccl.NCCL_SUM, self.cupy.cuda.get_current_stream().ptr)


# ------------------------------------------------------------------------------------------- the data
class ShardedLoader(DataLoader):
    """A :class:`~minitx.data.DataLoader` whose ``batch_size`` is the *global* batch and whose batches are
    this rank's slice of it: rows [r·B/N, (r+1)·B/N) of the batch one process would see. Every rank collates
    the whole global batch and keeps its rows (:func:`rows_of`), so a collate function that draws random
    numbers (MLM masking) or pads to the longest row gives each row exactly what one process gives it, and
    its random state stays equal on every rank. The epoch orders, ``state_dict`` and ``load_state_dict`` are
    the one-process loader's, so a checkpoint written with N ranks resumes with any number of ranks.

    Every batch has B rows (``drop_last=True``), so that it splits into N equal slices."""

    def __init__(self, dataset, batch_size: int, world: World, **options):
        if batch_size % world.size:
            raise ValueError(f"ShardedLoader: the global batch_size ({batch_size}) must be a multiple of the "
                             f"number of ranks ({world.size})")
        if not options.get("drop_last", False):
            raise ValueError("ShardedLoader needs drop_last=True: a last, smaller batch cannot be split into "
                             "equal shards")
        super().__init__(dataset, batch_size, **options)
        self.world = world

    @classmethod
    def from_loader(cls, loader: DataLoader, world: World) -> "ShardedLoader":
        """The same loader (data, shuffling, seed, position), sharded over ``world``."""
        if not isinstance(loader, DataLoader):
            raise TypeError(f"data-parallel training needs a minitx DataLoader to shard, got {type(loader).__name__}")
        sharded = cls(loader.dataset, loader.batch_size, world, shuffle=loader.shuffle, seed=loader.seed,
                      drop_last=loader.drop_last, collate_fn=loader.collate_fn)
        sharded.epoch, sharded.batches_done = loader.epoch, loader.batches_done
        return sharded

    def __iter__(self):
        shard = self.batch_size // self.world.size
        mine = slice(self.world.rank * shard, (self.world.rank + 1) * shard)
        for batch in super().__iter__():  # the global batch, as one process collates it
            yield rows_of(batch, mine)


def rows_of(batch, rows: slice):
    """The ``rows`` of a collated batch: of every array (and list) along its first axis, inside dicts and tuples."""
    if isinstance(batch, dict):
        return {key: rows_of(value, rows) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(rows_of(value, rows) for value in batch)
    if isinstance(batch, list) or getattr(batch, "ndim", 0) >= 1:
        return batch[rows]
    raise TypeError(f"ShardedLoader: cannot split a batch holding a {type(batch).__name__} by rows (the collate "
                    "function must return arrays or lists whose first axis is the batch, in dicts or tuples)")


# -------------------------------------------------------------------------------------- the gradients
class GradientReducer:
    """Sums the gradients of ``params`` over the ranks through flat buckets: one all-reduce per bucket.

    One message per parameter would pay the latency α for each of a model's hundreds of tensors; one giant
    buffer would need a second copy of all gradients at once. Buckets of about ``bucket_bytes`` are the
    middle way (frameworks also start sending a bucket while backward is still computing the next; here
    the all-reduce runs after backward). The last bucket also carries, after the gradients, one flag per
    parameter ("had a gradient on this rank") and the caller's extra numbers (e.g. the loss), so they travel
    without a message of their own. A parameter without a gradient counts as zeros; one without a gradient
    on every rank keeps ``grad = None``.
    """

    def __init__(self, params, world: World, bucket_bytes: int = 4 << 20):
        self.params, self.world = list(params), world
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise TypeError(f"GradientReducer: the parameters must share one dtype, got {sorted(map(str, dtypes))}")
        itemsize = next(iter(dtypes)).itemsize
        self.buckets: list[list[int]] = [[]]  # parameter indices, in model order
        size = 0
        for i, p in enumerate(self.params):
            if self.buckets[-1] and (size + p.size) * itemsize > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(i)
            size += p.size
        self._buffers: list = []

    def all_reduce(self, extras=()) -> list[float]:
        """Replace every gradient by its sum over the ranks; return the sums of ``extras`` (numbers)."""
        extras = list(extras)
        if not self._buffers:  # allocated once, on the parameters' device, reused every step
            xp = backend.get_array_module(self.params[0].data)
            for b, bucket in enumerate(self.buckets):
                extra = len(self.params) + len(extras) if b == len(self.buckets) - 1 else 0
                self._buffers.append(xp.empty(sum(self.params[i].size for i in bucket) + extra, self.params[0].dtype))
        for b, bucket in enumerate(self.buckets):
            buffer, offset = self._buffers[b], 0
            for i in bucket:
                p = self.params[i]
                buffer[offset:offset + p.size] = 0 if p.grad is None else p.grad.reshape(-1)
                offset += p.size
            if b == len(self.buckets) - 1:
                flags = [0.0 if p.grad is None else 1.0 for p in self.params]
                buffer[offset:] = backend.get_array_module(buffer).asarray(flags + extras, dtype=buffer.dtype)
            self.world.allreduce_(buffer)
        tail = backend.to_numpy(self._buffers[-1][-(len(self.params) + len(extras)):])
        had_grad = tail[:len(self.params)] > 0
        for b, bucket in enumerate(self.buckets):
            offset = 0
            for i in bucket:
                p = self.params[i]
                p.grad = self._buffers[b][offset:offset + p.size].reshape(p.shape) if had_grad[i] else None
                offset += p.size
        return [float(v) for v in tail[len(self.params):]]


# -------------------------------------------------------------------------------------- replicas
def broadcast_model(model, world: World) -> None:
    """Every rank's parameters and buffers become rank 0's (the replicas start identical)."""
    if world.size == 1:
        return
    for name, tensor in model._state_tensors().items():
        data = backend.to_numpy(tensor.data).copy()
        world.broadcast_(data)
        tensor.data[...] = backend.to_device(data, backend.device_of(tensor.data))


def weights_digest(model) -> str:
    """SHA-256 of the model's state (to check that the replicas still agree)."""
    h = hashlib.sha256()
    for name, array in model.state_dict().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
