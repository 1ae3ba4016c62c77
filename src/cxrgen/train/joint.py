"""Stage ``joint`` of ``cxrgen train-multiview``: train the joint U-ViT on (frontal, lateral, report) triplets.

Steps: read the twin triplets, encode every view with the (frozen) image codec and every report with the
(frozen) report codec once, train the JointUViT with :func:`cxrgen.train.joint_loss.joint_loss` (AdamW,
linear warm-up, EMA), and save a MultiViewPipeline (EMA weights) to ``out_dir/model``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

import cxrgen
from cxrgen.autoencoder import IdentityCodec, LatentCodec, measure_scale
from cxrgen.config.multiview import JointStageConfig, MultiviewTrainConfig
from cxrgen.data.twin_triplets import load_views, read_twin_triplets
from cxrgen.denoisers.registry import build_joint_denoiser, load_denoiser
from cxrgen.errors import ConfigError
from cxrgen.pipeline import DEFAULT_MODEL
from cxrgen.pipelines import MultiViewPipeline
from cxrgen.samplers import training_scheduler
from cxrgen.text.report_standin import HashedReportCodec
from cxrgen.train.ema import EMA
from cxrgen.train.joint_loss import joint_loss

log = logging.getLogger(__name__)

MODEL_DIR = "model"
METRICS_NAME = "joint_metrics.json"
LATENT_CACHE = "joint_latents.safetensors"
REPORT_SIZE_FIELDS = {"report_tokens", "report_dim"}  # init_from may differ in these alone (a new report codec)


def load_codecs(cfg: JointStageConfig, train_reports: list[str]) -> tuple[Any, Any]:
    """The frozen image codec (default model's unless given; "identity": pixels) and report codec (stand-in unless given)."""
    if cfg.autoencoder == "identity":  # pixel space (the phantom / twin-pixel64 recipe): no codec to load
        codec = IdentityCodec()
    else:
        codec = LatentCodec.from_pretrained(cfg.autoencoder or DEFAULT_MODEL / "autoencoder").eval()
    if cfg.report_codec is not None:  # any codec class cxrgen exports (the report AE), named in its config.json
        config_file = Path(cfg.report_codec) / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"joint.report_codec={cfg.report_codec!r} holds no config.json; give the report_ae "
                              "folder written by `cxrgen train-multiview` (stage report_ae)")
        name = json.loads(config_file.read_text(encoding="utf-8")).get("_class_name")
        name = "ReportCodec" if name == "ReportAutoencoder" else name  # the report AE's folder: network + tokenizer
        if name not in cxrgen.__all__:
            raise ConfigError(f"joint.report_codec={cfg.report_codec!r} holds a {name!r}, not a cxrgen report codec")
        report = getattr(cxrgen, name).from_pretrained(cfg.report_codec).eval()
    else:
        report = HashedReportCodec(tokens=cfg.report_tokens, token_dim=cfg.report_dim)
    if hasattr(report, "set_bank"):
        report.set_bank(train_reports)
    return codec, report


