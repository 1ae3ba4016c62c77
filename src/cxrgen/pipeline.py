"""CXRPipeline: report text -> chest X-ray, a diffusers ``DiffusionPipeline`` saved in diffusers' layout.

    model_dir/model_index.json   the pipeline class, each part's [library, class], image_size, sampling defaults
    model_dir/text_encoder/      TextEncoder.save_pretrained (weights, or a reference to an installed package)
    model_dir/autoencoder/       an AutoencoderKL folder (scaling_factor / shift_factor in its config.json)
    model_dir/denoiser/          UViT or UNet2DConditionModel: config.json + diffusion_pytorch_model.safetensors
    model_dir/scheduler/         the training DDPMScheduler, or FlowMatchEulerDiscreteScheduler of a flow model
                                 (samplers are made from its config; its class fixes the sampler family)

>>> pipe = CXRPipeline.from_pretrained("src/cxrgen/models/default")   # or diffusers.DiffusionPipeline.from_pretrained
>>> out = pipe("Large right pleural effusion.", num_images_per_prompt=2, generator=torch.Generator().manual_seed(0))
>>> out.images.shape   # (2, 1, H, W) in [-1, 1]; output_type="pil" gives PIL images
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm

from cxrgen.config import ImageConfig, SamplingConfig
from cxrgen.errors import ConfigError
from cxrgen.guidance import guided_prediction, needs_uncond
from cxrgen.hub import looks_local
from cxrgen.integrity import check_weights_readable, record_weights, verify_weights
from cxrgen.parts import ModelParts
from cxrgen.samplers import make_scheduler, scheduler_prediction_type

log = logging.getLogger(__name__)

MODEL_INDEX_NAME = "model_index.json"
#: The packaged default model, loaded when no model is given.
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default"
#: The pipeline's parts, in the order they run; each is one sub-folder of a saved model.
PARTS = ("text_encoder", "denoiser", "autoencoder", "scheduler")
OUTPUT_TYPES = ("pt", "np", "pil")

Generators = torch.Generator | list[torch.Generator] | None


@dataclass
class PipelineOutput:
    """Images and the prompt of each image (N of them).

    ``images``: output_type "pt": (N, 1, H, W) float in [-1, 1] (cxrgen's pixel convention); "np":
    (N, H, W, 1) float in [0, 1] (diffusers' convention); "pil": N grayscale PIL images.
    """

    images: Any
    prompts: list[str]


def register_cxrgen_classes(pipe: DiffusionPipeline, names: Sequence[str]) -> None:
    """Record ["cxrgen", class] in model_index.json for each part of cxrgen's own (cxrgen exports each class)."""
    for name in names:
        module = getattr(pipe, name)
        if type(module).__module__.startswith("cxrgen."):
            pipe.register_to_config(**{name: ("cxrgen", type(module).__name__)})


class SamplingDefaults:
    """A pipeline's default sampling settings: ``self.sampling``, saved in model_index.json on every change."""

    def _init_sampling(self, sampling: SamplingConfig | dict[str, Any] | None, default: SamplingConfig) -> None:
        """Set the defaults from a config, its dict form (as read from model_index.json) or ``default``."""
        self.sampling = SamplingConfig(**sampling) if isinstance(sampling, dict) else (sampling or default)

    @property
    def sampling(self) -> SamplingConfig:
        """The default sampling settings (saved in model_index.json)."""
        return self._sampling

    @sampling.setter
    def sampling(self, value: SamplingConfig) -> None:
        self._sampling = value
        self.register_to_config(sampling=dataclasses.asdict(value))


class CXRPipeline(SamplingDefaults, DiffusionPipeline):
    """Text encoder + latent codec + denoiser + training schedule; ``pipe(prompt)`` samples images."""

    model_cpu_offload_seq = "text_encoder->denoiser->autoencoder"

    def __init__(
        self,
        text_encoder: nn.Module,
        autoencoder: nn.Module,
        denoiser: nn.Module,
        scheduler: SchedulerMixin,
        image_size: int = 256,
        sampling: SamplingConfig | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(text_encoder=text_encoder, autoencoder=autoencoder, denoiser=denoiser,
                              scheduler=scheduler)
        register_cxrgen_classes(self, ("text_encoder", "autoencoder", "denoiser"))
        self._init_sampling(sampling, SamplingConfig())
        self.register_to_config(image_size=int(image_size))
        self.image_config = ImageConfig(size=int(image_size))
        if getattr(denoiser, "prediction_type", "") is None:  # a U-Net: its target is the scheduler's
            denoiser.prediction_type = scheduler_prediction_type(scheduler)
        check_parts(self)

    # --- settings and persistence ------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Pixels per side of the generated images."""
        return self.image_config.size

    def save_pretrained(self, save_directory: str | Path, text_weights: bool = True, **kwargs: Any) -> Path:
        """Write every part to its folder and ``model_index.json`` (diffusers' ``save_pretrained``).

        ``text_weights=False`` stores a frozen text encoder by reference to its source (hub id or
        package, e.g. MiniLM) rather than copying its weights: a smaller folder that needs the source.
        """
        directory = Path(save_directory)
        if not text_weights:
            self.text_encoder.check_by_reference()
        super().save_pretrained(directory, **kwargs)
        if not text_weights:
            shutil.rmtree(directory / "text_encoder")
            self.text_encoder.save_pretrained(directory / "text_encoder", weights=False)
        record_weights(directory)
        return directory

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> CXRPipeline:
        """Load a folder written by ``save_pretrained`` (or a hub id); failures raise ConfigError saying what to do."""
        source = str(pretrained_model_name_or_path)
        local = Path(source).expanduser()
        if local.is_dir():
            verify_model_folder(local)
        elif looks_local(source):
            raise ConfigError(f"model directory {source} does not exist: give a directory written by "
                              "CXRPipeline.save_pretrained or a Hugging Face hub id (owner/name)")
        try:
            pipe = super().from_pretrained(source, **kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as exc:
            if local.is_dir():
                check_weights_readable(local)  # names a truncated or corrupt weights file
            part = _failing_part(local) if local.is_dir() else None
            if part is not None:
                raise ConfigError(f"cannot load the {part} from {local / part} ({type(exc).__name__}: {exc}); "
                                  f"re-save the model or replace the {part}/ folder") from exc
            raise ConfigError(f"cannot load a CXRPipeline from {source} ({type(exc).__name__}: {exc}); give a "
                              "local folder written by CXRPipeline.save_pretrained (or `cxrgen train`), or a "
                              "hub id you can reach") from exc
        log.info("loaded CXRPipeline from %s", source)
        return pipe.eval()

    def parts(self) -> ModelParts:
        """The three networks as ModelParts (e.g. for ``cxrgen.parts.describe_parts``)."""
        spec = self.denoiser.spec
        return ModelParts(self.denoiser, self.text_encoder, self.autoencoder,
                          (spec.in_channels, spec.sample_size, spec.sample_size), self.text_encoder.context_length)

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
        prompt: list[str] | str,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        num_images_per_prompt: int | None = None,
        generator: Generators = None,
        output_type: str = "pt",
        return_dict: bool = True,
        sampler: str | None = None,
        progress: bool = True,
    ) -> PipelineOutput | tuple[Any, list[str]]:
        """Sample images for ``prompt`` (one or a list); unset arguments come from ``self.sampling``.

        ``generator`` is one torch.Generator, or a list with one per image (each image then depends
        only on its own generator); None uses a CPU generator seeded with ``sampling.seed``.
        """
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type={output_type!r}: use one of {list(OUTPUT_TYPES)}")
        cfg = self._settings(num_images_per_prompt, num_inference_steps, guidance_scale, negative_prompt, sampler)
        out = self.sample(prompt, cfg, generator, progress)
        out.images = convert_images(out.images, output_type)
        return out if return_dict else (out.images, out.prompts)

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

    def _settings(self, n: int | None, steps: int | None, guidance_scale: float | None, negative: str | None,
                  sampler: str | None) -> SamplingConfig:
        """The sampling config of one call: the given values over ``self.sampling`` (checked)."""
        given = {"num_images_per_prompt": n, "steps": steps, "guidance_scale": guidance_scale,
                 "negative_prompt": negative, "sampler": sampler}
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
        scheduler = make_scheduler(cfg.sampler, self.scheduler)  # fresh: multistep state is per call
        device = self.device
        scheduler.set_timesteps(cfg.steps, device=device)
        spec = self.denoiser.spec
        shape = (context.shape[0], spec.in_channels, spec.sample_size, spec.sample_size)
        dtype = next(self.denoiser.parameters()).dtype
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (N, C, h, w)
        latents = latents * (getattr(scheduler, "init_noise_sigma", None) or 1.0)  # flow schedulers: none (1)
        step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
        context = context.to(dtype)
        if uncond_context is not None:
            uncond_context = uncond_context.to(dtype)
        for t in tqdm(scheduler.timesteps, desc=f"sampling ({cfg.sampler})", disable=not progress, leave=False):
            # Euler: z / sqrt(sigma^2 + 1); flow samplers have no input scaling (t = sigma * T as trained)
            model_input = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
            pred = guided_prediction(self.denoiser, model_input, t, context, mask, uncond_context, uncond_mask,
                                     cfg.guidance_scale)
            latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
        return latents


# --- the one way every entry point loads a model ---------------------------------------------
def resolve_model(model: str | Path | None) -> str:
    """The model to load: ``model``, else the packaged default (an error saying to pass --model if absent)."""
    if model is not None:
        return str(model)
    if not (DEFAULT_MODEL / MODEL_INDEX_NAME).is_file():
        raise ConfigError(f"no default model is packaged at {DEFAULT_MODEL}: pass --model DIR (a model "
                          "directory written by `cxrgen train` or CXRPipeline.save_pretrained)")
    return str(DEFAULT_MODEL)


def load_pipeline(model: str | Path | None = None, device: str | torch.device | None = None,
                  **sampling: Any) -> CXRPipeline:
    """The pipeline of ``model`` (None: the packaged default) on ``device``, for every entry point.

    ``sampling``: SamplingConfig fields (steps, guidance_scale, sampler, negative_prompt, seed,
    num_images_per_prompt) that replace the model's defaults; None values keep them.
    """
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    unknown = sorted(set(sampling) - known)
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {unknown}; valid: {sorted(known)}")
    pipe = CXRPipeline.from_pretrained(resolve_model(model))
    if device is not None:
        pipe.to(device)
    given = {k: v for k, v in sampling.items() if v is not None}
    if given:
        pipe.sampling = dataclasses.replace(pipe.sampling, **given)
    return pipe


def model_label(model: str | Path | None) -> str:
    """How a model is recorded in outputs: the resolved folder path, or the hub id."""
    location = resolve_model(model)
    return str(Path(location).resolve()) if Path(location).is_dir() else location


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
    den = pipe.denoiser.spec
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
    if den.context_len is not None and text.context_length > den.context_len:
        raise ConfigError(f"text_encoder context length {text.context_length} exceeds denoiser context_len="
                          f"{den.context_len}: the text encoder does not belong to this denoiser")
    if not isinstance(pipe.scheduler, SchedulerMixin):
        raise ConfigError(f"scheduler is a {type(pipe.scheduler).__name__}: give a diffusers scheduler "
                          "(cxrgen.samplers.training_scheduler)")
    predicts = scheduler_prediction_type(pipe.scheduler)  # flow_prediction for a rectified-flow scheduler
    if den.prediction_type is not None and predicts != den.prediction_type:
        raise ConfigError(f"scheduler prediction_type={predicts!r} != denoiser prediction_type="
                          f"{den.prediction_type!r}: the scheduler must be the denoiser's training schedule")


def verify_model_folder(directory: Path) -> None:
    """Check a local model folder before loading it: the one place for folder-level checks."""
    if not (directory / MODEL_INDEX_NAME).is_file():
        raise ConfigError(f"{directory} holds no {MODEL_INDEX_NAME}: give a model directory written by "
                          "CXRPipeline.save_pretrained (or by `cxrgen train`)")
    missing = [f"{part}/" for part in PARTS if not (directory / part).is_dir()]
    if missing:
        raise ConfigError(f"model directory {directory} lacks the part folder(s) {', '.join(missing)}; "
                          "copy the whole directory written by save_pretrained")
    verify_weights(directory)


def _failing_part(directory: Path) -> str | None:
    """The first part whose folder does not load on its own (to name it in an error), else None."""
    index = json.loads((directory / MODEL_INDEX_NAME).read_text(encoding="utf-8"))
    for part in PARTS:
        try:
            library, class_name = index[part]
            getattr(importlib.import_module(library), class_name).from_pretrained(directory / part)
        except Exception:  # noqa: BLE001 - any failure names this part
            return part
    return None


def convert_images(images: torch.Tensor, output_type: str) -> Any:
    """(N, 1, H, W) in [-1, 1] as "pt" (unchanged), "np" (N, H, W, 1) in [0, 1] or "pil" (8-bit grayscale)."""
    if output_type == "pt":
        return images
    unit = ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (N, H, W, 1) in [0, 1]
    if output_type == "np":
        return unit
    return [Image.fromarray(np.round(x[..., 0] * 255).astype(np.uint8)) for x in unit]


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


# diffusers.DiffusionPipeline.from_pretrained looks a model_index.json's "_class_name" up in the diffusers
# namespace; naming CXRPipeline there lets it load cxrgen folders once cxrgen.pipeline is imported.
if not hasattr(diffusers, CXRPipeline.__name__):
    setattr(diffusers, CXRPipeline.__name__, CXRPipeline)
