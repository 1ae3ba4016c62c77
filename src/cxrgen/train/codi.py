"""Stages ``codi_single`` and ``codi_bridge`` of ``cxrgen train-multiview``: CoDi XR's three-model arm.

``codi_single`` (CoDi's first stage): one latent diffusion model per modality, trained together but each
on its own loss: the frontal and lateral denoisers on the report (the null report for a share
``cond_drop_prob``, for classifier-free guidance), the report denoiser unconditionally; the bridges are
not used. ``codi_bridge`` (the third stage): from a ``codi_single`` model (``codi.init_from``), the
environment encoders and cross-attention bridges are trained with every modality independently given,
absent or noised (:func:`cxrgen.train.joint_loss.joint_loss`, the joint arm's roles), the per-modality
denoisers frozen (``trunk_lr_scale: 0``) or lightly tuned. Both save a CodiPipeline to ``out_dir/model``.
The data, latent cache, codecs, optimiser and EMA are the joint stage's (:mod:`cxrgen.train.joint`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open
from safetensors.torch import save_file

from cxrgen.autoencoder import IdentityCodec
from cxrgen.config.multiview import CodiStageConfig, MultiviewTrainConfig
from cxrgen.data.reports import report_part
from cxrgen.data.twin_triplets import read_twin_triplets
from cxrgen.denoisers.codi import CONTEXT, CodiXR, build_codi_denoiser
from cxrgen.denoisers.codi_init import load_uvit_trunk
from cxrgen.errors import ConfigError
from cxrgen.multiview.aligned import AlignedEncoders, AlignedModel
from cxrgen.pipelines.codi import SINGLE_MODES, CodiPipeline
from cxrgen.samplers import training_scheduler
from cxrgen.text import TextEncoder, build_text_encoder
from cxrgen.train.joint import _fit_codec_scale, _train, cached_latents, load_codecs
from cxrgen.train.joint_loss import prediction_target

log = logging.getLogger(__name__)

MODEL_DIR = "model"
METRICS_NAME = "codi_metrics.json"
CONTEXT_CACHE = "codi_context.safetensors"
CODI_STAGES = ("codi_single", "codi_bridge")


def noisy_context(clean: Mapping[str, torch.Tensor], std: float,
                  generator: torch.Generator | None = None) -> Mapping[str, torch.Tensor]:
    """``clean`` with Gaussian noise (``std``) on each given sentence vector of the report context (B, S, D); padded
    (all-zero) slots stay zero. Unchanged without a context or with ``std`` 0."""
    if std <= 0 or CONTEXT not in clean:
        return clean
    ctx = clean[CONTEXT]
    noise = torch.randn(ctx.shape, generator=generator).to(ctx.device, ctx.dtype)
    return {**clean, CONTEXT: ctx + std * noise * (ctx != 0).any(-1, keepdim=True)}


def single_loss(model: CodiXR, scheduler: DDPMScheduler, clean: Mapping[str, torch.Tensor], cond_drop_prob: float,
                generator: torch.Generator | None = None,
                view_given_prob: float | Mapping[str, float] = 0.5,
                context_noise: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 1: the sum of each modality's own prediction MSE (DDPM eq. 14; x0 for ``sample``), bridges off.

    The image denoisers see the clean report (model time 0) or, with probability ``cond_drop_prob``, the
    null report (time T); the report denoiser sees only its own noisy latent. A model with view prompts
    (``view_prompt_grid``) trains each trunk on its own call, every other view given clean with probability
    ``view_given_prob`` (per sample and view; a mapping: per trunk), else absent (its null prompt tokens).
    ``context_noise``: :func:`noisy_context` on the sentence vectors the image denoisers read.
    """
    clean = noisy_context(clean, context_noise, generator)
    names = model.modalities
    if model.config.view_prompt_grid:
        return _prompted_single_loss(model, scheduler, clean, cond_drop_prob, view_given_prob, generator)
    b, device = clean[names[0]].shape[0], clean[names[0]].device
    noise = {m: torch.randn(clean[m].shape, generator=generator).to(device, clean[m].dtype) for m in names}
    step = {m: torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
            for m in names}
    noisy = {m: scheduler.add_noise(clean[m], noise[m], step[m]) for m in names}  # DDPM eq. 4
    images = [m for m in names if m != "report"]
    preds: dict[str, torch.Tensor] = {}
    if images:
        drop = (torch.rand(b, generator=generator) < cond_drop_prob).to(device)  # (B,)
        lat = {**clean, **{m: noisy[m] for m in images}}
        times = {**{m: model.time_of(step[m]) for m in images},
                 **({"report": torch.where(drop, model.absent_time, 0)} if "report" in names else {})}
        preds.update(model(lat, times, outputs=images, bridge=False))
    if "report" in names:
        lat = {**clean, "report": noisy["report"]}
        times = {**{m: model.absent_time for m in images}, "report": model.time_of(step["report"])}
        preds.update(model(lat, times, outputs=["report"], bridge=False))
    target = {m: prediction_target(scheduler, clean[m], noise[m], step[m]) for m in names}  # noise, or x0
    per = {m: (preds[m].float() - target[m].float()).pow(2).mean() for m in names}
    return sum(per.values()), {m: float(v.detach()) for m, v in per.items()}


