"""Scoring of ``cxrgen evaluate``: image files in, metric dicts out (FID/KID, MS-SSIM, AUROC, memorization).

Everything here works on files that already exist, so the same code scores generated images and,
in tests, real images fed as "generated" (FID of a set against itself is ~0, its copy rate high).
The metric math lives in fid.py, diversity.py, alignment.py and memorization.py.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cxrgen.config import EvalConfig, ImageConfig, PromptConfig
from cxrgen.data.images import load_image
from cxrgen.data.prompts import token_counter
from cxrgen.errors import DataError
from cxrgen.evaluate.alignment import per_class_auroc
from cxrgen.evaluate.diversity import diversity_by_length, ms_ssim_diversity
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.extractors import (
    CXREvaluatorExtractor,
    FeatureExtractor,
    extract_features,
)
from cxrgen.evaluate.fid import fid_from_features, kid_from_features
from cxrgen.evaluate.memorization import (
    calibrate_threshold,
    copy_rate,
    nearest_neighbours,
    pair_ssim,
    save_pairs_grid,
    top_pairs,
)
from cxrgen.evaluate.realism import realism_metrics, subset
from cxrgen.evaluate.reid import DEFAULT_REID, ReidExtractor, heldout_auroc, load_reid, reid_scores

log = logging.getLogger(__name__)

PAIRS_GRID_NAME = "memorization_pairs.png"
SIMILARITY = "cosine"  # memorization: cosine similarity of evaluator features
GRAY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1")  # PIL modes read without a colour conversion


@dataclass
class PromptTable:
    """Prompts (P), their labels (P, C) in {1, 0, -1, NaN} and, where given, the real image of each prompt."""

    prompts: list[str]
    labels: np.ndarray
    image_paths: list[Path | None]
    label_source: str  # "columns" (the table's own label columns) or "labeler" (prompt text)


@dataclass
class ImageSets:
    """Files to score: generated (P lists of K), real reference, training and held-out real rows."""

    generated: list[list[Path]]
    real: list[Path]
    train: list[Path]
    heldout: list[Path]
    real_labels: np.ndarray | None = None  # (len(real), 14) CheXpert labels of the reference rows (per-finding FID)


def image_batches(paths: Sequence[Path], size: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Images (B, 1, size, size) in [-1, 1], read, resized and center cropped ``batch_size`` at a time."""
    cfg = ImageConfig(size=size)
    for start in range(0, len(paths), batch_size):
        yield torch.stack([load_image(p, cfg) for p in paths[start : start + batch_size]])  # (B, 1, S, S)


def load_images(paths: Sequence[Path], size: int, progress: bool = True, desc: str = "reading images") -> torch.Tensor:
    """All ``paths`` as one (N, 1, size, size) tensor in [-1, 1]."""
    cfg = ImageConfig(size=size)
    if not paths:
        return torch.zeros(0, 1, size, size)
    return torch.stack([load_image(p, cfg) for p in tqdm(paths, desc=desc, disable=not progress)])


def _tensor_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]  # (B, 1, H, W)


class FeatureCache:
    """Features (N, F) per (extractor, image set), each computed once."""

    def __init__(self, size: int, batch_size: int, progress: bool) -> None:
        self.size, self.batch_size, self.progress = size, batch_size, progress
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    def of_paths(self, extractor: FeatureExtractor, key: str, paths: Sequence[Path]) -> torch.Tensor:
        """Features of image files (read at the generated size; the extractor converts further)."""
        if (id(extractor), key) not in self._cache:
            batches = image_batches(paths, self.size, self.batch_size)
            self._cache[id(extractor), key] = extract_features(extractor, batches, self.progress)
        return self._cache[id(extractor), key]

    def of_images(self, extractor: FeatureExtractor, key: str, images: torch.Tensor) -> torch.Tensor:
        """Features of images already in memory (N, 1, H, W)."""
        if (id(extractor), key) not in self._cache:
            batches = _tensor_batches(images, self.batch_size)
            self._cache[id(extractor), key] = extract_features(extractor, batches, self.progress)
        return self._cache[id(extractor), key]


