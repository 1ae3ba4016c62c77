"""Stage ``aligned`` of ``cxrgen train-multiview``: frontal, lateral and report encoders in one space + view check.

Loss per batch of triplets: symmetric InfoNCE (CLIP) of each of the three modality pairs
(frontal-report, lateral-report, frontal-lateral) with one learned temperature, plus
``view_weight`` x binary cross-entropy of the view check on the batch's frontal (0) and lateral (1)
images, plus with ``label_weight`` x the mean binary cross-entropy of both image towers' report labels (the
labeler's observations of the paired report and their sides, :mod:`cxrgen.multiview.report_labels`, through linear
heads used in training only), plus with ``site_weight`` x the per-cell BCE of the frontal tower's last feature map
against the twin's nodule sites (:mod:`cxrgen.multiview.sites`, a 1 x 1 convolution used in training only).
``init_from`` starts from trained encoders and ``freeze`` keeps some of their parts fixed. Evaluation on held-out studies: retrieval recall@1/5 both ways for each pair, the
alignment score of true against shuffled pairs, the view check's accuracy, and with the site loss the nodule
presence AUROC and side accuracy read from the site head.
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
from cxrgen.errors import DataError
from cxrgen.multiview.aligned import AlignedEncoders, AlignedModel
from cxrgen.multiview.contrastive import alignment_score, info_nce, retrieval_recall
from cxrgen.multiview.report_labels import report_targets
from cxrgen.multiview.sites import SiteHead, site_loss, site_pos_weight, site_scores, site_targets
from cxrgen.text.report_ae import seeded_init_
from cxrgen.train.report_ae import budgeted_steps, lr_at, optimizer_step, report_tokenizer

log = logging.getLogger(__name__)

#: The modality pairs aligned and evaluated, as (query, gallery).
PAIRS: tuple[tuple[str, str], ...] = (("frontal", "report"), ("lateral", "report"), ("frontal", "lateral"))
EMBED_BATCH = 256
#: The stride of the aligned image towers (four stride-2 stages): their last feature map is S / 16 on a side.
TOWER_STRIDE = 16


def part_modules(encoders: AlignedEncoders, part: str) -> list[nn.Module]:
    """The modules of one of ``ALIGNED_PARTS``."""
    return {"frontal": [encoders.frontal], "lateral": [encoders.lateral], "view": [encoders.view],
            "report": [encoders.report, encoders.report_head]}[part]


def trainable_parameters(encoders: AlignedEncoders, freeze: tuple[str, ...] = ()) -> list[nn.Parameter]:
    """The parameters the optimiser updates: all but those of the ``freeze`` parts (whose gradients are turned
    off); the temperature always learns."""
    frozen = {id(p) for part in freeze for module in part_modules(encoders, part) for p in module.parameters()}
    for p in encoders.parameters():
        p.requires_grad_(id(p) not in frozen)
    return [p for p in encoders.parameters() if id(p) not in frozen]


class SiteTruth:
    """The nodule-site targets of a dataset, the training-only head, and its positive-cell weight."""

    def __init__(self, data: MultiviewDataset, channels: int, head: SiteHead | None = None) -> None:
        grid = data.frontal.shape[-1] // TOWER_STRIDE
        self.targets, self.known = site_targets(data.table, data.frontal.shape[-1], grid)
        if not bool(self.known.any()):
            raise DataError("aligned.site_weight > 0 needs the twin's nodule sites: no training study has them; "
                            "write the twin sets again with this cxrgen (`cxrgen twin --n N --size S --out DIR`)")
        self.head = head if head is not None else SiteHead(channels)
        self.pos_weight = site_pos_weight(self.targets, self.known)


def _embed_batch(model: AlignedModel, data: MultiviewDataset, pick: list[int]) -> dict[str, torch.Tensor]:
    """Embeddings (B, E) of the three modalities of the studies ``pick`` (with gradients), and each image tower's
    pooled features (B, C) under ``frontal_features`` / ``lateral_features``."""
    enc = model.encoders
    ids, mask = model.tokenize([data.reports[i] for i in pick])
    out = {"report": enc.embed_tokens(ids, mask)}
    for view, images in (("frontal", data.frontal[pick]), ("lateral", data.lateral[pick])):
        tower = getattr(enc, view)
        fmap = tower.body(images)  # (B, C, S/16, S/16)
        pooled = fmap.mean(dim=(2, 3))  # (B, C): ImageTower.forward before its head
        out[view], out[f"{view}_features"], out[f"{view}_map"] = F.normalize(tower.head(pooled), dim=-1), pooled, fmap
    return out


def label_heads(model: AlignedModel, n_targets: int) -> nn.ModuleDict:
    """Linear heads (training only) from each image tower's pooled features to the report targets."""
    channels = model.encoders.frontal.head.in_features
    return nn.ModuleDict({view: nn.Linear(channels, n_targets) for view in ("frontal", "lateral")})


