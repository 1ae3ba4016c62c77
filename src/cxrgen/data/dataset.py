"""Manifest images with their prompts as a torch Dataset (what training and the latent cache read)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

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