def input_notes(size: int, sets: dict[str, Sequence[Path]]) -> list[str]:
    """What reading converts in each set of real image files (size other than the generated one, colour), as notes.

    Reads only the file headers; DICOM and unreadable files are left to the reader (which converts or fails).
    """
    notes = []
    for name, paths in sets.items():
        sizes: Counter[tuple[int, int]] = Counter()
        modes: Counter[str] = Counter()
        for path in paths:
            try:
                with Image.open(path) as im:
                    sizes[im.size] += 1
                    modes[im.mode] += 1
            except (OSError, ValueError):
                continue
        other = {s: n for s, n in sizes.items() if s != (size, size)}
        if other:
            shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in Counter(other).most_common(3))
            notes.append(f"{sum(other.values())} of {len(paths)} {name} images are not {size}x{size} px ({shown}): "
                         f"read resized and center cropped to the generated {size} px")
        colour = {m: n for m, n in modes.items() if m not in GRAY_MODES}
        if colour:
            notes.append(f"{sum(colour.values())} of {len(paths)} {name} images have colour channels "
                         f"({', '.join(sorted(colour))}): read as grayscale (luma), as the generated images are")
    for note in notes:
        log.warning("%s", note)
    return notes


def _image_size(path: Path) -> int:
    with Image.open(path) as im:
        width, height = im.size
    if width != height:
        log.warning("generated image %s is %dx%d: reading every image center-cropped to %d px", path, width, height,
                    min(width, height))
    return min(width, height)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _fid_kid(cfg: EvalConfig, extractors: dict[str, FeatureExtractor], feats: FeatureCache, gen: torch.Tensor,
             real: Sequence[Path]) -> dict:
    """FID and KID (mean, std) of generated vs real features, per extractor; None where a set is unusable."""
    fid, kid, kid_std, dims = {}, {}, {}, {}
    for name, extractor in extractors.items():
        real_f = feats.of_paths(extractor, "real", real)
        gen_f = feats.of_images(extractor, "generated", gen)
        dims[name] = int(gen_f.shape[1])
        try:
            fid[name] = fid_from_features(real_f, gen_f)
        except DataError as exc:
            log.warning("FID (%s) is None: %s", name, exc)
            fid[name] = None
        try:
            kid[name], kid_std[name] = kid_from_features(real_f, gen_f, cfg.kid_subsets, cfg.kid_subset_size,
                                                         rng=np.random.default_rng(0))
        except DataError as exc:
            log.warning("KID (%s) is None: %s", name, exc)
            kid[name], kid_std[name] = None, None
    return {"fid": fid, "kid": kid, "kid_std": kid_std, "feature_dims": dims}


def _diversity(gen: torch.Tensor, prompts: list[str], k: int) -> tuple[dict, list[dict]]:
    """MS-SSIM intra-prompt diversity (RoentGen fig. 3) and its mean per prompt-length bucket."""
    if k < 2:
        log.warning("n_per_prompt=%d: MS-SSIM diversity needs at least 2 images per prompt (RoentGen uses 4)", k)
        return {"mean": None, "std": None, "note": "needs n_per_prompt >= 2"}, []
    groups = [gen[p * k : (p + 1) * k] for p in range(len(prompts))]  # P x (K, 1, H, W)
    result = ms_ssim_diversity(groups)
    rows = diversity_by_length(prompts, result["per_prompt"], token_counter(PromptConfig()))
    by_length = [{"tokens": bucket, "ms_ssim": value, "prompts": n} for bucket, value, n in rows]
    return result, by_length


def _probabilities(evaluator: CXREvaluator, images: torch.Tensor, batch_size: int, progress: bool,
                   desc: str) -> np.ndarray:
    out = [evaluator.probabilities(b).cpu() for b in tqdm(list(_tensor_batches(images, batch_size)), desc=desc,
                                                           disable=not progress)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, len(evaluator.class_names)))  # (N, C)


