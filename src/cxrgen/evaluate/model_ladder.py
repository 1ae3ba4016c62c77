"""The sanity ladder made of real models: the issue's ladder, with model samples, not hand-made degradations.

From best to worst (each a set of images for the prompts of real held-out images):

0. ``heldout``: the real held-out images;
1. ``blur_noise``: the same images blurred and with added noise (``ladder.blur_noise``);
2. ``default_model``: samples of the model (the packaged default when none is given);
3. ``barely_trained``: samples of the same model's own recipe (its ``train_config.yaml``: objective,
   optimizer, warm-up, EMA, guidance dropout) run for a few dozen steps from a freshly initialised
   denoiser on a few training images, with the model's trained text encoder and autoencoder;
4. ``noise``: uniform noise in [-1, 1].

Both models sample with the same sampler and number of steps. The recipe is the model's; only the
number of steps (and, where asked, the batch size) is cut, and the images it trains on are given.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrgen.config import TrainConfig, load_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.errors import ConfigError
from cxrgen.evaluate.image_pairs import resize
from cxrgen.evaluate.ladder import blur_noise
from cxrgen.parts import ModelParts
from cxrgen.pipeline import CXRPipeline, load_pipeline, resolve_model

log = logging.getLogger(__name__)

MODEL_RUNGS = ("heldout", "blur_noise", "default_model", "barely_trained", "noise")


@dataclass(frozen=True)
class ModelLadderSettings:
    """How the model rungs are made: sampling, the barely trained run, the blur + noise rung."""

    sampler_steps: int | None = None  # steps of the models' own sampler for both models; None: the model's default
    barely_trained_steps: int = 30  # optimizer steps of the recipe from scratch
    barely_trained_batch: int | None = None  # None: the recipe's batch size
    blur_sigma: float = 1.0  # Gaussian blur in px at 64 px (scaled with the image size)
    noise_std: float = 0.05  # added Gaussian noise, in [-1, 1] units
    seed: int = 0

    def __post_init__(self) -> None:
        if self.barely_trained_steps < 1 or (self.sampler_steps is not None and self.sampler_steps < 1):
            raise ConfigError(f"{self}: barely_trained_steps and sampler_steps must be >= 1")
        if self.barely_trained_batch is not None and self.barely_trained_batch < 1:
            raise ConfigError(f"barely_trained_batch={self.barely_trained_batch}: give a batch size >= 1")


def sample(pipe: CXRPipeline, prompts: list[str], size: int, seed: int, batch_size: int = 8) -> torch.Tensor:
    """One image per prompt (N, 1, size, size) with the pipeline's sampling settings, image i seeded seed + i."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out.append(resize(pipe(chunk, num_images_per_prompt=1, generator=gens, progress=False).images.float(), size))
    return torch.cat(out)


def model_recipe(model: str | None) -> TrainConfig:
    """The training config a model folder was made with (its ``train_config.yaml``); ConfigError without one."""
    path = Path(resolve_model(model)) / TRAIN_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path.parent} has no {TRAIN_CONFIG_NAME}, so its recipe is unknown: pass the "
                          "training config (recipe=) of the barely trained rung explicitly")
    return load_config(TrainConfig, path)


@torch.no_grad()
def latent_items(pipe: CXRPipeline, images: torch.Tensor, prompts: list[str], batch_size: int = 16) -> list[dict]:
    """Training items of images (N, 1, S, S), encoded once as ``cxrgen cache`` does: {"latent_mean",
    "latent_std": (C, h, w), "prompt"}, plus "context" (L, D) and "mask" (L,) for a frozen text encoder."""
    if len(prompts) != images.shape[0]:
        raise ConfigError(f"{images.shape[0]} training images but {len(prompts)} prompts: give one prompt per image")
    frozen = not pipe.text_encoder.trainable
    items = []
    for start in range(0, images.shape[0], batch_size):
        chunk = prompts[start:start + batch_size]
        mean, std = pipe.autoencoder.encode_distribution(resize(images[start:start + batch_size], pipe.image_config.size))
        context, mask = pipe.text_encoder.encode(chunk) if frozen else (None, None)  # (B, L, D), (B, L)
        for i, prompt in enumerate(chunk):
            item = {"latent_mean": mean[i].float(), "latent_std": std[i].float(), "prompt": prompt}
            if frozen:
                item |= {"context": context[i].float(), "mask": mask[i].bool()}
            items.append(item)
    return items


