"""Training steps/s with latents (+ text embeddings) from the cache vs encoded on the fly, side by side.

Both loops run in one process on the same rows, batch size, denoiser init, loss
(cxrgen.objective.diffusion_loss), plain AdamW step and number of timed steps after warm-up. On
the fly: load + resize PNGs, AutoencoderKL posterior, MiniLM text tokens, every step. From cache:
read the posterior mean/std and text tokens from `cxrgen cache` shards, sample z = mean + std * eps.

    .venv/bin/python benchmarks/cache.py                # 256x256, 1-ch f=8 codec, MiniLM, uvit-mini
    .venv/bin/python benchmarks/cache.py --dtype float16 --denoiser uvit-s
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrgen.autoencoder import LatentCodec, sample_posterior
from cxrgen.cache import CachedDataset, build_cache
from cxrgen.config import (
    CacheConfig,
    DataConfig,
    DenoiserConfig,
    ImageConfig,
    ModelConfig,
    TextEncoderConfig,
    TrainConfig,
)
from cxrgen.data.dataset import ManifestImageDataset
from cxrgen.data.images import save_png
from cxrgen.data.manifest import new_manifest, write_manifest
from cxrgen.data.prepare import build_manifest
from cxrgen.denoisers import build_denoiser
from cxrgen.objective import diffusion_loss
from cxrgen.samplers import training_scheduler
from cxrgen.text import build_text_encoder

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "covid-cxr-256"
TEXT_DIM, TEXT_LEN = 384, 77  # all-MiniLM-L6-v2 width; CLIP / RoentGen token limit


def make_manifest(out: Path, n: int, size: int, data: Path) -> Path:
    """A manifest of ``n`` train rows: the shared COVID set through `cxrgen prepare`'s reader, else synthetic."""
    if data.is_dir():
        df, _ = build_manifest("covid", data, DataConfig())
        df = df[df["prompt"].str.len() > 0].head(n).assign(split="train")
    else:
        rng = np.random.default_rng(0)
        rows = []
        for i in range(n):
            save_png(rng.uniform(-1, 1, (size, size)), out / "images" / f"{i}.png", ImageConfig(size=size))
            rows.append({"image_path": f"images/{i}.png", "prompt": "small left pleural effusion", "split": "train"})
        df = new_manifest(rows)
    return write_manifest(df.reset_index(drop=True), out / "manifest.parquet")


def endless(loader: DataLoader):
    while True:
        yield from loader


def timed_steps(batches, to_latents, denoiser, scheduler, warmup: int, steps: int, seed: int) -> float:
    """Run warm-up + timed training steps; return timed steps per second."""
    opt = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        z0, context, mask = to_latents(next(batches), gen)
        loss = diffusion_loss(denoiser, scheduler, z0, context, mask, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="rows cached and trained on")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--denoiser", default="uvit-mini")
    ap.add_argument("--data", type=Path, default=SHARED, help="covid-cxr-256 folder (synthetic images if absent)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 on a shared machine (more contend and slow small ops badly)")
    return ap.parse_args()


def train_config(args: argparse.Namespace, manifest: Path) -> TrainConfig:
    """1-ch f=8 codec at default width, frozen MiniLM (77 x 384 tokens), a small U-ViT on h = size / 8."""
    model = ModelConfig(
        image_size=args.size,
        text_encoder=TextEncoderConfig(backend="minilm", max_length=TEXT_LEN),  # frozen
        denoiser=DenoiserConfig(name=args.denoiser, in_channels=4, sample_size=args.size // 8,
                                context_dim=TEXT_DIM, context_len=TEXT_LEN),
    )
    return TrainConfig(model=model, manifests=(str(manifest),), image=ImageConfig(size=args.size),
                       batch_size=args.batch_size, progress=False,
                       cache=CacheConfig(dtype=args.dtype, batch_size=args.batch_size, device="cpu"))


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def run(args: argparse.Namespace, work: Path) -> None:
    t0 = time.perf_counter()
    cfg = train_config(args, make_manifest(work, args.images, args.size, args.data))
    codec = LatentCodec.build(cfg.model.autoencoder).eval()
    text = build_text_encoder(cfg.model.text_encoder)
    denoiser = build_denoiser(cfg.model.denoiser, generator=torch.Generator().manual_seed(0))
    init = {k: v.clone() for k, v in denoiser.state_dict().items()}
    scheduler = training_scheduler(cfg.schedule, denoiser.prediction_type)
    print(f"setup {time.perf_counter() - t0:.1f} s: {args.images} rows ({'shared' if args.data.is_dir() else 'synthetic'}"
          f" images) at {args.size}x{args.size}, batch {args.batch_size}, {args.threads} threads, denoiser "
          f"{args.denoiser} ({millions(denoiser):.2f} M params), codec {millions(codec):.1f} M, MiniLM frozen")

    t0 = time.perf_counter()
    cache_dir = build_cache(cfg, work / "cache", codec, text)
    build_s = time.perf_counter() - t0
    cache_mb = sum(p.stat().st_size for p in cache_dir.glob("*.safetensors")) / 2**20
    print(f"cache build: {build_s:.1f} s for {args.images} rows ({args.images / build_s:.2f} rows/s), "
          f"{cache_mb:.2f} MiB as {args.dtype}")

    def fly(batch, gen):
        with torch.no_grad():
            mean, std = codec.encode_distribution(batch["image"])
            context, mask = text.encode(list(batch["prompt"]))
        return codec.scale_latents(sample_posterior(mean, std, gen)), context, mask

    def cached(batch, gen):
        z0 = codec.scale_latents(sample_posterior(batch["latent_mean"], batch["latent_std"], gen))
        return z0, batch["context"], batch["mask"]

    modes = {"on the fly": (ManifestImageDataset(cfg.manifests, cfg.split, cfg.image), fly),
             "from cache": (CachedDataset(cache_dir), cached)}
    rates = {}
    for name, (dataset, to_latents) in modes.items():
        denoiser.load_state_dict(init)
        batches = endless(DataLoader(dataset, batch_size=args.batch_size, shuffle=False))
        rates[name] = timed_steps(batches, to_latents, denoiser, scheduler, args.warmup, args.steps, seed=0)
        print(f"{name:>10}: {rates[name]:.3f} steps/s ({1 / rates[name]:.2f} s/step, {args.steps} timed steps "
              f"after {args.warmup} warm-up)")
    print(f"speed-up from cache: {rates['from cache'] / rates['on the fly']:.1f}x (target >= 3x)")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)  # MiniLM truncation warnings of long COVID notes: expected
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the fresh autoencoder's init (diffusers draws from the global RNG)
    with tempfile.TemporaryDirectory(prefix="cxrgen-cache-bench-") as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