def _alignment(cfg: EvalConfig, evaluator: CXREvaluator, gen: torch.Tensor, table: PromptTable, k: int,
               size: int) -> tuple[dict, dict]:
    """Per-class AUROC on generated images and on the prompts' real images (RoentGen table 3)."""
    names = list(evaluator.class_names)
    gen_probs = _probabilities(evaluator, gen, cfg.eval_batch_size, cfg.progress, "evaluator (generated)")
    auroc = per_class_auroc(gen_probs, np.repeat(table.labels, k, axis=0), names)  # labels repeated per image
    auroc["n_images"] = int(gen.shape[0])
    with_real = [i for i, p in enumerate(table.image_paths) if p is not None]
    if not with_real:
        log.info("the prompts table has no image_path column (or it is empty): no AUROC on real images")
        return auroc, {"per_class": {n: None for n in names}, "mean": None, "n_images": 0,
                       "note": "the prompts table points at no real images (image_path column)"}
    real = load_images([table.image_paths[i] for i in with_real], size, cfg.progress, "reading prompt images")
    real_probs = _probabilities(evaluator, real, cfg.eval_batch_size, cfg.progress, "evaluator (real)")
    auroc_real = per_class_auroc(real_probs, table.labels[with_real], names)
    auroc_real["n_images"] = len(with_real)
    return auroc, auroc_real


def _memorization(cfg: EvalConfig, extractor: FeatureExtractor, feats: FeatureCache, gen: torch.Tensor,
                  gen_paths: list[Path], sets: ImageSets, out_dir: Path) -> dict:
    """Nearest training image of each generated image; copy rate above the held-out-calibrated threshold."""
    if not sets.train:
        log.warning("no training images: memorization is not measured (give --train-manifest)")
        return {"copy_rate": None, "threshold": None, "note": "no training images"}
    gen_f = feats.of_images(extractor, "generated", gen)
    train_f = feats.of_paths(extractor, "train", sets.train)
    idx, sims = nearest_neighbours(gen_f, train_f, metric=SIMILARITY)
    threshold = None
    if sets.heldout:
        heldout_f = feats.of_paths(extractor, "heldout", sets.heldout)
        threshold = calibrate_threshold(heldout_f, train_f, cfg.copy_quantile, metric=SIMILARITY)
    else:
        log.warning("no held-out real rows (%s) in the real manifest: no copy threshold", list(cfg.heldout_splits))
    pairs = top_pairs(idx, sims, cfg.top_pairs)
    gen_idx = [g for g, _, _ in pairs]
    train_imgs = load_images([sets.train[t] for _, t, _ in pairs], gen.shape[-1], cfg.progress, "reading neighbours")
    ssim = pair_ssim(gen[gen_idx], train_imgs)  # (k,)
    grid = save_pairs_grid(list(zip(gen[gen_idx], train_imgs, strict=True)), out_dir / PAIRS_GRID_NAME,
                           text={"similarity": ", ".join(f"{s:.4f}" for _, _, s in pairs),
                                 "layout": "rows: generated | nearest training image"})
    return {
        "copy_rate": copy_rate(sims, threshold) if threshold is not None else None,
        "threshold": threshold,
        "quantile": cfg.copy_quantile,
        "feature_space": extractor.name,
        "similarity": SIMILARITY,
        "similarity_mean": float(np.mean(sims)),
        "similarity_max": float(np.max(sims)),
        "n_train": len(sets.train),
        "n_heldout": len(sets.heldout),
        "top_pairs": [{"generated": str(gen_paths[g]), "train": str(sets.train[t]), "similarity": s,
                       "pixel_ssim": float(v)} for (g, t, s), v in zip(pairs, ssim, strict=True)],
        "grid": grid.name,
    }


