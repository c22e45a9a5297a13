"""Datasets and a batching data loader with seeded, resumable shuffling.

A *dataset* is anything with ``len(ds)`` and ``ds[i]``.  The
:class:`DataLoader` walks through it in batches; with ``shuffle`` each epoch
visits the examples in a new random order.  The order of epoch ``e`` is a
permutation drawn from a generator seeded with ``(seed, e)``, so it depends
only on the seed and the epoch number, never on what happened before.
That makes resuming exact: :meth:`DataLoader.state_dict` records the epoch
and how many batches of it were already served (plus the collate function's
own random state, if it has one), and a loader given that state with
:meth:`DataLoader.load_state_dict` carries on with the very next batch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Dataset(Protocol):
    """What a :class:`DataLoader` needs: a length and indexing by position."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class ListDataset:
    """A dataset holding its examples in a list.

    ``ListDataset(texts, labels)`` zips several equally long sequences, so
    each example is a tuple ``(text, label)``; with one sequence each example
    is the item itself.
    """

    def __init__(self, *columns: Sequence[Any]) -> None:
        if not columns:
            raise ValueError("ListDataset needs at least one sequence")
        if len({len(c) for c in columns}) != 1:
            raise ValueError(f"the sequences differ in length: {[len(c) for c in columns]}")
        self.items = list(columns[0]) if len(columns) == 1 else list(zip(*columns))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def default_collate(batch: list[Any]) -> Any:
    """Stack a list of examples into arrays.

    Numbers and arrays are stacked into one array with a leading batch
    axis; tuples are collated field by field (giving a tuple of arrays);
    dicts key by key.  Strings stay a list of strings.
    """
    first = batch[0]
    if isinstance(first, str):
        return list(batch)
    if isinstance(first, dict):
        return {key: default_collate([example[key] for example in batch]) for key in first}
    if isinstance(first, tuple):
        return tuple(default_collate(list(field)) for field in zip(*batch))
    return np.stack([np.asarray(example) for example in batch])


class DataLoader:
    """Iterate over a dataset in batches.

    Args:
        dataset: anything with ``len`` and integer indexing.
        batch_size: examples per batch.
        shuffle: visit the examples in a new seeded random order every epoch.
        seed: seed of the shuffling (see the module docstring).
        drop_last: leave out the last batch when it is smaller than ``batch_size``.
        collate_fn: turns a list of examples into a batch; default
            :func:`default_collate`.

    Each ``for batch in loader`` runs over the rest of the current epoch
    (all of it, unless resuming) and then moves on to the next epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.epoch = 0
        self.batches_done = 0  # batches of the current epoch already served

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the dataset's indices."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self) -> Iterator[Any]:
        order = self.epoch_order(self.epoch)
        while self.batches_done < len(self):
            start = self.batches_done * self.batch_size
            indices = order[start:start + self.batch_size]
            self.batches_done += 1
            yield self.collate_fn([self.dataset[int(i)] for i in indices])
        self.epoch += 1
        self.batches_done = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: epoch, batches served, and the collate function's state if it has one."""
        state = {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed}
        if hasattr(self.collate_fn, "state_dict"):
            state["collate_fn"] = self.collate_fn.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next batch is the one that would have come next."""
        self.epoch, self.batches_done, self.seed = state["epoch"], state["batches_done"], state["seed"]
        if "collate_fn" in state:
            self.collate_fn.load_state_dict(state["collate_fn"])
