"""CXRPipeline: report text -> chest X-ray, and the model directory it is saved to and loaded from.

Layout (diffusers-like), one folder per part:

    model_dir/model_index.json   class, cxrgen version, part folders, image_size
    model_dir/text_encoder/      TextEncoder.save_pretrained
    model_dir/autoencoder/       LatentCodec.save_pretrained
    model_dir/denoiser/          denoiser.save_pretrained
    model_dir/scheduler/         the training DDPMScheduler (samplers are made from its config)
    model_dir/sampling.yaml      the default SamplingConfig

>>> pipe = CXRPipeline.from_pretrained("runs/cxrgen/model")
>>> out = pipe(["small left pleural effusion"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0))
>>> out.images.shape   # (2, 1, H, W) in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm

from cxrgen import __version__
from cxrgen.autoencoder import LatentCodec
from cxrgen.config import ImageConfig, SamplingConfig, load_config, save_config
from cxrgen.denoisers import load_denoiser
from cxrgen.errors import ConfigError
from cxrgen.guidance import guided_prediction, needs_uncond
from cxrgen.integrity import check_weights_readable, record_weights, verify_weights
from cxrgen.parts import PART_FOLDERS
from cxrgen.samplers import make_scheduler
from cxrgen.text import TextEncoder, load_text_encoder

log = logging.getLogger(__name__)

MODEL_INDEX_NAME = "model_index.json"
SAMPLING_CONFIG_NAME = "sampling.yaml"
SCHEDULER_FOLDER = "scheduler"
#: Part name -> folder; the folders model_index.json names (and save_pretrained writes).
FOLDERS = {**PART_FOLDERS, "scheduler": SCHEDULER_FOLDER}
#: A Hugging Face hub id: "owner/name" (tried only when no such local directory exists).
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

Generators = torch.Generator | list[torch.Generator] | None


@dataclass
class PipelineOutput:
    """Images (N, 1, H, W) float in [-1, 1] and the prompt of each image (N of them)."""

    images: torch.Tensor
    prompts: list[str]


class CXRPipeline:
    """Text encoder + latent codec + denoiser + training schedule; ``pipe(prompts)`` samples images."""

    def __init__(
        self,
        text_encoder: TextEncoder,
        autoencoder: LatentCodec,
        denoiser: nn.Module,
        scheduler: SchedulerMixin,
        image_size: int,
        sampling: SamplingConfig | None = None,
    ) -> None:
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.image_config = ImageConfig(size=image_size)
        self.sampling = sampling or SamplingConfig()
        check_parts(self)

    # --- persistence -------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Pixels per side of the generated images."""
        return self.image_config.size

    def save_pretrained(self, directory: str | Path, text_weights: bool = True) -> Path:
        """Write every part to its folder, the default sampling config and ``model_index.json``.

        ``text_weights=False`` stores a frozen text encoder by reference to its source (hub id or
        package, e.g. MiniLM) rather than copying its weights: a smaller folder that needs the source.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.text_encoder.save_pretrained(directory / FOLDERS["text_encoder"], weights=text_weights)
        self.autoencoder.save_pretrained(directory / FOLDERS["autoencoder"])
        self.denoiser.save_pretrained(directory / FOLDERS["denoiser"])
        self.scheduler.save_pretrained(directory / FOLDERS["scheduler"])
        save_config(self.sampling, directory / SAMPLING_CONFIG_NAME)
        index = {"_class_name": type(self).__name__, "_cxrgen_version": __version__, **FOLDERS,
                 "image_size": self.image_size}
        (directory / MODEL_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        record_weights(directory)
        return directory

    @classmethod
    def from_pretrained(cls, dir_or_id: str | Path) -> CXRPipeline:
        """Load a directory written by ``save_pretrained``, or a hub id (downloaded, then loaded)."""
        directory = _resolve_model_dir(dir_or_id)
        index_path = directory / MODEL_INDEX_NAME
        if not index_path.is_file():
            raise ConfigError(f"{directory} holds no {MODEL_INDEX_NAME}: give a model directory written by "
                              "CXRPipeline.save_pretrained (or by `cxrgen train`)")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        folders = {part: directory / str(index.get(part, default)) for part, default in FOLDERS.items()}
        missing = [f"{part} ({path.name}/)" for part, path in folders.items() if not path.is_dir()]
        if missing:
            raise ConfigError(f"model directory {directory} lacks the part folder(s) {', '.join(missing)}; "
                              "copy the whole directory written by save_pretrained")
        if "image_size" not in index:
            raise ConfigError(f"{index_path} lacks image_size: re-save the model with CXRPipeline.save_pretrained")
        verify_weights(directory)
        sampling_path = directory / SAMPLING_CONFIG_NAME
        sampling = load_config(SamplingConfig, sampling_path) if sampling_path.is_file() else None
        pipe = cls(
            text_encoder=_load_part("text_encoder", load_text_encoder, folders["text_encoder"]),
            autoencoder=_load_part("autoencoder", LatentCodec.from_pretrained, folders["autoencoder"]),
            denoiser=_load_part("denoiser", load_denoiser, folders["denoiser"]),
            scheduler=_load_part("scheduler", DDPMScheduler.from_pretrained, folders["scheduler"]),
            image_size=int(index["image_size"]),
            sampling=sampling,
        )
        log.info("loaded CXRPipeline from %s", directory)
        return pipe.eval()

    # --- device ------------------------------------------------------------------------------
    def modules(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The three networks: text encoder, autoencoder, denoiser."""
        return self.text_encoder, self.autoencoder, self.denoiser

    def to(self, device: str | torch.device) -> CXRPipeline:
        """Move every network to ``device`` (the generators stay where they are: CPU noise is portable)."""
        for module in self.modules():
            module.to(device)
        return self

    def eval(self) -> CXRPipeline:
        """Put every network in eval mode (no dropout)."""
        for module in self.modules():
            module.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Device of the denoiser's parameters."""
        return next(self.denoiser.parameters()).device

    # --- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompts: list[str] | str,
        num_images_per_prompt: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        sampler: str | None = None,
        generator: Generators = None,
        progress: bool = True,
    ) -> PipelineOutput:
        """Sample images for ``prompts``; unset arguments come from ``self.sampling``.

        ``generator`` is one torch.Generator, or a list with one per image (each image then depends
        only on its own generator); None uses a CPU generator seeded with ``sampling.seed``.
        """
        cfg = self._settings(num_images_per_prompt, num_inference_steps, guidance_scale, negative_prompt, sampler)
        return self.sample(prompts, cfg, generator, progress)

    @torch.no_grad()
    def sample(self, prompts: list[str] | str, cfg: SamplingConfig, generator: Generators = None,
               progress: bool = True) -> PipelineOutput:
        """Sample with every setting from ``cfg`` (its negative_prompt None means the null prompt)."""
        prompts = check_prompts([prompts] if isinstance(prompts, str) else prompts)
        image_prompts = [p for p in prompts for _ in range(cfg.num_images_per_prompt)]
        n = len(image_prompts)
        if generator is None:
            generator = torch.Generator().manual_seed(cfg.seed)
        if isinstance(generator, list) and len(generator) != n:
            raise ConfigError(f"got {len(generator)} generators for {n} images: give one per image or a single one")
        with _eval_mode(self.modules()):  # no dropout, even mid-training; modes restored after
            context, mask, uncond_context, uncond_mask = self._encode(prompts, cfg)
            latents = self._denoise(context, mask, uncond_context, uncond_mask, cfg, generator, progress)
            images = self.autoencoder.decode(latents).float()  # (N, 1, H, W)
        images = images.clamp(self.image_config.low, self.image_config.high)
        return PipelineOutput(images=images.cpu(), prompts=image_prompts)

    def _settings(self, n: int | None, steps: int | None, w: float | None, negative: str | None,
                  sampler: str | None) -> SamplingConfig:
        """The sampling config of one call: the given values over ``self.sampling`` (checked)."""
        given = {"num_images_per_prompt": n, "steps": steps, "guidance_scale": w, "negative_prompt": negative,
                 "sampler": sampler}
        return dataclasses.replace(self.sampling, **{k: v for k, v in given.items() if v is not None})

    def _encode(self, prompts: list[str], cfg: SamplingConfig) -> tuple[torch.Tensor, ...]:
        """Context (N, L, D) and mask (N, L) of the prompts, each repeated per image, and the uncond ones."""
        reps = cfg.num_images_per_prompt
        context, mask = self.text_encoder.encode(prompts)  # (P, L, D), (P, L)
        device = self.device
        context = context.repeat_interleave(reps, 0).to(device)  # (N, L, D)
        mask = mask.repeat_interleave(reps, 0).to(device)  # (N, L)
        if not needs_uncond(cfg.guidance_scale):
            return context, mask, None, None
        n = context.shape[0]
        if cfg.negative_prompt is None:
            uncond_context, uncond_mask = self.text_encoder.encode_null(1)  # (1, L', D)
        else:
            uncond_context, uncond_mask = self.text_encoder.encode([cfg.negative_prompt])
        uncond_context = uncond_context.expand(n, -1, -1).to(device)  # (N, L', D)
        return context, mask, uncond_context, uncond_mask.expand(n, -1).to(device)

    def _denoise(self, context: torch.Tensor, mask: torch.Tensor, uncond_context: torch.Tensor | None,
                 uncond_mask: torch.Tensor | None, cfg: SamplingConfig, generator: Generators,
                 progress: bool) -> torch.Tensor:
        """Run the sampler from noise to clean latents (N, C, h, w)."""
        scheduler = make_scheduler(cfg.sampler, self.scheduler.config)  # fresh: multistep state is per call
        device = self.device
        scheduler.set_timesteps(cfg.steps, device=device)
        den_cfg = self.denoiser.config
        shape = (context.shape[0], den_cfg.in_channels, den_cfg.sample_size, den_cfg.sample_size)
        dtype = next(self.denoiser.parameters()).dtype
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (N, C, h, w)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
        context = context.to(dtype)
        if uncond_context is not None:
            uncond_context = uncond_context.to(dtype)
        for t in tqdm(scheduler.timesteps, desc=f"sampling ({cfg.sampler})", disable=not progress, leave=False):
            model_input = scheduler.scale_model_input(latents, t)  # Euler: z / sqrt(sigma^2 + 1)
            pred = guided_prediction(self.denoiser, model_input, t, context, mask, uncond_context, uncond_mask,
                                     cfg.guidance_scale)
            latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
        return latents


