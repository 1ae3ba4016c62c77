"""Evaluation metrics that take features or images, never models: FID / KID, MS-SSIM diversity,
classifier AUROC against prompt labels, and memorization (nearest training neighbours)."""

from cxrgen.evaluate.alignment import per_class_auroc
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

__all__ = [
    "MSSSIMSettings",
    "calibrate_threshold",
    "copy_rate",
    "diversity_by_length",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "kid_from_features",
    "ms_ssim_diversity",
    "nearest_neighbours",
    "pair_ssim",
    "per_class_auroc",
    "save_pairs_grid",
    "scales_for_size",
    "top_pairs",
]
