"""A model's own recipe run for a few steps from scratch: the "barely trained" model of the sanity ladder.

The recipe is the model folder's ``train_config.yaml`` (objective, optimizer, warm-up, EMA, guidance
dropout); only the number of steps (and, where asked, the batch size) is cut, the images it trains on
are given, and the denoiser starts from a fresh random initialisation. The model's trained text encoder
and autoencoder are kept, frozen as in the recipe, and the images are encoded once as ``cxrgen cache`` does.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from cxrgen.config import TrainConfig, load_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.errors import ConfigError
from cxrgen.parts import ModelParts
from cxrgen.pipeline import CXRPipeline, load_pipeline, resolve_model
from cxrgen.train.trainer import train

log = logging.getLogger(__name__)


def model_recipe(model: str | Path | None) -> TrainConfig:
    """The training config a model folder was made with (its ``train_config.yaml``); ConfigError without one."""
    path = Path(resolve_model(model)) / TRAIN_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path.parent} has no {TRAIN_CONFIG_NAME}, so its recipe is unknown: pass the "
                          "training config (recipe=) explicitly")
    return load_config(TrainConfig, path)


@torch.no_grad()
def latent_items(pipe: CXRPipeline, images: torch.Tensor, prompts: list[str], batch_size: int = 16) -> list[dict]:
    """Training items of images (N, 1, S, S), encoded once as ``cxrgen cache`` does: {"latent_mean",
    "latent_std": (C, h, w), "prompt"}, plus "context" (L, D) and "mask" (L,) for a frozen text encoder."""
    if len(prompts) != images.shape[0]:
        raise ConfigError(f"{images.shape[0]} training images but {len(prompts)} prompts: give one prompt per image")
    frozen, size = not pipe.text_encoder.trainable, pipe.image_config.size
    items = []
    for start in range(0, images.shape[0], batch_size):
        chunk = prompts[start:start + batch_size]
        batch = torch.nn.functional.interpolate(images[start:start + batch_size].float(), size=(size, size),
                                                mode="bilinear", antialias=True, align_corners=False)
        mean, std = pipe.autoencoder.encode_distribution(batch)  # (B, C, h, w) each, unscaled
        context, mask = pipe.text_encoder.encode(chunk) if frozen else (None, None)  # (B, L, D), (B, L)
        for i, prompt in enumerate(chunk):
            item = {"latent_mean": mean[i].float(), "latent_std": std[i].float(), "prompt": prompt}
            if frozen:
                item |= {"context": context[i].float(), "mask": mask[i].bool()}
            items.append(item)
    return items


def fresh_denoiser(pipe: CXRPipeline, seed: int) -> nn.Module:
    """A new denoiser of the pipeline's architecture at random initialisation (0 training steps)."""
    with torch.random.fork_rng(devices=[]):  # the denoiser's own init draws from the global RNG: seed a fork
        torch.manual_seed(seed)
        return type(pipe.denoiser).from_config(pipe.denoiser.config)


def train_from_scratch(model: str | Path | None, images: torch.Tensor, prompts: list[str], out_dir: str | Path,
                       steps: int, batch_size: int | None = None, seed: int = 0,
                       recipe: TrainConfig | None = None) -> CXRPipeline:
    """``model``'s recipe (or ``recipe``) run ``steps`` steps from a fresh denoiser on images (N, 1, S, S) and
    their prompts; written to ``out_dir`` like any ``cxrgen train`` run (a previous run there is replaced)."""
    if steps < 1 or (batch_size is not None and batch_size < 1):
        raise ConfigError(f"steps={steps}, batch_size={batch_size}: give positive numbers")
    pipe = load_pipeline(model)
    recipe = recipe if recipe is not None else model_recipe(model)
    cfg = dataclasses.replace(
        recipe, steps=steps, batch_size=batch_size or recipe.batch_size, grad_accum=1, checkpoint_every=steps,
        keep_checkpoints=1, sample_every=0, validation_prompts=(), log_every=steps, progress=False, seed=seed,
        cache_dir=None, manifests=(), out_dir=str(out_dir),
        model=dataclasses.replace(recipe.model, denoiser=dataclasses.replace(recipe.model.denoiser, pretrained=None)))
    parts = ModelParts(denoiser=fresh_denoiser(pipe, seed), text_encoder=pipe.text_encoder, autoencoder=pipe.autoencoder)
    log.info("the recipe of %s from scratch: %d steps x batch %d on %d images", model or "the default model",
             steps, cfg.batch_size, len(prompts))
    summary = train(cfg, out_dir=out_dir, parts=parts, dataset=latent_items(pipe, images, prompts), overwrite=True)
    return load_pipeline(summary["model_dir"])
