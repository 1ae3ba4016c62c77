"""Evaluation metrics that take features or images, never models: FID / KID, MS-SSIM diversity,
classifier AUROC against prompt labels, memorization (nearest training neighbours), and realism:
C2ST, SWD, PRDC and per-finding FID."""

from cxrgen.evaluate.alignment import per_class_auroc
from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.diversity import MSSSIMSettings, diversity_by_length, ms_ssim_diversity, scales_for_size
from cxrgen.evaluate.fid import feature_stats, fid_from_features, frechet_distance, kid_from_features
from cxrgen.evaluate.memorization import (
    calibrate_threshold,
    copy_rate,
    nearest_neighbours,
    pair_ssim,
    save_pairs_grid,
    top_pairs,
)
from cxrgen.evaluate.per_finding import fid_per_finding
from cxrgen.evaluate.prdc import prdc
from cxrgen.evaluate.swd import SWDSettings, swd

__all__ = [
    "C2STSettings",
    "MSSSIMSettings",
    "SWDSettings",
    "c2st",
    "calibrate_threshold",
    "copy_rate",
    "diversity_by_length",
    "feature_stats",
    "fid_per_finding",
    "fid_from_features",
    "frechet_distance",
    "kid_from_features",
    "ms_ssim_diversity",
    "nearest_neighbours",
    "pair_ssim",
    "per_class_auroc",
    "prdc",
    "save_pairs_grid",
    "scales_for_size",
    "swd",
    "top_pairs",
]
