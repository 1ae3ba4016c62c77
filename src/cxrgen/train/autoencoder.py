"""Train the latent autoencoder: L1 + (1 - SSIM) + small KL (+ optional PatchGAN), then measure scale.

Each step: sample z ~ q(z|x) with a torch.Generator, decode, sum the weighted losses, AdamW. At the
end the held-out PSNR / SSIM are measured and the latent scale and shift (LDM app. G) are measured on
training images and stored in the saved codec's config.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm

from cxrgen.autoencoder import LatentCodec, measure_scale, sample_posterior
from cxrgen.config import AutoencoderTrainConfig, ImageConfig, load_config, save_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.data.images import from_unit_range, load_image, to_unit_range
from cxrgen.data.manifest import read_manifest
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.losses import PatchDiscriminator, generator_adv_loss, hinge_d_loss, kl_loss, ssim_loss

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
#: Share of the steps averaged for the first and last training L1 in the metrics.
LOSS_WINDOW_SHARE = 0.1


class ImageFiles(Dataset):
    """Image files read with ``load_image``: item i is a (1, H, W) tensor in [cfg.low, cfg.high]."""

    def __init__(self, paths: Sequence[str | Path], image_cfg: ImageConfig) -> None:
        self.paths = [str(p) for p in paths]
        self.image_cfg = image_cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.image_cfg)


# --------------------------------------------------------------------------------------------
# Which images train and which are held out
# --------------------------------------------------------------------------------------------
def holdout_split(paths: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle ``paths`` with a seeded numpy Generator; the last ``fraction`` (>= 1 file) is held out."""
    if len(paths) < 2:
        raise DataError(f"{len(paths)} image(s) given: need at least 2 to hold some out for evaluation")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_eval = min(max(1, round(fraction * len(paths))), len(paths) - 1)
    shuffled = [str(paths[i]) for i in order]
    return shuffled[:-n_eval], shuffled[-n_eval:]


def manifest_split(df: pd.DataFrame, eval_split: str, base: Path | None) -> tuple[list[str], list[str]]:
    """Train paths (split == "train") and evaluation paths (split == ``eval_split``) of a manifest."""
    missing = [c for c in ("image_path", "split") if c not in df.columns]
    if missing:
        raise MissingColumnsError(f"manifest lacks columns {missing}; build it with `cxrgen prepare`")
    df = df[df["image_path"].astype(str).str.len() > 0]
    paths = [Path(p) if Path(p).is_absolute() or base is None else base / p for p in df["image_path"]]
    split = df["split"].astype(str).to_numpy()
    train = [str(p) for p, s in zip(paths, split, strict=True) if s == "train"]
    held = [str(p) for p, s in zip(paths, split, strict=True) if s == eval_split]
    if not train or not held:
        raise DataError(
            f"manifest has {len(train)} 'train' and {len(held)} {eval_split!r} images with a path; "
            "both must be non-empty (set eval_split to a split the manifest has)"
        )
    return train, held


def resolve_images(
    cfg: AutoencoderTrainConfig, manifest_or_paths: pd.DataFrame | str | Path | Sequence | None
) -> tuple[list[str], list[str]]:
    """(train, held-out) image paths from a manifest (table or file), a list of paths, or ``cfg``."""
    root = Path(cfg.image_root) if cfg.image_root else None
    if isinstance(manifest_or_paths, pd.DataFrame):
        return manifest_split(manifest_or_paths, cfg.eval_split, root)
    if isinstance(manifest_or_paths, (str, Path)):
        path = Path(manifest_or_paths)
        return manifest_split(read_manifest(path), cfg.eval_split, root or path.parent)
    if manifest_or_paths is not None:
        return holdout_split(list(manifest_or_paths), cfg.holdout_fraction, cfg.seed)
    if cfg.manifests:
        parts = [resolve_images(cfg, m) for m in cfg.manifests]
        return [p for t, _ in parts for p in t], [p for _, h in parts for p in h]
    if cfg.image_globs:
        paths = sorted({p for pattern in cfg.image_globs for p in glob.glob(pattern, recursive=True)})
        if not paths:
            raise DataError(f"image_globs {list(cfg.image_globs)} match no files; check the patterns")
        return holdout_split(paths, cfg.holdout_fraction, cfg.seed)
    raise ConfigError("no training images: set manifests or image_globs, or pass a manifest or paths")