# --- checks and loading helpers --------------------------------------------------------------
def check_prompts(prompts: list[str]) -> list[str]:
    """A non-empty list of non-blank strings; anything else raises ConfigError naming the prompt."""
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("no prompts given: give at least one report text")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt {i} is a {type(prompt).__name__}, not text: give report text strings")
        if not prompt.strip():
            raise ConfigError(f"prompt {i} is empty: give report text (e.g. 'small left pleural effusion')")
    return prompts


def check_parts(pipe: CXRPipeline) -> None:
    """Raise ConfigError naming the part when the parts do not fit each other."""
    den = pipe.denoiser.config
    codec, text = pipe.autoencoder, pipe.text_encoder
    if den.in_channels != codec.latent_channels:
        raise ConfigError(f"denoiser in_channels={den.in_channels} != autoencoder latent channels="
                          f"{codec.latent_channels}: the denoiser was not trained on this autoencoder's latents")
    if den.context_dim != text.hidden_size:
        raise ConfigError(f"denoiser context_dim={den.context_dim} != text_encoder hidden size={text.hidden_size}: "
                          "the denoiser was not trained with this text encoder")
    if den.sample_size * codec.downsample_factor != pipe.image_size:
        raise ConfigError(f"denoiser sample_size={den.sample_size} x autoencoder factor {codec.downsample_factor} "
                          f"!= image_size={pipe.image_size}: fix image_size in model_index.json or the parts")
    if text.context_length > den.context_len:
        raise ConfigError(f"text_encoder context length {text.context_length} exceeds denoiser context_len="
                          f"{den.context_len}: the text encoder does not belong to this denoiser")
    if not isinstance(pipe.scheduler, SchedulerMixin):
        raise ConfigError(f"scheduler is a {type(pipe.scheduler).__name__}: give a diffusers scheduler "
                          "(cxrgen.samplers.training_scheduler)")
    predicts = pipe.scheduler.config.prediction_type
    if predicts != den.prediction_type:
        raise ConfigError(f"scheduler prediction_type={predicts!r} != denoiser prediction_type="
                          f"{den.prediction_type!r}: the scheduler must be the denoiser's training schedule")


