"""Stage ``aligned`` of ``cxrgen train-multiview``: frontal, lateral and report encoders in one space + view check.

Loss per batch of triplets: symmetric InfoNCE (CLIP) of each of the three modality pairs
(frontal-report, lateral-report, frontal-lateral) with one learned temperature, plus
``view_weight`` x binary cross-entropy of the view check on the batch's frontal (0) and lateral (1)
images, plus with ``label_weight`` x the mean binary cross-entropy of both image towers' report labels (the
labeler's observations of the paired report and their sides, :mod:`cxrgen.multiview.report_labels`, through linear
heads used in training only). Evaluation on held-out studies: retrieval recall@1/5 both ways for each pair, the
alignment score of true against shuffled pairs, and the view check's accuracy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.data.multiview import MultiviewDataset
from cxrgen.multiview.aligned import AlignedEncoders, AlignedModel
from cxrgen.multiview.contrastive import alignment_score, info_nce, retrieval_recall
from cxrgen.multiview.report_labels import report_targets
from cxrgen.text.report_ae import seeded_init_
from cxrgen.train.report_ae import budgeted_steps, lr_at, optimizer_step, report_tokenizer

log = logging.getLogger(__name__)

#: The modality pairs aligned and evaluated, as (query, gallery).
PAIRS: tuple[tuple[str, str], ...] = (("frontal", "report"), ("lateral", "report"), ("frontal", "lateral"))
EMBED_BATCH = 256


def _embed_batch(model: AlignedModel, data: MultiviewDataset, pick: list[int]) -> dict[str, torch.Tensor]:
    """Embeddings (B, E) of the three modalities of the studies ``pick`` (with gradients), and each image tower's
    pooled features (B, C) under ``frontal_features`` / ``lateral_features``."""
    enc = model.encoders
    ids, mask = model.tokenize([data.reports[i] for i in pick])
    out = {"report": enc.embed_tokens(ids, mask)}
    for view, images in (("frontal", data.frontal[pick]), ("lateral", data.lateral[pick])):
        tower = getattr(enc, view)
        pooled = tower.body(images).mean(dim=(2, 3))  # (B, C): ImageTower.forward before its head
        out[view], out[f"{view}_features"] = F.normalize(tower.head(pooled), dim=-1), pooled
    return out


def label_heads(model: AlignedModel, n_targets: int) -> nn.ModuleDict:
    """Linear heads (training only) from each image tower's pooled features to the report targets."""
    channels = model.encoders.frontal.head.in_features
    return nn.ModuleDict({view: nn.Linear(channels, n_targets) for view in ("frontal", "lateral")})