def score(cfg: EvalConfig, table: PromptTable, sets: ImageSets, evaluator: CXREvaluator,
          extractors: dict[str, FeatureExtractor], out_dir: str | Path) -> dict:
    """Every image metric of the protocol (all but compute), as a JSON-ready dict."""
    out_dir = Path(out_dir)
    if len(sets.generated) != len(table.prompts) or not all(sets.generated):
        raise DataError(f"{len(sets.generated)} groups of generated images for {len(table.prompts)} prompts: "
                        "give one non-empty group per prompt")
    k = len(sets.generated[0])
    if any(len(group) != k for group in sets.generated):
        raise DataError("every prompt needs the same number of generated images")
    flat = [p for group in sets.generated for p in group]
    size = _image_size(flat[0])
    gen = load_images(flat, size, cfg.progress, "reading generated")  # (P * K, 1, H, W)
    log.info("real, training and held-out images are read resized and center cropped to the generated size "
             "%dx%d, so both sets reach every extractor the same way", size, size)
    feats = FeatureCache(size, cfg.eval_batch_size, cfg.progress)
    result: dict = {"n_generated": len(flat), "n_real": len(sets.real), "n_prompts": len(table.prompts),
                    "image_size": size,
                    "input_notes": input_notes(size, {"real reference": sets.real, "held-out real": sets.heldout})}
    result.update(_fid_kid(cfg, extractors, feats, gen, sets.real))
    result["ms_ssim"], result["diversity_by_length"] = _diversity(gen, table.prompts, k)
    result["auroc"], result["auroc_real"] = _alignment(cfg, evaluator, gen, table, k, size)
    mem_extractor = next((e for e in extractors.values()
                          if isinstance(e, CXREvaluatorExtractor) and e.evaluator is evaluator), None)
    result["memorization"] = _memorization(cfg, mem_extractor or CXREvaluatorExtractor(evaluator), feats, gen, flat,
                                           sets, out_dir)
    result["reid"] = _reid(cfg, feats, gen, flat, sets)
    result.update(_realism(cfg, gen, flat, sets, table, extractors, feats))
    return result


def _reid(cfg: EvalConfig, feats: FeatureCache, gen: torch.Tensor, gen_paths: list[Path], sets: ImageSets) -> dict:
    """Privacy: each generated image's highest re-identification score against the model's training images."""
    folder = Path(cfg.reid_model) if cfg.reid_model else DEFAULT_REID
    if not sets.train or not (folder / "config.json").is_file():
        note = ("no training images (give --train-manifest)" if not sets.train else
                f"no re-identification model at {folder}: train one with `cxrgen train-reid` and give --reid-model")
        log.warning("re-identification is not measured: %s", note)
        return {"mean": None, "max": None, "n_generated": len(gen_paths), "n_train": len(sets.train),
                "model": str(folder), "note": note}
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device.replace("auto", "cpu")
    extractor = ReidExtractor(load_reid(folder, device))
    heldout = feats.of_paths(extractor, "heldout", sets.heldout) if sets.heldout else None
    result = reid_scores(extractor.model, feats.of_images(extractor, "generated", gen),
                         feats.of_paths(extractor, "train", sets.train), heldout, cfg.copy_quantile)
    for item in result["top"]:
        item["generated"], item["train"] = str(gen_paths[item["generated"]]), str(sets.train[item["train"]])
    return {**result, "model": str(folder), "model_heldout_auroc": heldout_auroc(folder)}


def _realism(cfg: EvalConfig, gen: torch.Tensor, flat: list[Path], sets: ImageSets, table: PromptTable,
             extractors: dict[str, FeatureExtractor], feats: FeatureCache) -> dict:
    """C2ST and SWD against held-out real images (the reference set when none), PRDC and per-finding FID."""
    pool = sets.heldout or sets.real
    if not sets.heldout:
        log.warning("no held-out real rows: C2ST and SWD compare with the real reference set instead")
    keep = subset(len(pool), cfg.realism_max_images, torch.Generator().manual_seed(0 if cfg.seed is None else cfg.seed))
    real = load_images([pool[i] for i in keep], gen.shape[-1], cfg.progress, "reading held-out real")
    features = {name: (feats.of_paths(e, "real", sets.real), feats.of_images(e, "generated", gen))
                for name, e in extractors.items()}
    return realism_metrics(cfg, gen, flat, real, table.prompts, features, sets.real_labels)