def batch_loss(model: AlignedModel, data: MultiviewDataset, pick: list[int], view_weight: float,
               label_weight: float = 0.0, heads: nn.ModuleDict | None = None, targets: torch.Tensor | None = None,
               site_weight: float = 0.0, sites: SiteTruth | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean InfoNCE over the three pairs + view_weight x view-check BCE (+ label_weight x report-label BCE of
    both image towers through ``heads``, against ``targets`` (N, K) of the whole split; + site_weight x the frontal
    nodule-site BCE against ``sites``); the parts as floats."""
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
    if site_weight > 0 and sites is not None:
        cells = site_loss(sites.head(z["frontal_map"]), sites.targets[pick], sites.known[pick], sites.pos_weight)
        loss = loss + site_weight * cells
        extra["sites"] = float(cells.detach())
    return loss, {**{k: float(v.detach()) for k, v in parts.items()}, **extra}


def fit_aligned(model: AlignedModel, data: MultiviewDataset, cfg: MultiviewTrainConfig,
                history: list[dict[str, float]] | None = None, site_head: SiteHead | None = None) -> list[float]:
    """Train the aligned encoders on ``data`` for ``cfg.aligned.steps`` steps (``site_head``: the training-only
    head of the site loss, made here if None); the per-step losses (and each step's loss parts appended to
    ``history`` when given). Parts in ``aligned.freeze`` keep their weights."""
    stage = cfg.aligned
    generator = torch.Generator().manual_seed(cfg.seed)
    params = trainable_parameters(model.encoders, stage.freeze)
    if stage.freeze:
        log.info("aligned encoders: %s frozen, %d trainable parameters", list(stage.freeze),
                 sum(p.numel() for p in params))
    sites = None
    if stage.site_weight > 0:
        sites = SiteTruth(data, model.encoders.frontal.head.in_features, site_head)
        params += list(sites.head.parameters())
        log.info("nodule-site loss: %d of %d training studies with site truth, %d with a nodule; positive cells "
                 "weigh %.1f", int(sites.known.sum()), len(data), int((sites.targets.flatten(1).amax(1) > 0).sum()),
                 sites.pos_weight)
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
        loss, parts = batch_loss(model, data, pick, stage.view_weight, stage.label_weight, heads, targets,
                                 stage.site_weight, sites)
        optimizer_step(optimizer, loss, lr_at(step, stage.steps, stage.lr))
        losses.append(float(loss.detach()))
        if history is not None:
            history.append(parts)
        if step % 200 == 0:
            log.info("step %d: %s", step, {k: round(v, 3) for k, v in parts.items()})
    model.encoders.eval()
    for p in model.encoders.parameters():
        p.requires_grad_(True)
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


@torch.no_grad()
def evaluate_sites(model: AlignedModel, data: MultiviewDataset, head: SiteHead) -> dict | None:
    """Nodule presence AUROC and side accuracy read by the site head on ``data`` (None without site truth)."""
    targets, known = site_targets(data.table, data.frontal.shape[-1], data.frontal.shape[-1] // TOWER_STRIDE)
    if not bool(known.any()):
        return None
    logits = torch.cat([head(model.encoders.frontal.body(data.frontal[s:s + EMBED_BATCH]))
                        for s in range(0, len(data), EMBED_BATCH)])
    diameters = [float(v) if str(v).strip() else 0.0 for v in data.table["nodule_mm"]]
    return site_scores(logits, targets, known, [str(v) for v in data.table["nodule_lobe"]], diameters)


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
    if stage.init_from is not None:
        model = AlignedModel.from_pretrained(stage.init_from)
        if model.encoders.config.image_size != cfg.data.image_size:
            raise DataError(f"aligned.init_from={stage.init_from} reads {model.encoders.config.image_size} px images, "
                            f"data.image_size is {cfg.data.image_size}: set it to match")
        log.info("aligned encoders from %s (its sizes and tokenizer)", stage.init_from)
    else:
        tokenizer = report_tokenizer(stage.tokenizer, texts, stage.vocab_size, out / "tokenizer")
        encoders = AlignedEncoders(vocab_size=len(tokenizer), image_size=cfg.data.image_size,
                                   embed_dim=stage.embed_dim, image_width=stage.image_width,
                                   text_width=stage.text_width, text_depth=stage.text_depth, heads=stage.heads,
                                   max_length=stage.max_length, temperature=stage.temperature)
        seeded_init_(encoders, torch.Generator().manual_seed(cfg.seed))
        model = AlignedModel(encoders, tokenizer)
    encoders = model.encoders
    head = SiteHead(encoders.frontal.head.in_features) if stage.site_weight > 0 else None
    losses = fit_aligned(model, data["train"], cfg, site_head=head)
    model.save_pretrained(out / "aligned")
    train_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    evaluation = {split: evaluate_aligned(model, ds, generator) for split, ds in data.items() if split != "train"}
    if head is not None:
        for split, ds in data.items():
            scores = evaluate_sites(model, ds, head) if split != "train" else None
            if scores is not None:
                evaluation[split]["nodule_sites"] = scores
    return {"stage": "aligned", "model": str(out / "aligned"), "train_studies": len(data["train"]),
            "parameters": sum(p.numel() for p in encoders.parameters()), "train_seconds": round(train_seconds, 1),
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "temperature": encoders.temperature.item(),
            "eval": evaluation}
