"""Training logs: a CSV of metrics per logged step, TensorBoard scalars (when installed), sample grids."""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from cxrgen.config import ImageConfig
from cxrgen.data.images import save_png

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
CSV_FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "grad_norm")


class MetricsLog:
    """Appends rows to ``OUT/metrics.csv`` and TensorBoard; inactive (no files) when ``enabled`` is False."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / METRICS_CSV
        rows = _rows_until(self.csv_path, resume_step) if resume_step is not None else []
        with self.csv_path.open("w", newline="", encoding="utf-8") as f:  # a fresh run starts a new file
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.writer = _tensorboard(self.out_dir / TENSORBOARD_DIR, resume_step)

    def log(self, row: dict[str, float]) -> None:
        """Write one row (keys of CSV_FIELDS); every value but ``step`` also goes to TensorBoard."""
        if not self.enabled:
            return
        with self.csv_path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and value is not None and math.isfinite(float(value)):
                    self.writer.add_scalar(f"train/{key}", float(value), int(row["step"]))
            self.writer.flush()

    def add_grid(self, tag: str, grid: torch.Tensor, step: int, image_cfg: ImageConfig) -> None:
        """A (1, H, W) grid in [low, high] to TensorBoard (as [0, 1])."""
        if self.writer is not None:
            unit = ((grid - image_cfg.low) / (image_cfg.high - image_cfg.low)).clamp(0, 1)
            self.writer.add_image(tag, unit, step)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def _rows_until(path: Path, step: int) -> list[dict[str, str]]:
    """Rows of an earlier run's CSV up to ``step`` (a resumed run continues the same file)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= step]


def _tensorboard(log_dir: Path, resume_step: int | None):
    """A SummaryWriter when the tensorboard package is installed, else None (with a log line)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the CSV has the same numbers
        log.info("tensorboard is not installed: metrics go to %s only", METRICS_CSV)
        return None
    return SummaryWriter(str(log_dir), purge_step=resume_step)


def image_grid(images: torch.Tensor, columns: int | None = None, pad_value: float = -1.0) -> torch.Tensor:
    """Tile (N, 1, H, W) images into one (1, rows * H, columns * W) image, row-major, no padding gaps."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = images.new_full((rows * columns, c, h, w), pad_value)
    canvas[:n] = images
    grid = canvas.reshape(rows, columns, c, h, w).permute(2, 0, 3, 1, 4)  # (C, rows, H, columns, W)
    return grid.reshape(c, rows * h, columns * w)  # (C, rows * H, columns * W)


def save_grid(images: torch.Tensor, prompts: Sequence[str], path: Path, image_cfg: ImageConfig,
              step: int) -> Path:
    """Write a PNG grid of samples; the prompts (row-major) and the step go into its text chunks."""
    grid = image_grid(images.float().cpu(), pad_value=image_cfg.low)
    text = {"step": str(step), "prompts": " | ".join(prompts), "synthetic": "true"}
    return save_png(grid, path, image_cfg, text=text)