# --------------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------------
def random_crop(images: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` window per image (same place across channels); never a flip."""
    if size is None or size >= min(images.shape[-2:]):
        return images
    b, (h, w) = images.shape[0], images.shape[-2:]
    tops = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
    return torch.stack([img[..., t:t + size, x:x + size] for img, t, x in zip(images, tops, lefts, strict=True)])


def jitter_intensity(
    images: torch.Tensor, amount: float, image_cfg: ImageConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random per-image gain in [1 - a, 1 + a] and offset in [-a, a] on [0, 1] pixels; never a flip."""
    if amount <= 0:
        return images
    b = images.shape[0]
    draws = torch.rand((2, b, 1, 1, 1), generator=generator).to(images.device)  # (2, B, 1, 1, 1)
    gain, offset = 1.0 + amount * (2 * draws[0] - 1), amount * (2 * draws[1] - 1)
    unit = (to_unit_range(images, image_cfg) * gain + offset).clamp(0.0, 1.0)
    return from_unit_range(unit, image_cfg)


def reconstruction_loss(
    codec: LatentCodec, images: torch.Tensor, cfg: AutoencoderTrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Weighted L1 + (1 - SSIM) + KL for one batch: (loss, reconstruction, parts as floats)."""
    mean, std = codec.encode_distribution(images)
    recon = codec.decode_unscaled(sample_posterior(mean, std, generator))  # (B, 1, H, W)
    l1 = (recon - images).abs().mean()
    structural = ssim_loss(recon, images, cfg.image)
    kl = kl_loss(mean, std)
    loss = cfg.l1_weight * l1 + cfg.ssim_weight * structural + cfg.kl_weight * kl
    named = (("l1", l1), ("ssim_loss", structural), ("kl", kl))
    parts = {name: value.detach().item() for name, value in named}
    return loss, recon, parts


def discriminator_step(
    disc: PatchDiscriminator, opt: torch.optim.Optimizer, images: torch.Tensor, recon: torch.Tensor
) -> float:
    """One hinge-loss update of the PatchGAN on real images and detached reconstructions."""
    opt.zero_grad(set_to_none=True)
    loss = hinge_d_loss(disc(images), disc(recon.detach()))
    loss.backward()
    opt.step()
    return loss.detach().item()


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_codec(codec: LatentCodec, loader: DataLoader, image_cfg: ImageConfig) -> dict[str, float]:
    """Mean per-image PSNR, SSIM (on [0, 1]-mapped, clamped images) and L1 of decode(encode(x))."""
    was_training = codec.training
    codec.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0}
    n = 0
    for images in loader:
        images = images.to(codec.vae.device)
        recon = codec(images).clamp(image_cfg.low, image_cfg.high)
        pred, target = to_unit_range(recon, image_cfg), to_unit_range(images, image_cfg)
        sums["psnr"] += float(peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none",
                                                      dim=(1, 2, 3)).sum())
        sums["ssim"] += float(structural_similarity_index_measure(pred, target, data_range=1.0,
                                                                  reduction="none").sum())
        sums["l1"] += float((pred - target).abs().mean(dim=(1, 2, 3)).sum())
        n += images.shape[0]
    codec.train(was_training)
    if n == 0:
        raise DataError("no held-out images to evaluate on")
    return {k: v / n for k, v in sums.items()} | {"images": n}


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _endless(loader: DataLoader) -> Iterator[torch.Tensor]:
    while True:
        yield from loader


def _subset(dataset: Dataset, n: int, seed: int) -> Dataset:
    """At most ``n`` items of ``dataset``, a seeded random choice kept in the original order."""
    if len(dataset) <= n:
        return dataset
    chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    return Subset(dataset, chosen.tolist())


def _build_codec(cfg: AutoencoderTrainConfig) -> LatentCodec:
    """The codec to train; random init seeded from cfg.seed without touching the caller's RNG state."""
    if cfg.model.vae_channels != 1 and cfg.model.pretrained is None:
        raise ConfigError("the trainer builds 1-channel codecs: set model.vae_channels=1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return LatentCodec.build(cfg.model)


def _loss_summary(history: list[float]) -> dict[str, float]:
    k = max(1, int(LOSS_WINDOW_SHARE * len(history)))
    return {"l1_first": float(np.mean(history[:k])), "l1_last": float(np.mean(history[-k:]))}


def fit_autoencoder(
    cfg: AutoencoderTrainConfig, train_data: Dataset, eval_data: Dataset, out_dir: str | Path
) -> dict:
    """Train on datasets of (1, H, W) images, evaluate, measure scale/shift, save; returns metrics."""
    out_dir = Path(out_dir)
    device = _device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    codec = _build_codec(cfg).to(device).train()
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    disc = disc_opt = None
    if cfg.use_discriminator:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            disc = PatchDiscriminator(1, cfg.disc_channels, cfg.disc_layers).to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, weight_decay=cfg.weight_decay)
    loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    batches = _endless(loader)
    history: list[dict] = []
    losses: list[float] = []
    bar = tqdm(range(1, cfg.steps + 1), desc="autoencoder", disable=not cfg.progress)
    for step in bar:
        images = random_crop(next(batches), cfg.crop_size, gen)
        images = jitter_intensity(images, cfg.intensity_jitter, cfg.image, gen).to(device)
        loss, recon, parts = reconstruction_loss(codec, images, cfg, gen)
        adversarial = disc is not None and step >= cfg.disc_start
        if adversarial:
            adv = generator_adv_loss(disc(recon))
            loss = loss + cfg.disc_weight * adv
            parts["g_adv"] = adv.detach().item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adversarial:  # after the generator's backward, which needs the discriminator unchanged
            parts["d_loss"] = discriminator_step(disc, disc_opt, images, recon)
        losses.append(parts["l1"])
        bar.set_postfix(loss=f"{loss.detach().item():.4f}", l1=f"{parts['l1']:.4f}")
        if step % cfg.log_every == 0 or step in (1, cfg.steps):
            history.append({"step": step, "loss": loss.detach().item()} | parts)
            log.info("step %d: loss %.4f %s", step, loss.detach().item(), parts)
    return _finish(cfg, codec, train_data, eval_data, out_dir, history, losses, gen)


def _finish(cfg: AutoencoderTrainConfig, codec: LatentCodec, train_data: Dataset, eval_data: Dataset,
            out_dir: Path, history: list[dict], losses: list[float], gen: torch.Generator) -> dict:
    """Evaluate, measure and store the latent scale/shift, save codec + configs + metrics."""
    codec.eval()
    eval_set = _subset(eval_data, cfg.eval_max_images, cfg.seed)
    eval_loader = DataLoader(eval_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    held_out = evaluate_codec(codec, eval_loader, cfg.image)
    scale_set = _subset(train_data, cfg.scale_max_images, cfg.seed)
    scale_loader = DataLoader(scale_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    scale, shift = measure_scale(codec, scale_loader, generator=gen)
    codec.set_scale(scale, shift)
    codec.save_pretrained(out_dir)
    save_config(cfg, out_dir / TRAIN_CONFIG_NAME)
    metrics = {
        "steps": cfg.steps,
        "train_images": len(train_data),
        "eval": held_out,
        "train": _loss_summary(losses),
        "scale": scale,
        "shift": shift,
        "latent_shape": [codec.latent_channels] + [cfg.image.size // codec.downsample_factor] * 2,
        "history": history,
    }
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("held-out PSNR %.2f dB, SSIM %.4f; scale %.4f shift %.4f; saved to %s",
             held_out["psnr"], held_out["ssim"], scale, shift, out_dir)
    return metrics


def train_autoencoder(
    cfg: AutoencoderTrainConfig,
    manifest_or_paths: pd.DataFrame | str | Path | Sequence | None = None,
    out_dir: str | Path | None = None,
) -> dict:
    """Train the codec on a manifest (split column) or image paths (held out by fraction); metrics."""
    train_paths, eval_paths = resolve_images(cfg, manifest_or_paths)
    log.info("autoencoder: %d training and %d held-out images", len(train_paths), len(eval_paths))
    return fit_autoencoder(cfg, ImageFiles(train_paths, cfg.image), ImageFiles(eval_paths, cfg.image),
                           out_dir if out_dir is not None else cfg.out_dir)


def run_train_autoencoder(config_path: str | Path | None, overrides: list[str] | None = None,
                          out_dir: str | Path | None = None) -> dict:
    """What ``cxrgen train-autoencoder CONFIG [--set k=v] [--out DIR]`` calls: YAML in, metrics out."""
    cfg = load_config(AutoencoderTrainConfig, config_path, overrides)
    return train_autoencoder(cfg, None, out_dir)
