"""Training data order: a resumable, rank-sharded stream of index batches (the images: cxrgen.data.dataset).

The sample order is a pure function of (seed, dataset size, samples consumed): epoch e is the
permutation ``randperm(n)`` of a generator seeded with ``seed + e``, epochs are concatenated into one
endless stream, and each optimizer micro-step takes the next ``batch_size * world_size`` indices,
rank r keeping its own ``batch_size`` slice. So the data position of a checkpoint is one integer
(samples consumed), from which the stream restarts exactly, whatever the DataLoader prefetched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from cxrgen.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPosition:
    """Where the sample stream stands: ``consumed`` indices in all; epoch and offset derived from it."""

    consumed: int
    dataset_size: int

    @property
    def epoch(self) -> int:
        """Index of the current epoch (permutation)."""
        return self.consumed // self.dataset_size

    @property
    def offset(self) -> int:
        """Position inside the current epoch's permutation."""
        return self.consumed % self.dataset_size


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: randperm(n) from a generator seeded with seed + epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


class ShardedBatchStream(Sampler[list[int]]):
    """Endless index batches for one rank, starting ``start`` samples into the global stream."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if dataset_size <= 0:
            raise DataError("the training set is empty")
        self.n, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    @property
    def global_batch(self) -> int:
        """Indices consumed from the stream per micro-step, over all ranks."""
        return self.batch_size * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        pos = DataPosition(self.start, self.n)
        epoch, perm, offset = pos.epoch, epoch_permutation(self.n, self.seed, pos.epoch), pos.offset
        while True:
            chunk: list[int] = []
            while len(chunk) < self.global_batch:
                take = perm[offset : offset + self.global_batch - len(chunk)].tolist()
                chunk += take
                offset += len(take)
                if offset == self.n:
                    epoch, offset = epoch + 1, 0
                    perm = epoch_permutation(self.n, self.seed, epoch)
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader)
        raise TypeError("ShardedBatchStream is endless")
