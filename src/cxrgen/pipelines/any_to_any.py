"""MultiViewPipeline: any subset of {frontal image, lateral image, report} -> the others, with one joint U-ViT.

    model_dir/model_index.json   the pipeline class, each part's [library, class], image_size, modes, sampling
    model_dir/denoiser/          JointUViT (config.json + diffusion_pytorch_model.safetensors)
    model_dir/autoencoder/       the image LatentCodec (shared by both views)
    model_dir/report_codec/      report text <-> latent (B, L_r, D_r): the report autoencoder or a stand-in
    model_dir/scheduler/         the training DDPMScheduler (one sampler per generated modality is made from it)

Sampling (UniDiffuser, Bao et al. 2023, Sec. 3.2): given modalities are encoded and held clean at model
time 0, absent ones are fixed Gaussian noise at model time T, the generated ones start from noise and are
denoised jointly with one diffusers sampler each. Classifier-free guidance per given modality c, against
the model's own marginal (c replaced by noise at T): eps = eps(all) + sum_c (w_c - 1) (eps(all) - eps(all - c)),
which for one condition is Ho & Salimans' eq. 6 in diffusers' convention (w = 1: no guidance).

>>> pipe = MultiViewPipeline.from_pretrained("runs/joint")
>>> out = pipe(report=["Small left pleural effusion."], generate=["frontal", "lateral"])
>>> out.frontal.shape, out.metadata()["generated"]   # (1, 1, H, W) in [-1, 1]; ['frontal', 'lateral']
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import nn
from tqdm.auto import tqdm

from cxrgen.config import SamplingConfig
from cxrgen.denoisers.joint_uvit import GIVEN_TIME, IMAGE_MODALITIES
from cxrgen.errors import ConfigError
from cxrgen.pipeline import SamplingDefaults, register_cxrgen_classes
from cxrgen.pipelines.modes import Mode, all_modes, check_mode
from cxrgen.pipelines.multiview_output import MultiViewOutput
from cxrgen.samplers import make_scheduler

log = logging.getLogger(__name__)

ImageInput = torch.Tensor | Sequence[Any] | None


class MultiViewPipeline(SamplingDefaults, DiffusionPipeline):
    """Joint denoiser + image codec + report codec + training schedule; ``pipe(...)`` generates any modes."""

    model_cpu_offload_seq = "report_codec->autoencoder->denoiser"

    def __init__(self, denoiser: nn.Module, autoencoder: nn.Module, report_codec: nn.Module,
                 scheduler: SchedulerMixin, image_size: int = 128, modes: Sequence[str] | None = None,
                 sampling: SamplingConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_modules(denoiser=denoiser, autoencoder=autoencoder, report_codec=report_codec,
                              scheduler=scheduler)
        register_cxrgen_classes(self, ("denoiser", "autoencoder", "report_codec"))
        self._init_sampling(sampling, SamplingConfig(sampler="ddim", steps=25, guidance_scale=1.0))
        self._modes = tuple(Mode.parse(m).name for m in (modes or all_modes(denoiser.modalities)))
        self.register_to_config(image_size=int(image_size), modes=list(self._modes))
        self._check_parts(int(image_size))

    def _check_parts(self, image_size: int) -> None:
        den, codec = self.denoiser, self.autoencoder
        if den.config.in_channels != codec.latent_channels:
            raise ConfigError(f"denoiser in_channels={den.config.in_channels} != autoencoder latent channels "
                              f"{codec.latent_channels}: the denoiser was not trained on this autoencoder")
        if den.config.sample_size * codec.downsample_factor != image_size:
            raise ConfigError(f"denoiser sample_size={den.config.sample_size} x autoencoder factor "
                              f"{codec.downsample_factor} != image_size={image_size}")
        if "report" in den.modalities and tuple(self.report_codec.latent_shape) != den.latent_shape("report"):
            raise ConfigError(f"report codec latent {tuple(self.report_codec.latent_shape)} != the denoiser's "
                              f"report latent {den.latent_shape('report')}: use the report codec it was trained with")

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this model serves (``given->generated``)."""
        return self._modes

    @property
    def image_size(self) -> int:
        """Pixels per side of input and generated views."""
        return int(self.config.image_size)

    @property
    def device(self) -> torch.device:
        """Device of the denoiser's parameters."""
        return next(self.denoiser.parameters()).device

    # --- encoding the given modalities ------------------------------------------------------------
    def _as_images(self, images: ImageInput, name: str) -> torch.Tensor:
        """(B, 1, S, S) in [-1, 1] from a tensor, or from PIL images / arrays in [0, 255] or [0, 1]."""
        if not isinstance(images, torch.Tensor):
            arrays = [np.asarray(im, dtype=np.float32) for im in images]
            arrays = [a / 255.0 if a.max(initial=0) > 1.0 else a for a in arrays]
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1:
                raise ConfigError(f"{name} images differ in shape {sorted(shapes)}: give equal-size grayscale images")
            stacked = torch.from_numpy(np.stack(arrays))
            images = (stacked[:, None] if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)) * 2 - 1
        s = self.image_size
        if images.ndim != 4 or images.shape[1] != 1:
            raise ConfigError(f"{name} images of shape {tuple(images.shape)}: give grayscale (B, 1, {s}, {s}) "
                              "images (convert RGB to one channel first)")
        if images.shape[-2:] != (s, s):
            raise ConfigError(f"{name} images are {images.shape[-2]}x{images.shape[-1]}; this model takes "
                              f"{s}x{s}: resize them first")
        return images.float()

    def _encode(self, given: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Clean latents of the given modalities (B, ...) on the denoiser's device."""
        dtype = next(self.denoiser.parameters()).dtype
        out = {}
        for m, value in given.items():
            if m == "report":
                reports = [value] if isinstance(value, str) else list(value)
                z = self.report_codec.encode(reports)  # (B, L_r, D_r); empty reports raise here
            else:
                z = self.autoencoder.encode(self._as_images(value, m).to(self.device))  # (B, C, h, w)
            out[m] = z.to(self.device, dtype)
        sizes = {m: z.shape[0] for m, z in out.items()}
        if len(set(sizes.values())) > 1:
            raise ConfigError(f"the given modalities hold different numbers of samples {sizes}: give one per case")
        return out

    # --- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, frontal: ImageInput = None, lateral: ImageInput = None, report: str | Sequence[str] | None = None,
                 generate: Sequence[str] | str | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | Mapping[str, float] | None = None, num_samples: int = 1,
                 generator: torch.Generator | None = None, sampler: str | None = None,
                 progress: bool = True) -> MultiViewOutput:
        """Generate ``generate`` (default: every modality not given) from the given ones.

        ``guidance_scale``: one w for every given modality or {modality: w}; ``num_samples`` per given case.
        """
        given = {m: v for m, v in (("frontal", frontal), ("lateral", lateral), ("report", report)) if v is not None}
        if generate is None:
            generate = [m for m in self.denoiser.modalities if m not in given]
        elif isinstance(generate, str):
            generate = [s.strip() for s in generate.split(",") if s.strip()]
        mode = check_mode(Mode.of(given, generate), self.modes, self.denoiser.modalities)
        cfg = dataclasses.replace(self.sampling, **{k: v for k, v in (("steps", num_inference_steps),
                                                                       ("sampler", sampler)) if v is not None})
        scales = self._scales(mode, cfg.guidance_scale if guidance_scale is None else guidance_scale)
        if num_samples < 1:
            raise ConfigError(f"num_samples={num_samples}: give at least 1")
        generator = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
        clean = {m: z.repeat_interleave(num_samples, 0) for m, z in self._encode(given).items()}
        n = next(iter(clean.values())).shape[0] if clean else num_samples
        latents = self._denoise(mode, clean, n, cfg, scales, generator, progress)
        return self._decode(mode, latents, given, num_samples, cfg, scales)

    def _scales(self, mode: Mode, guidance: float | Mapping[str, float]) -> dict[str, float]:
        if not isinstance(guidance, Mapping):
            return {m: float(guidance) for m in mode.given}
        stray = sorted(set(guidance) - set(mode.given))
        if stray:
            raise ConfigError(f"guidance for {stray}, which are not given in mode {mode.name!r}")
        return {m: float(guidance.get(m, 1.0)) for m in mode.given}

    def _denoise(self, mode: Mode, clean: dict[str, torch.Tensor], n: int, cfg: SamplingConfig,
                 scales: dict[str, float], generator: torch.Generator, progress: bool) -> dict[str, torch.Tensor]:
        """Joint reverse process of the generated latents; given ones clean at time 0, absent ones noise at T."""
        den, device = self.denoiser, self.device
        dtype = next(den.parameters()).dtype
        noise = lambda m: randn_tensor((n, *den.latent_shape(m)), generator=generator, device=device, dtype=dtype)  # noqa: E731
        absent = {m: noise(m) for m in mode.absent(den.modalities)}
        guided = [m for m in mode.given if scales[m] != 1.0]
        drop = {m: noise(m) for m in guided}  # the marginal's stand-in for a dropped condition
        schedulers = {m: make_scheduler(cfg.sampler, self.scheduler.config) for m in mode.generated}
        for s in schedulers.values():
            s.set_timesteps(cfg.steps, device=device)
        x = {m: noise(m) * schedulers[m].init_noise_sigma for m in mode.generated}
        timesteps = schedulers[mode.generated[0]].timesteps
        for t in tqdm(timesteps, desc=f"sampling {mode.name}", disable=not progress, leave=False):
            inputs = {**clean, **absent, **{m: schedulers[m].scale_model_input(x[m], t) for m in x}}
            times = {**{m: GIVEN_TIME for m in clean}, **{m: den.absent_time for m in absent},
                     **{m: den.time_of(int(t)) for m in x}}
            variants = [(inputs, times)] + [({**inputs, c: drop[c]}, {**times, c: den.absent_time}) for c in guided]
            preds = self._batched(variants, mode.generated)
            for m in mode.generated:
                eps = preds[0][m] + sum((scales[c] - 1.0) * (preds[0][m] - preds[k + 1][m]) for k, c in enumerate(guided))
                x[m] = schedulers[m].step(eps, t, x[m]).prev_sample
        return x

    def _batched(self, variants: list[tuple[dict, dict]],
                 outputs: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
        """Run the denoiser once on all variants stacked along the batch; split the predictions back."""
        n = next(iter(variants[0][0].values())).shape[0]
        names = self.denoiser.modalities
        device = self.device
        lat = {m: torch.cat([v[0][m] for v in variants]) for m in variants[0][0]}  # modalities (+ a report context)
        tim = {m: torch.cat([torch.as_tensor(v[1][m], device=device).expand(n) for v in variants]) for m in names}
        pred = self._predict(lat, tim, outputs)
        return [{m: p[k * n:(k + 1) * n] for m, p in pred.items()} for k in range(len(variants))]

    def _predict(self, latents: dict[str, torch.Tensor], times: dict[str, torch.Tensor],
                 outputs: Sequence[str] | None) -> dict[str, torch.Tensor]:
        """One denoiser call; the joint U-ViT predicts every modality (a sibling pipeline may run fewer)."""
        return self.denoiser(latents, times)

    def _decode(self, mode: Mode, latents: dict[str, torch.Tensor], given: Mapping[str, Any], reps: int,
                cfg: SamplingConfig, scales: dict[str, float]) -> MultiViewOutput:
        out: dict[str, Any] = {}
        for m in IMAGE_MODALITIES:
            if m in latents:
                out[m] = self.autoencoder.decode(latents[m]).float().clamp(-1, 1).cpu()  # (N, 1, H, W)
            elif m in given:
                out[m] = self._as_images(given[m], m).repeat_interleave(reps, 0)
        if "report" in latents:
            out["report"] = self.report_codec.decode(latents["report"])
            out["report_latent"] = latents["report"].cpu()
        elif "report" in given:
            reports = [given["report"]] if isinstance(given["report"], str) else list(given["report"])
            out["report"] = [r for r in reports for _ in range(reps)]
        settings = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance": scales, "seed": cfg.seed}
        return MultiViewOutput(given=mode.given, generated=mode.generated, settings=settings, **out)


# diffusers.DiffusionPipeline.from_pretrained looks a model_index.json's "_class_name" up in the diffusers
# namespace; naming MultiViewPipeline there lets it load these folders once this module is imported.
if not hasattr(diffusers, MultiViewPipeline.__name__):
    setattr(diffusers, MultiViewPipeline.__name__, MultiViewPipeline)