@torch.no_grad()
def encode_triplets(codec: Any, report_codec: Any, table: pd.DataFrame, size: int, batch: int = 64,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Clean latents of every study: frontal / lateral (N, C, h, w) and report (N, L_r, D_r)."""
    frontal, lateral = load_views(table, size, progress)
    out = {}
    for name, images in (("frontal", frontal), ("lateral", lateral)):
        out[name] = torch.cat([codec.encode(images[i:i + batch]) for i in
                               tqdm(range(0, len(images), batch), desc=f"encoding {name}", disable=not progress)])
    out["report"] = torch.cat([report_codec.encode(list(table["report"][i:i + batch]))
                               for i in range(0, len(table), batch)])
    return out


def cached_latents(out: Path, codec: LatentCodec, report_codec: Any, table: pd.DataFrame, size: int,
                   progress: bool) -> dict[str, torch.Tensor]:
    """:func:`encode_triplets`, kept in ``out/joint_latents.safetensors``; the views' and the reports' latents are
    reused while their own key matches (another report codec re-encodes the reports only)."""
    path = out / LATENT_CACHE
    studies = list(table["study_id"])
    keys = {"image_key": json.dumps({"studies": studies, "size": size, "scale": codec.scale, "shift": codec.shift}),
            "report_key": json.dumps({"studies": studies, "report_codec": {
                k: v for k, v in dict(report_codec.config).items() if not k.startswith("_")}})}
    cached: dict[str, torch.Tensor] = {}
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            for key, names in (("image_key", ("frontal", "lateral")), ("report_key", ("report",))):
                if meta.get(key) == keys[key]:
                    cached.update({n: f.get_tensor(n) for n in names})
    if len(cached) == 3:
        log.info("reusing the encoded triplets in %s", path)
        return cached
    if "frontal" in cached:
        log.info("reusing the encoded views in %s; encoding the reports with the new report codec", path)
        cached["report"] = torch.cat([report_codec.encode(list(table["report"][i:i + 64]))
                                      for i in range(0, len(table), 64)])
        latents = cached
    else:
        latents = encode_triplets(codec, report_codec, table, size, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in latents.items()}, str(path), metadata=keys)
    return latents


def _fit_codec_scale(codec: LatentCodec, table: pd.DataFrame, size: int) -> None:
    """Refit the codec's latent scale / shift to these images (LDM app. G), so latents have unit variance.

    Pixel space (the identity codec) keeps its scale: pixels in [-1, 1], as the single-view pixel recipe.
    """
    if isinstance(codec, IdentityCodec):
        return
    frontal, lateral = load_views(table.iloc[:128], size)
    scale, shift = measure_scale(codec, torch.cat([frontal, lateral]))
    codec.set_scale(scale, shift)
    log.info("image latent scale %.4f, shift %.4f (fitted on %d training views)", scale, shift, 2 * len(frontal))


def run_joint(cfg: MultiviewTrainConfig) -> dict[str, Any]:
    """Train the joint stage of ``cfg``; returns (and writes) the training metrics."""
    jc = cfg.joint
    if not cfg.data.twin_dirs:
        raise ConfigError("data.twin_dirs is empty: give folders written by `cxrgen twin` for the joint stage")
    torch.set_num_threads(cfg.threads)
    table = pd.concat([read_twin_triplets(d) for d in cfg.data.twin_dirs], ignore_index=True)
    train = table[table["split"] == "train"].reset_index(drop=True).iloc[:jc.max_train_studies]
    codec, report_codec = load_codecs(jc, list(train["report"]))
    _fit_codec_scale(codec, train, jc.model_image_size)
    start = time.perf_counter()
    latents = cached_latents(Path(cfg.out_dir), codec, report_codec, train, jc.model_image_size, cfg.progress)
    encode_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(cfg.seed)
    f = latents["frontal"]
    model = build_joint_denoiser(jc.denoiser, generator=gen, in_channels=f.shape[1], sample_size=f.shape[-1],
                                 report_tokens=latents["report"].shape[1], report_dim=latents["report"].shape[2],
                                 num_train_timesteps=jc.schedule.num_train_timesteps)
    if jc.init_from is not None:
        _load_weights(model, Path(jc.init_from))
    scheduler = training_scheduler(jc.schedule, "epsilon")
    ema, history, train_s = _train(model, scheduler, latents, jc, gen, cfg.progress)
    pipe = MultiViewPipeline(ema.model if jc.ema_decay > 0 else model, codec, report_codec, scheduler,
                             image_size=jc.model_image_size, sampling=jc.sampling)
    out = Path(cfg.out_dir)
    pipe.save_pretrained(out / MODEL_DIR)
    metrics = {"stage": "joint", "train_studies": len(train), "steps": jc.steps, "batch_size": jc.batch_size,
               "params": sum(p.numel() for p in model.parameters()), "encode_seconds": round(encode_s, 1),
               "train_seconds": round(train_s, 1), "threads": cfg.threads, "loss_history": history,
               "model": str(out / MODEL_DIR)}
    (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("joint U-ViT saved to %s (%d steps, %.0f s)", out / MODEL_DIR, jc.steps, train_s)
    return metrics


def _load_weights(model: torch.nn.Module, source: Path) -> None:
    """Copy the weights of a saved JointUViT (a MultiViewPipeline folder or its denoiser/) into ``model``."""
    folder = source / "denoiser" if (source / "denoiser" / "config.json").is_file() else source
    saved = load_denoiser(folder)
    plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 - JSON turns tuples into lists
    differ = sorted(k for k in model.config if not k.startswith("_")
                    and plain(saved.config.get(k)) != plain(model.config.get(k)))
    if differ and not set(differ) <= REPORT_SIZE_FIELDS:
        raise ConfigError(f"joint.init_from={str(source)!r} has another architecture (fields {differ}); "
                          "set joint.denoiser and the data sizes to the saved model's")
    if differ:  # a new report codec: keep the rest, learn the report's in/out maps and positions afresh
        state, fresh = model.state_dict(), []
        for name, value in saved.state_dict().items():
            if state[name].shape == value.shape:
                state[name] = value
            elif name == "pos_embed":  # [times, frontal, lateral, report] tokens: all but the report's kept
                keep = value.shape[1] - saved.config.report_tokens
                state[name][:, :keep] = value[:, :keep]
                fresh.append(f"{name}[report]")
            else:
                fresh.append(name)
        model.load_state_dict(state)
        log.info("joint U-ViT starts from %s; new report latent %s: %s start afresh", folder, differ, fresh)
        return
    model.load_state_dict(saved.state_dict())
    log.info("joint U-ViT starts from the weights in %s", folder)


def clip_gradients(model: torch.nn.Module, groups: Sequence[Sequence[torch.nn.Parameter]] | None = None) -> None:
    """Clip the gradient to norm 1: of all ``model``'s parameters together, or of each of ``groups`` on its own."""
    for group in [list(model.parameters())] if groups is None else groups:
        torch.nn.utils.clip_grad_norm_(group, 1.0)


def _train(model: torch.nn.Module, scheduler: Any, latents: dict[str, torch.Tensor], jc: JointStageConfig,
           gen: torch.Generator, progress: bool, loss_fn: Callable | None = None,
           params: Iterable | None = None, cosine: bool = False,
           clip_groups: Sequence[Sequence[torch.nn.Parameter]] | None = None,
           ) -> tuple[EMA, list[dict[str, float]], float]:
    """AdamW with linear warm-up on random batches of the cached latents; EMA after every step.

    ``loss_fn(model, batch, generator) -> (loss, per-modality)`` (default: :func:`joint_loss`); ``params``:
    what AdamW updates (parameters or groups; default all); ``cosine``: half-cosine decay to 0 at ``jc.steps``
    after the warm-up (diffusers' schedule), else a constant rate; ``clip_groups``: see :func:`clip_gradients`.
    """
    if loss_fn is None:
        def loss_fn(net: torch.nn.Module, batch: dict, g: torch.Generator) -> tuple[torch.Tensor, dict]:
            return joint_loss(net, scheduler, batch, jc.given_prob, jc.absent_prob, g)
    opt = torch.optim.AdamW(model.parameters() if params is None else params, lr=jc.lr, weight_decay=jc.weight_decay)
    warm = (get_cosine_schedule_with_warmup(opt, jc.warmup_steps, jc.steps) if cosine else
            torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(jc.warmup_steps, 1))))
    ema = EMA(model, jc.ema_decay, warmup=True)
    n = latents["frontal"].shape[0]
    history, running, start = [], [], time.perf_counter()
    model.train()
    for step in tqdm(range(1, jc.steps + 1), desc="joint U-ViT", disable=not progress):
        idx = torch.randint(0, n, (min(jc.batch_size, n),), generator=gen)  # (B,)
        loss, per = loss_fn(model, {m: z[idx] for m, z in latents.items()}, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, clip_groups)
        opt.step()
        warm.step()
        ema.update(model)
        running.append(float(loss.detach()))
        if step % jc.log_every == 0 or step == jc.steps:
            history.append({"step": step, "loss": sum(running) / len(running), **per})
            log.info("step %d loss %.4f %s", step, history[-1]["loss"], per)
            running = []
    return ema, history, time.perf_counter() - start
