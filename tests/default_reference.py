"""The shipped default model's pixels for fixed prompts and seeds, recorded once as a test fixture.

Re-record (only when the default model is retrained on purpose):
    PYTHONPATH=src python tests/default_reference.py
The fixture keeps a 4x4-average-pooled copy (64 x 64) of each 256 px image, two full-resolution
32 x 32 crops and per-image statistics, so a test can bound the pixel difference after a format change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FIXTURE = Path(__file__).resolve().parent / "data" / "default_reference.npz"
PROMPTS = ("Large right pleural effusion.", "No acute cardiopulmonary abnormality.")
SEEDS = (0, 1)
STEPS = 5  # the default sampler (dpm++) and guidance scale of the model's sampling settings
CROPS = ((112, 112), (96, 48))  # (row, col) of 32 x 32 full-resolution crops: mid-chest, right lung
CROP = 32
POOL = 4


def summarize(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Pooled copies (N, 64, 64), crops (N, 2, 32, 32) and stats (N, 4: mean, std, min, max) of (N, 1, H, W)."""
    x = images.float()
    pooled = F.avg_pool2d(x, POOL)[:, 0]  # (N, H/4, W/4)
    crops = torch.stack([x[:, 0, r : r + CROP, c : c + CROP] for r, c in CROPS], dim=1)  # (N, 2, 32, 32)
    flat = x.flatten(1).double()  # (N, H*W)
    stats = torch.stack([flat.mean(1), flat.std(1), flat.min(1).values, flat.max(1).values], dim=1)
    return {"pooled": pooled.numpy(), "crops": crops.numpy(), "stats": stats.numpy()}


def sample_reference(call: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Images (len(PROMPTS) * len(SEEDS), 1, H, W): ``call(prompt, steps, generator)`` for each pair."""
    images = [call(prompt, STEPS, torch.Generator().manual_seed(seed)) for prompt in PROMPTS for seed in SEEDS]
    return torch.cat(images)


def _record() -> None:
    from cxrgen.generate import DEFAULT_MODEL
    from cxrgen.pipeline import CXRPipeline

    torch.set_num_threads(1)
    pipe = CXRPipeline.from_pretrained(DEFAULT_MODEL)

    def call(prompt: str, steps: int, generator: torch.Generator) -> torch.Tensor:
        return pipe([prompt], num_inference_steps=steps, generator=generator, progress=False).images

    images = sample_reference(call)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **summarize(images))
    print(f"wrote {FIXTURE}: {tuple(images.shape)} images summarized")


if __name__ == "__main__":
    _record()
