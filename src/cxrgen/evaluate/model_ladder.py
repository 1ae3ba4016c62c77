"""The sanity ladder's model rungs: image sets made by real models of the project, not by degrading images.

From best to worst (each a set of images for the prompts of real held-out images):

0. ``heldout``: the real held-out images;
1. ``autoencoder``: the same images through the model's latent autoencoder (encode, decode): what a
   perfect denoiser in that latent space would give, the best this model can reach;
2. ``default_model``: samples of the model (its own sampling defaults) for the held-out images' prompts;
3. ``untrained_denoiser``: samples of the same pipeline with its denoiser at random initialisation
   (0 training steps), decoded by the trained autoencoder: a barely trained model;
4. ``noise``: uniform noise in [-1, 1].

Sampling costs about a second per image on a CPU, so this ladder is for ``tools/sanity_ladder.py``,
not for a unit test.
"""

from __future__ import annotations

import logging

import torch

from cxrgen.evaluate.image_pairs import resize
from cxrgen.pipeline import CXRPipeline, load_pipeline

log = logging.getLogger(__name__)

MODEL_RUNGS = ("heldout", "autoencoder", "default_model", "untrained_denoiser", "noise")


@torch.no_grad()
def autoencode(pipe: CXRPipeline, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Images (N, 1, S, S) through the pipeline's autoencoder at its image size (posterior mean), back at S."""
    size, native = images.shape[-1], pipe.image_config.size
    out = []
    for batch in images.split(batch_size):
        latents = pipe.autoencoder.encode(resize(batch, native))  # mean of q(z | x) without a generator
        out.append(resize(pipe.autoencoder.decode(latents).float().clamp(-1, 1), size))
    return torch.cat(out)


def untrained_pipeline(model: str | None, seed: int) -> CXRPipeline:
    """The pipeline of ``model`` loaded anew, its denoiser re-initialised at random (0 training steps)."""
    pipe = load_pipeline(model)
    with torch.random.fork_rng(devices=[]):  # the denoiser's own init draws from the global RNG: seed a fork
        torch.manual_seed(seed)
        fresh = type(pipe.denoiser).from_config(pipe.denoiser.config)
    pipe.denoiser.load_state_dict(fresh.state_dict())
    return pipe


def sample(pipe: CXRPipeline, prompts: list[str], size: int, seed: int, batch_size: int = 8) -> torch.Tensor:
    """One image per prompt (N, 1, size, size) with the pipeline's own sampling settings, image i seeded seed + i."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out.append(resize(pipe(chunk, num_images_per_prompt=1, generator=gens, progress=False).images.float(), size))
    return torch.cat(out)


def model_rungs(model: str | None, heldout: torch.Tensor, prompts: list[str],
                generator: torch.Generator, seed: int = 0) -> dict[str, torch.Tensor]:
    """The five model rungs (``MODEL_RUNGS``) of ``model`` (None: the packaged default) for real held-out
    images (N, 1, S, S) and their prompts."""
    size, pipe = heldout.shape[-1], load_pipeline(model)
    log.info("model ladder: autoencoding %d images, sampling %d prompts twice", len(heldout), len(prompts))
    return {
        "heldout": heldout,
        "autoencoder": autoencode(pipe, heldout),
        "default_model": sample(pipe, prompts, size, seed),
        "untrained_denoiser": sample(untrained_pipeline(model, seed), prompts, size, seed),
        "noise": torch.rand(heldout.shape, generator=generator) * 2 - 1,
    }