def _prompted_single_loss(model: CodiXR, scheduler: DDPMScheduler, clean: Mapping[str, torch.Tensor],
                          cond_drop_prob: float, view_given_prob: float | Mapping[str, float],
                          generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`single_loss` for a model with view prompts: per trunk, the report and the other views given or absent
    (the other views each with ``view_given_prob``, or ``view_given_prob[trunk]`` when it is a mapping)."""
    names = model.modalities
    share = view_given_prob if isinstance(view_given_prob, Mapping) else {m: view_given_prob for m in names}
    b, device = clean[names[0]].shape[0], clean[names[0]].device
    given = lambda p: (torch.rand(b, generator=generator) < p).to(device)  # noqa: E731  (B,) bool
    per: dict[str, torch.Tensor] = {}
    for m in names:
        noise = torch.randn(clean[m].shape, generator=generator).to(device, clean[m].dtype)
        step = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
        lat = {**clean, m: scheduler.add_noise(clean[m], noise, step)}  # DDPM eq. 4
        times = {o: torch.where(given(share[m]), 0, model.absent_time) for o in names if o not in (m, "report")}
        times[m] = model.time_of(step)
        if m != "report" and "report" in names:
            times["report"] = torch.where(given(1 - cond_drop_prob), 0, model.absent_time)
        pred = model(lat, times, outputs=[m], bridge=False)[m]
        per[m] = (pred.float() - prediction_target(scheduler, clean[m], noise, step).float()).pow(2).mean()
    return sum(per.values()), {m: float(v.detach()) for m, v in per.items()}


def _model_and_codecs(cc: CodiStageConfig, stage: str,
                      train: pd.DataFrame) -> tuple[CodiXR | None, Any, Any, TextEncoder | None]:
    """From ``init_from`` (a CodiPipeline folder: its denoiser, codecs and text encoder), or new (codi_single, or
    codi_bridge with the denoisers trained too); the text encoder only for ``report_condition: text``."""
    if cc.init_from is not None:
        base = CodiPipeline.from_pretrained(cc.init_from)
        if cc.autoencoder is not None or cc.report_codec is not None:
            log.warning("codi.autoencoder / codi.report_codec are ignored: the codecs come with codi.init_from")
        log.info("CoDi model, image and report codecs from %s", cc.init_from)
        if base.report_text != cc.report_text:
            log.warning("the model in codi.init_from read the report's %s text; this run trains it on the %s text "
                        "(codi.report_text), and saves that", base.report_text, cc.report_text)
        return base.denoiser, base.autoencoder, base.report_codec, base.text_encoder
    if stage == "codi_bridge" and cc.trunk_lr_scale == 0:
        raise ConfigError("stage codi_bridge with frozen denoisers (codi.trunk_lr_scale: 0) trains the bridges of a "
                          "codi_single model: set codi.init_from to its model folder (OUT/model), or train "
                          "denoisers and bridges together from scratch with codi.trunk_lr_scale > 0")
    codec, report_codec = load_codecs(cc, list(train["report"]))
    _fit_codec_scale(codec, train, cc.model_image_size)
    text = build_text_encoder(cc.text).eval() if cc.report_condition == "text" else None
    return None, codec, report_codec, text


def cached_context(out: Path, text_encoder: TextEncoder, table: pd.DataFrame, report_text: str = "full") -> torch.Tensor:
    """Sentence vectors (N, S, D) of every study's report, or of its ``report_text`` part (zeros past its last
    sentence), kept in ``out/codi_context.safetensors`` while the studies, the part and the text encoder match."""
    path = out / CONTEXT_CACHE
    fields: dict[str, Any] = {"studies": list(table["study_id"]), "text": dataclasses.asdict(text_encoder.config)}
    if report_text != "full":  # the whole report keeps the key of the caches written before the option
        fields["report_text"] = report_text
    key = json.dumps(fields)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                log.info("reusing the report sentence vectors in %s", path)
                return f.get_tensor(CONTEXT)
    log.info("encoding %d reports (%s) with the frozen %s sentence encoder", len(table), report_text,
             text_encoder.backend)
    reports = [report_part(r, report_text) for r in table["report"]]
    context, _ = text_encoder.encode_all(reports, batch_size=64)  # (N, S, D), zeros where masked
    out.mkdir(parents=True, exist_ok=True)
    save_file({CONTEXT: context.contiguous()}, str(path), metadata={"key": key})
    return context


def _frontal_from_uvit(model: CodiXR, source: str, text: TextEncoder) -> CodiXR:
    """``model`` with its frontal trunk copied from the single-view U-ViT in ``source``; that trunk masks padded
    sentences (the model is rebuilt with ``context_mask`` extended to it when it lacked it)."""
    mask = model.config.context_mask
    if mask is not True and "frontal" not in (mask or ()):
        config = {k: v for k, v in model.config.items() if not k.startswith("_")}
        rebuilt = CodiXR(**{**config, "context_mask": ["frontal", *(mask or ())]})
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    null, null_mask = text.encode_null(1)  # the single-view model's null prompt: (1, S, D), (1, S)
    load_uvit_trunk(model, "frontal", source, null[0][null_mask[0]])
    log.info("frontal trunk from the single-view U-ViT in %s", source)
    return model


def _aligned_prompts(cc: CodiStageConfig, codec: Any) -> tuple[AlignedEncoders | None, dict[str, Any]]:
    """``codi.view_prompt_encoder: aligned``: the aligned encoders of ``view_prompt_from`` (None without it) and the
    CodiXR keywords of their towers (width, embedding size, the codec's pixel scale / shift)."""
    if cc.view_prompt_encoder != "aligned" or cc.view_prompt_from is None:
        return None, {}
    if not isinstance(codec, IdentityCodec):
        raise ConfigError("codi.view_prompt_encoder: aligned reads the given views as pixels with the aligned image "
                          f"towers, but the image codec is {type(codec).__name__} (latent space): set codi.autoencoder: "
                          "identity (pixel space) or codi.view_prompt_encoder: cnn")
    encoders = AlignedModel.from_pretrained(cc.view_prompt_from).encoders
    kwargs = dict(view_prompt_encoder="aligned", view_prompt_width=encoders.config.image_width,
                  view_prompt_embed_dim=encoders.config.embed_dim, view_prompt_global=cc.view_prompt_global,
                  view_prompt_scale=codec.scale, view_prompt_shift=codec.shift)
    return encoders, kwargs


def _trainable(model: CodiXR, cc: CodiStageConfig, stage: str) -> list[dict[str, Any]]:
    """AdamW groups: stage 1 the denoisers; stage 2 the bridges, the denoisers frozen or at lr x trunk_lr_scale."""
    for p in model.frozen_parameters():  # aligned view prompt towers: frozen in every stage
        p.requires_grad_(False)
    if stage == "codi_single":
        for p in model.trunk_parameters():
            p.requires_grad_(True)
        for p in model.bridge_parameters():
            p.requires_grad_(False)  # zero-initialised bridges stay the identity while the LDMs learn alone
        if cc.freeze_frontal:
            model.trunks["frontal"].requires_grad_(False)
        return [{"params": [p for p in model.trunk_parameters() if p.requires_grad]}]
    groups = [{"params": model.bridge_parameters()}]
    for p in model.trunk_parameters():
        p.requires_grad_(cc.trunk_lr_scale > 0)
    if cc.trunk_lr_scale > 0:
        groups.append({"params": model.trunk_parameters(), "lr": cc.lr * cc.trunk_lr_scale})
    return groups


def clip_groups(model: CodiXR) -> list[list[torch.nn.Parameter]]:
    """``codi.clip_per_trunk``: each per-modality denoiser's parameters, each view prompt encoder's trainable ones
    (not a frozen aligned tower), then the bridges', clipped apart."""
    frozen = {id(p) for p in model.frozen_parameters()}
    prompts = [[p for p in prompt.parameters() if id(p) not in frozen] for prompt in model.prompts.values()]
    return [list(trunk.parameters()) for trunk in model.trunks.values()] + prompts + [model.bridge_parameters()]


def run_codi(cfg: MultiviewTrainConfig, stage: str) -> dict[str, Any]:
    """Train ``stage`` (codi_single | codi_bridge) of ``cfg.codi``; returns (and writes) the training metrics."""
    cc = cfg.codi
    if stage not in CODI_STAGES:
        raise ConfigError(f"stage={stage!r}: the CoDi arm has stages {list(CODI_STAGES)}")
    if not cfg.data.twin_dirs:
        raise ConfigError("data.twin_dirs is empty: give folders written by `cxrgen twin` for the CoDi stages")
    torch.set_num_threads(cfg.threads)
    table = pd.concat([read_twin_triplets(d) for d in cfg.data.twin_dirs], ignore_index=True)
    train = table[table["split"] == "train"].reset_index(drop=True).iloc[:cc.max_train_studies]
    model, codec, report_codec, text = _model_and_codecs(cc, stage, train)
    out = Path(cfg.out_dir)
    start = time.perf_counter()
    latents = cached_latents(out, codec, report_codec, train, cc.model_image_size, cfg.progress)
    if text is not None:
        latents[CONTEXT] = cached_context(out, text, train, cc.report_text)
    encode_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(cfg.seed)
    aligned, aligned_kwargs = _aligned_prompts(cc, codec)
    if model is not None and cc.view_prompt_encoder == "aligned" and model.config.view_prompt_encoder != "aligned":
        raise ConfigError(f"codi.init_from={cc.init_from!r} has {model.config.view_prompt_encoder!r} view prompts, not "
                          "aligned ones: drop codi.view_prompt_encoder / view_prompt_from, or train codi_single anew")
    if model is None:
        f = latents["frontal"]
        context = dict(context_dim=text.hidden_size, context_tokens=text.config.max_sentences) if text else {}
        if cc.view_prompt_grid:
            context.update(view_prompt_grid=cc.view_prompt_grid, **aligned_kwargs)
        model = build_codi_denoiser(cc.denoiser, generator=gen, in_channels=f.shape[1], sample_size=f.shape[-1],
                                    report_tokens=latents["report"].shape[1], report_dim=latents["report"].shape[2],
                                    num_train_timesteps=cc.schedule.num_train_timesteps,
                                    prediction_type=cc.prediction_type, context_mask=cc.context_mask, **context)
    if aligned is not None:  # the frozen towers' weights, from the aligned folder at every stage start
        model.copy_aligned_towers(aligned)
        log.info("view prompt encoders: the frozen frontal / lateral towers of %s", cc.view_prompt_from)
    if cc.frontal_init_from is not None:
        model = _frontal_from_uvit(model, cc.frontal_init_from, text)
    scheduler = training_scheduler(cc.schedule, model.config.prediction_type)
    loss_fn = None
    if stage == "codi_single":
        def loss_fn(net: CodiXR, batch: dict, g: torch.Generator) -> tuple[torch.Tensor, dict]:
            return single_loss(net, scheduler, batch, cc.cond_drop_prob, g, cc.view_given_probs(), cc.context_noise)
    groups = _trainable(model, cc, stage)
    cpu0 = time.process_time()
    ema, history, train_s = _train(model, scheduler, latents, cc, gen, cfg.progress, loss_fn, groups,
                                   cosine=cc.lr_schedule == "cosine",
                                   clip_groups=clip_groups(model) if cc.clip_per_trunk else None)
    cpu_s = time.process_time() - cpu0
    final = (ema.model if cc.ema_decay > 0 else model).requires_grad_(False)
    pipe = CodiPipeline(final, codec, report_codec, scheduler, image_size=cc.model_image_size,
                        modes=SINGLE_MODES if stage == "codi_single" and not final.config.view_prompt_grid else None, sampling=cc.sampling,
                        text_encoder=text, report_text=cc.report_text)
    pipe.save_pretrained(out / MODEL_DIR)
    metrics = {"stage": stage, "train_studies": len(train), "steps": cc.steps, "batch_size": cc.batch_size,
               "params": sum(p.numel() for p in model.parameters()),
               "trained_params": sum(p.numel() for g in groups for p in g["params"]),
               "encode_seconds": round(encode_s, 1), "train_seconds": round(train_s, 1),
               "train_cpu_seconds": round(cpu_s, 1), "threads": cfg.threads, "loss_history": history,
               "model": str(out / MODEL_DIR)}
    (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("CoDi %s saved to %s (%d steps, %.0f s)", stage, out / MODEL_DIR, cc.steps, train_s)
    return metrics
