"""Stage ``report_ae`` of ``cxrgen train-multiview``: train the report autoencoder, scale its latent, score it.

Loss per batch (Optimus, Li et al. 2020; Bowman et al. 2016): next-token cross-entropy with word
dropout on the decoder inputs, plus ``kl_weight`` x KL to N(0, I) linearly warmed up over the first
third of the steps (KL annealing against posterior collapse). After training the latent scale is
measured: 1 / std of the posterior means of the training reports, so ``encode`` gives unit variance.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.errors import ConfigError
from cxrgen.text.report_ae import ReportCodec
from cxrgen.text.report_metrics import report_scores
from cxrgen.text.scratch import train_tokenizer

log = logging.getLogger(__name__)

SCALE_REPORTS = 2000  # training reports whose posterior means set the latent scale
ENCODE_BATCH = 128


def report_tokenizer(path: str | None, texts: list[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path``, or a BPE one learned on ``texts`` and saved to ``out_dir``."""
    if path:
        if not Path(path).is_dir():
            raise ConfigError(f"tokenizer={path!r} is not a folder; make one with `cxrgen tokenizer` or leave it out")
        return AutoTokenizer.from_pretrained(path)
    return train_tokenizer(texts, vocab_size, out_dir)


def lr_at(step: int, steps: int, lr: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` x ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def word_dropout_at(step: int, steps: int, start: float, final: float | None) -> float:
    """``start`` for the first two thirds of the steps, then linear to ``final`` at the last (None: ``start``)."""
    if final is None:
        return start
    begin = 2 * steps // 3
    return start if step < begin else start + (final - start) * (step - begin) / max(1, steps - 1 - begin)


def budgeted_steps(steps: int, max_minutes: float, desc: str, progress: bool) -> Iterator[int]:
    """Step indices 0..steps-1 with a progress bar, stopping early (with a warning) after ``max_minutes`` > 0."""
    deadline = time.perf_counter() + 60.0 * max_minutes if max_minutes > 0 else math.inf
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    try:
        for step in bar:
            if time.perf_counter() > deadline:
                log.warning("%s: max_minutes=%s reached after %d of %d steps", desc, max_minutes, step, steps)
                return
            yield step
    finally:
        bar.close()  # now, not at garbage collection, when the stream it writes to may be closed


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, max_norm: float = 1.0) -> None:
    """Set the learning rate, back-propagate ``loss``, clip the gradient norm, step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                           group: int = 0) -> Iterator[torch.Tensor]:
    """Endless random batches of indices (batch_size,). ``group`` > 1: draw ``group`` batches at once, sort them by
    length and hand them out in random order (Hugging Face's group_by_length megabatches): every report is drawn
    as often, and a batch pads to a length near its own reports' rather than the longest of the corpus's."""
    while True:
        if group <= 1:
            yield torch.randint(0, len(lengths), (batch_size,), generator=generator)
            continue
        mega = torch.randint(0, len(lengths), (batch_size * group,), generator=generator)
        chunks = mega[lengths[mega].argsort()].view(group, batch_size)
        yield from chunks[torch.randperm(group, generator=generator)]


def fit_report_ae(codec: ReportCodec, texts: list[str], cfg: MultiviewTrainConfig) -> list[float]:
    """Train ``codec`` on ``texts`` for ``cfg.report_ae.steps`` steps; the per-step losses."""
    stage = cfg.report_ae
    ids, mask = codec.tokenize(texts)  # (N, L) each, padded to the longest
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(codec.model.parameters(), lr=stage.lr, weight_decay=0.01)
    codec.model.train()
    losses: list[float] = []
    batches = length_grouped_batches(mask.sum(1), stage.batch_size, generator, stage.length_groups)
    for step in budgeted_steps(stage.steps, cfg.max_minutes, "report autoencoder", cfg.progress):
        pick = next(batches)
        length = int(mask[pick].sum(1).max())
        batch_ids, batch_mask = ids[pick, :length], mask[pick, :length]  # (B, l) each
        dropout = word_dropout_at(step, stage.steps, stage.word_dropout, stage.word_dropout_final)
        out = codec.model(batch_ids, batch_mask, generator=generator, word_dropout=dropout,
                          encoder_word_dropout=stage.encoder_word_dropout, label_smoothing=stage.label_smoothing)
        beta = stage.kl_weight * min(1.0, step / max(1, stage.steps // 3))  # KL annealing
        loss = out["ce"] + beta * out["kl"] + stage.bow_weight * out.get("bow", 0.0)
        optimizer_step(optimizer, loss, lr_at(step, stage.steps, stage.lr, stage.warmup_steps, stage.min_lr_ratio))
        losses.append(float(out["ce"].detach()))
        if step % 200 == 0:
            log.info("step %d: ce %.3f kl %.4f bow %.3f", step, float(out["ce"].detach()), float(out["kl"].detach()),
                     float(out.get("bow", torch.tensor(float("nan"))).detach()))
    codec.model.eval()
    return losses


def measure_latent_scale(codec: ReportCodec, texts: list[str], generator: torch.Generator) -> float:
    """1 / std of the posterior means of (up to SCALE_REPORTS of) ``texts``; stored in the model's config."""
    pick = torch.randperm(len(texts), generator=generator)[:SCALE_REPORTS].tolist()
    codec.model.register_to_config(latent_scale=1.0)
    means = torch.cat([codec.encode([texts[i] for i in pick[s:s + ENCODE_BATCH]])
                       for s in range(0, len(pick), ENCODE_BATCH)])
    scale = 1.0 / float(means.std().clamp(min=1e-6))
    codec.model.register_to_config(latent_scale=scale)
    return scale


def reconstruct(codec: ReportCodec, texts: list[str], beams: int = 1) -> list[str]:
    """Decoded reports of the posterior means of ``texts`` (the autoencoder's reconstructions)."""
    out: list[str] = []
    for s in range(0, len(texts), ENCODE_BATCH):
        out += codec.decode(codec.encode(texts[s:s + ENCODE_BATCH]), beams=beams)
    return out


def score_reconstruction(codec: ReportCodec, texts: list[str], beams: int, generator: torch.Generator) -> dict:
    """Reconstruction metrics of ``texts`` and, as the floor, of the same reports paired at random."""
    recon = reconstruct(codec, texts, beams)
    shuffled = [texts[i] for i in torch.randperm(len(texts), generator=generator).tolist()]
    floor = report_scores(shuffled, texts)
    return {**report_scores(recon, texts),
            "shuffled_floor": {k: floor[k] for k in ("finding_agreement", "finding_exact", "finding_f1", "bleu4")},
            "examples": [{"original": t, "decoded": r} for t, r in zip(texts[:3], recon[:3], strict=True)]}


def _codec(cfg: MultiviewTrainConfig, texts: list[str], out: Path, generator: torch.Generator) -> ReportCodec:
    """The codec to train: ``report_ae.init_from`` loaded, or a fresh one over the (learned) tokenizer."""
    stage = cfg.report_ae
    if stage.init_from:
        log.info("continuing the report autoencoder of %s (its sizes and tokenizer)", stage.init_from)
        return ReportCodec.from_pretrained(stage.init_from)
    tokenizer = report_tokenizer(stage.tokenizer, texts, stage.vocab_size, out / "tokenizer")
    return ReportCodec.build(tokenizer, generator, max_length=stage.max_length, width=stage.width,
                             encoder_depth=stage.encoder_depth, decoder_depth=stage.decoder_depth, heads=stage.heads,
                             mlp_ratio=stage.mlp_ratio, latent_tokens=stage.latent_tokens, latent_dim=stage.latent_dim,
                             dropout=stage.dropout, bag_of_words=stage.bow_weight > 0, pool_depth=stage.pool_depth)


def run_report_ae(cfg: MultiviewTrainConfig, corpora: dict[str, dict[str, list[str]]], out: Path) -> dict:
    """Train on every corpus's train split; save to ``out/report_ae``; score each corpus's test split."""
    stage = cfg.report_ae
    train_texts = [t for corpus in corpora.values() for t in corpus["train"]]
    if not train_texts:
        raise ConfigError("no training reports: give data.twin_dirs and/or data.report_manifests")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    codec = _codec(cfg, train_texts, out, generator)
    tokenizer = codec.tokenizer
    losses = fit_report_ae(codec, train_texts, cfg)
    codec.model.register_to_config(no_repeat_ngram=stage.no_repeat_ngram, rerank=stage.rerank)  # how it decodes
    scale = measure_latent_scale(codec, train_texts, generator)
    codec.save_pretrained(out / "report_ae")
    train_seconds = time.perf_counter() - started
    evaluation = {}
    for name, corpus in corpora.items():
        for split in stage.eval_splits:
            texts = corpus.get(split, [])[: stage.eval_reports]
            if texts:
                key = name if split == "test" else f"{name}/{split}"
                evaluation[key] = score_reconstruction(codec, texts, stage.beams, generator)
    return {"stage": "report_ae", "model": str(out / "report_ae"), "latent_shape": list(codec.latent_shape),
            "latent_scale": scale, "parameters": sum(p.numel() for p in codec.model.parameters()),
            "train_reports": len(train_texts), "vocab_size": len(tokenizer), "train_seconds": round(train_seconds, 1),
            "final_ce": float(np.mean(losses[-50:])), "eval": evaluation}