def batch_loss(model: AlignedModel, data: MultiviewDataset, pick: list[int], view_weight: float,
               label_weight: float = 0.0, heads: nn.ModuleDict | None = None, targets: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean InfoNCE over the three pairs + view_weight x view-check BCE (+ label_weight x report-label BCE of
    both image towers through ``heads``, against ``targets`` (N, K) of the whole split); the parts as floats."""
    z = _embed_batch(model, data, pick)
    tau = model.encoders.temperature
    parts = {f"{a}-{b}": info_nce(z[a], z[b], tau) for a, b in PAIRS}
    images = torch.cat([data.frontal[pick], data.lateral[pick]])  # (2B, 1, S, S)
    is_lateral = torch.cat([torch.zeros(len(pick)), torch.ones(len(pick))])  # (2B,)
    view = F.binary_cross_entropy_with_logits(model.encoders.view_logits(images), is_lateral)
    loss = sum(parts.values()) / len(parts) + view_weight * view
    extra = {"view": float(view.detach()), "tau": float(tau.detach())}
    if label_weight > 0 and heads is not None and targets is not None:
        labels = sum(F.binary_cross_entropy_with_logits(heads[v](z[f"{v}_features"]), targets[pick])
                     for v in ("frontal", "lateral")) / 2
        loss = loss + label_weight * labels
        extra["labels"] = float(labels.detach())
    return loss, {**{k: float(v.detach()) for k, v in parts.items()}, **extra}


def fit_aligned(model: AlignedModel, data: MultiviewDataset, cfg: MultiviewTrainConfig,
                history: list[dict[str, float]] | None = None) -> list[float]:
    """Train the aligned encoders on ``data`` for ``cfg.aligned.steps`` steps; the per-step losses (and each
    step's loss parts appended to ``history`` when given)."""
    stage = cfg.aligned
    generator = torch.Generator().manual_seed(cfg.seed)
    params = list(model.encoders.parameters())
    heads = targets = None
    if stage.label_weight > 0:
        targets = report_targets(data.reports)  # (N, K)
        heads = label_heads(model, targets.shape[1])
        params += list(heads.parameters())
        log.info("report-label loss: %d targets, %d of them ever positive in training", targets.shape[1],
                 int((targets.sum(0) > 0).sum()))
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    model.encoders.train()
    batch = min(stage.batch_size, len(data))
    losses: list[float] = []
    for step in budgeted_steps(stage.steps, cfg.max_minutes, "aligned encoders", cfg.progress):
        pick = torch.randperm(len(data), generator=generator)[:batch].tolist()
        loss, parts = batch_loss(model, data, pick, stage.view_weight, stage.label_weight, heads, targets)
        optimizer_step(optimizer, loss, lr_at(step, stage.steps, stage.lr))
        losses.append(float(loss.detach()))
        if history is not None:
            history.append(parts)
        if step % 200 == 0:
            log.info("step %d: %s", step, {k: round(v, 3) for k, v in parts.items()})
    model.encoders.eval()
    return losses


@torch.no_grad()
def embed_dataset(model: AlignedModel, data: MultiviewDataset) -> dict[str, torch.Tensor]:
    """Embeddings (N, E) of every study's frontal, lateral and report, and p(lateral) (N,) of each view."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("frontal", "lateral", "report", "p_frontal", "p_lateral")}
    for s in range(0, len(data), EMBED_BATCH):
        pick = list(range(s, min(s + EMBED_BATCH, len(data))))
        for key, value in _embed_batch(model, data, pick).items():
            if key in parts:
                parts[key].append(value)
        parts["p_frontal"].append(model.lateral_probability(data.frontal[pick]))
        parts["p_lateral"].append(model.lateral_probability(data.lateral[pick]))
    return {k: torch.cat(v) for k, v in parts.items()}


def evaluate_aligned(model: AlignedModel, data: MultiviewDataset, generator: torch.Generator) -> dict:
    """Held-out recall@1/5 both ways per pair, alignment score (true vs shuffled reports), view-check accuracy."""
    z = embed_dataset(model, data)
    n = len(data)
    out: dict = {"n": n, "chance_recall@1": 1.0 / n, "chance_recall@5": min(1.0, 5.0 / n)}
    for a, b in PAIRS:
        out[f"{a}->{b}"] = retrieval_recall(z[a], z[b])
        out[f"{b}->{a}"] = retrieval_recall(z[b], z[a])
    shuffle = torch.randperm(n, generator=generator)
    out["alignment"] = {f"{view}-report": {"true": alignment_score(z[view], z["report"]),
                                           "shuffled": alignment_score(z[view], z["report"][shuffle])}
                        for view in ("frontal", "lateral")}
    correct = (z["p_frontal"] < 0.5).sum() + (z["p_lateral"] > 0.5).sum()
    out["view_check_accuracy"] = float(correct) / (2 * n)
    return out


def run_aligned(cfg: MultiviewTrainConfig, data: dict[str, MultiviewDataset], texts: list[str], out: Path) -> dict:
    """Train on ``data["train"]``, save to ``out/aligned``, evaluate on every other split given."""
    stage = cfg.aligned
    started = time.perf_counter()
    tokenizer = report_tokenizer(stage.tokenizer, texts, stage.vocab_size, out / "tokenizer")
    encoders = AlignedEncoders(vocab_size=len(tokenizer), image_size=cfg.data.image_size, embed_dim=stage.embed_dim,
                               image_width=stage.image_width, text_width=stage.text_width,
                               text_depth=stage.text_depth, heads=stage.heads, max_length=stage.max_length,
                               temperature=stage.temperature)
    seeded_init_(encoders, torch.Generator().manual_seed(cfg.seed))
    model = AlignedModel(encoders, tokenizer)
    losses = fit_aligned(model, data["train"], cfg)
    model.save_pretrained(out / "aligned")
    train_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    evaluation = {split: evaluate_aligned(model, ds, generator) for split, ds in data.items() if split != "train"}
    return {"stage": "aligned", "model": str(out / "aligned"), "train_studies": len(data["train"]),
            "parameters": sum(p.numel() for p in encoders.parameters()), "train_seconds": round(train_seconds, 1),
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "temperature": encoders.temperature.item(),
            "eval": evaluation}