def _resolve_model_dir(dir_or_id: str | Path) -> Path:
    """A local model directory, or the snapshot of a hub id (downloads fail offline: clear error)."""
    path = Path(dir_or_id)
    if path.is_dir():
        return path
    if not _HUB_ID.match(str(dir_or_id)):
        raise ConfigError(f"model directory {dir_or_id} does not exist: give a directory written by "
                          "CXRPipeline.save_pretrained or a Hugging Face hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(dir_or_id)))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{dir_or_id} is not a local directory and could not be downloaded from the "
                          f"Hugging Face hub ({type(exc).__name__}: {exc}); offline, give a local model "
                          "directory written by CXRPipeline.save_pretrained") from exc


def _load_part(part: str, loader: Any, folder: Path) -> Any:
    """Load one part, re-raising a failure as ConfigError naming the part and its folder."""
    try:
        return loader(folder)
    except ConfigError as exc:
        raise ConfigError(f"{part} ({folder}): {exc}") from exc
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        check_weights_readable(folder)  # names a truncated or corrupt weights file
        raise ConfigError(f"cannot load the {part} from {folder} ({type(exc).__name__}: {exc}); "
                          f"re-save the model or replace the {part}/ folder") from exc


@contextmanager
def _eval_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Put every (sub)module in eval mode inside the block, then restore each one's own flag."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module, _ in flags:
        module.training = False
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _accepts(fn: Any, name: str) -> bool:
    """Whether callable ``fn`` takes a keyword argument ``name`` (PNDM's step takes no generator)."""
    return name in inspect.signature(fn).parameters