def fresh_denoiser(pipe: CXRPipeline, seed: int) -> torch.nn.Module:
    """A new denoiser of the pipeline's architecture at random initialisation (0 training steps)."""
    with torch.random.fork_rng(devices=[]):  # the denoiser's own init draws from the global RNG: seed a fork
        torch.manual_seed(seed)
        return type(pipe.denoiser).from_config(pipe.denoiser.config)


def barely_trained_pipeline(model: str | None, images: torch.Tensor, prompts: list[str], out_dir: str | Path,
                            settings: ModelLadderSettings = ModelLadderSettings(),
                            recipe: TrainConfig | None = None) -> CXRPipeline:
    """``model``'s recipe run for ``settings.barely_trained_steps`` steps from a fresh denoiser on ``images``.

    The trained text encoder and autoencoder are kept (frozen, as in the recipe); the run is written
    to ``out_dir`` like any ``cxrgen train`` run and its model loaded back.
    """
    from cxrgen.train.trainer import train  # training is only needed for this rung

    pipe = load_pipeline(model)
    recipe = recipe if recipe is not None else model_recipe(model)
    steps = settings.barely_trained_steps
    cfg = dataclasses.replace(
        recipe, steps=steps, batch_size=settings.barely_trained_batch or recipe.batch_size, grad_accum=1,
        checkpoint_every=steps, keep_checkpoints=1, sample_every=0, validation_prompts=(), log_every=steps,
        progress=False, seed=settings.seed, cache_dir=None, manifests=(), out_dir=str(out_dir),
        model=dataclasses.replace(recipe.model, denoiser=dataclasses.replace(recipe.model.denoiser, pretrained=None)))
    parts = ModelParts(denoiser=fresh_denoiser(pipe, settings.seed), text_encoder=pipe.text_encoder,
                       autoencoder=pipe.autoencoder)
    log.info("barely trained rung: %d steps x batch %d of the recipe from scratch on %d images",
             steps, cfg.batch_size, len(prompts))
    summary = train(cfg, out_dir=out_dir, parts=parts, dataset=latent_items(pipe, images, prompts), overwrite=True)
    return load_pipeline(summary["model_dir"])


def model_rungs(model: str | None, heldout: torch.Tensor, prompts: list[str], train_images: torch.Tensor,
                train_prompts: list[str], work_dir: str | Path, generator: torch.Generator,
                settings: ModelLadderSettings = ModelLadderSettings(),
                recipe: TrainConfig | None = None) -> dict[str, torch.Tensor]:
    """The five rungs (``MODEL_RUNGS``) for real held-out images (N, 1, S, S) and their prompts.

    ``model`` (None: the packaged default) is the well-trained rung; its recipe trained on
    ``train_images`` / ``train_prompts`` (never the held-out ones) in ``work_dir`` is the barely trained rung.
    """
    size, seed, steps = heldout.shape[-1], settings.seed, settings.sampler_steps
    default = load_pipeline(model, steps=steps)
    barely = barely_trained_pipeline(model, train_images, train_prompts, work_dir, settings, recipe)
    barely.sampling = default.sampling  # the same sampler, steps and guidance for both models
    log.info("model ladder: sampling %d prompts from each model (%s sampler steps)", len(prompts), steps or "default")
    return {
        "heldout": heldout,
        "blur_noise": blur_noise(heldout, settings.blur_sigma, settings.noise_std, generator),
        "default_model": sample(default, prompts, size, seed),
        "barely_trained": sample(barely, prompts, size, seed),
        "noise": torch.rand(heldout.shape, generator=generator) * 2 - 1,
    }
