"""Compute side of ``cxrgen evaluate``: denoiser size and GFLOPs per image, images/s and peak memory.

GFLOPs per image = one denoiser forward (cxrgen.compute.denoiser_flops, multiply-add = 2 FLOPs) x
sampling steps x 2 when classifier-free guidance runs the unconditional pass too (w != 1). The text
encoder (once per prompt) and the autoencoder decode (once per image) are left out and reported
separately by their parameter counts.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cxrgen.compute import count_params, denoiser_flops
from cxrgen.guidance import needs_uncond
from cxrgen.pipeline import CXRPipeline

log = logging.getLogger(__name__)

MIB = 2**20
#: ru_maxrss is in KiB on Linux and in bytes on macOS.
RUSAGE_UNIT = 1 if sys.platform == "darwin" else 1024
THROUGHPUT_NAME = "throughput.json"  # beside the generated images, so a resumed run keeps the measurement


@dataclass(frozen=True)
class Throughput:
    """Images/s of one generation run and its peak memory (and how that memory was measured)."""

    images: int
    seconds: float
    images_per_s: float | None
    batch_size: int
    peak_memory_mib: float
    memory_kind: str
    device: str


def denoiser_cost(pipe: CXRPipeline, steps: int, guidance_scale: float) -> dict:
    """Parameters of each part and the denoiser GFLOPs per generated image at ``steps`` and ``guidance_scale``."""
    den = pipe.denoiser
    cfg = den.config
    latent_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    flops = denoiser_flops(den, latent_shape, cfg.context_len, cfg.context_dim)
    passes = 2 if needs_uncond(guidance_scale) else 1  # conditional (+ unconditional) forward per step
    return {
        "denoiser_params": count_params(den),
        "text_encoder_params": count_params(pipe.text_encoder),
        "autoencoder_params": count_params(pipe.autoencoder),
        "gflops_forward": flops["gflops_fwd"],
        "gflops_per_image": flops["gflops_fwd"] * steps * passes,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "forward_passes_per_step": passes,
    }


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB, "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RUSAGE_UNIT / MIB
    return rss, "process peak RSS (resource.getrusage ru_maxrss; includes every loaded model)"


@contextmanager
def measure_throughput(device: torch.device, batch_size: int, record: dict) -> Iterator[None]:
    """Time the block; fill ``record['throughput']`` with a Throughput once ``record['images']`` is set."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    images = int(record.get("images", 0))
    memory, kind = _peak_memory(device)
    record["throughput"] = Throughput(
        images=images, seconds=seconds, images_per_s=images / seconds if images and seconds > 0 else None,
        batch_size=batch_size, peak_memory_mib=memory, memory_kind=kind, device=str(device),
    )


def keep_throughput(measured: Throughput, folder: Path) -> Throughput | None:
    """The new measurement when images were sampled (saved to ``folder``), else the saved one (or None)."""
    path = Path(folder) / THROUGHPUT_NAME
    if measured.images > 0:
        path.write_text(json.dumps(asdict(measured), indent=2) + "\n", encoding="utf-8")
        return measured
    if path.is_file():
        log.info("every image already existed: images/s is the one measured when they were made (%s)", path)
        return Throughput(**json.loads(path.read_text(encoding="utf-8")))
    log.warning("every image already existed and no earlier measurement is saved in %s: images/s is unknown", path)
    return None
