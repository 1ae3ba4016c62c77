"""Training data: manifest images with prompts, and a resumable, rank-sharded stream of index batches.

The sample order is a pure function of (seed, dataset size, samples consumed): epoch e is the
permutation ``randperm(n)`` of a generator seeded with ``seed + e``, epochs are concatenated into one
endless stream, and each optimizer micro-step takes the next ``batch_size * world_size`` indices,
rank r keeping its own ``batch_size`` slice. So the data position of a checkpoint is one integer
(samples consumed), from which the stream restarts exactly, whatever the DataLoader prefetched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image
from cxrgen.data.manifest import read_manifest
from cxrgen.errors import DataError, MissingColumnsError

log = logging.getLogger(__name__)


class ManifestImageDataset(Dataset):
    """Rows of ``split`` in manifests: item i is {"image": (1, H, W) in [low, high], "prompt", "index"}."""

    def __init__(self, manifests: Sequence[str | Path], split: str, image_cfg: ImageConfig,
                 image_root: str | Path | None = None) -> None:
        self.image_cfg = image_cfg
        self.paths: list[str] = []
        self.prompts: list[str] = []
        for manifest in manifests:
            paths, prompts = _manifest_rows(Path(manifest), split, image_root)
            self.paths += paths
            self.prompts += prompts
        if not self.paths:
            raise DataError(
                f"no {split!r} rows with an image in manifests {[str(m) for m in manifests]}; "
                "check the split name (cfg.split) and build manifests with `cxrgen prepare`"
            )
        n_empty = sum(not p.strip() for p in self.prompts)
        if n_empty:
            log.warning("%d of %d training rows have an empty prompt (trained as unconditional)",
                        n_empty, len(self.prompts))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": load_image(self.paths[i], self.image_cfg), "prompt": self.prompts[i], "index": i}


def _manifest_rows(path: Path, split: str, image_root: str | Path | None) -> tuple[list[str], list[str]]:
    """(image paths, prompts) of the ``split`` rows; relative paths join image_root or the manifest's folder."""
    df = read_manifest(path)
    missing = [c for c in ("image_path", "prompt", "split") if c not in df.columns]
    if missing:
        raise MissingColumnsError(f"manifest {path} lacks columns {missing}; build it with `cxrgen prepare`")
    df = df[(df["split"].astype(str) == split) & (df["image_path"].astype(str).str.len() > 0)]
    base = Path(image_root) if image_root is not None else path.parent
    paths = [str(p if Path(p).is_absolute() else base / p) for p in df["image_path"].astype(str)]
    return paths, df["prompt"].fillna("").astype(str).tolist()


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
