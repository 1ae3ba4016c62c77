"""The augmentation study's outputs: a markdown table and a plot (matplotlib, when installed)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

PLOT_NAME = "augment_study.png"


def _ci(entry: dict) -> str:
    low, high = entry["ci"]
    return f"{entry['auroc']:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(result: dict) -> str:
    """One row per arm: training images, macro AUROC [CI], seed spread, delta vs real [CI], per-class AUROC."""
    stats, sizes = result["auroc"], result["sizes"]["arms"]
    classes = result["classes"]
    reference = result.get("reference")
    level = f"{stats['confidence']:.0%}"
    head = ["arm", "train images (real + synthetic)", f"macro AUROC [{level} CI]", "seeds (mean ± sd)"]
    head += [f"Δ vs {reference} [{level} CI]"] if reference else []
    head += [f"AUROC {c}" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, entry in stats["arms"].items():
        macro = entry["macro"]
        row = [arm, f"{sizes[arm]['real']} + {sizes[arm]['synthetic']}", _ci(macro),
               f"{macro['auroc']:.3f} ± {macro['seed_std']:.3f}"]
        if reference:
            delta = entry.get(f"delta_vs_{reference}")
            row.append("—" if delta is None else f"{delta['auroc']:+.3f} [{delta['ci'][0]:+.3f}, {delta['ci'][1]:+.3f}]")
        row += [_ci(entry["per_class"][c]) for c in classes]
        lines.append("| " + " | ".join(row) + " |")
    fidelity = result.get("synthetic_label_fidelity")
    if fidelity:
        per = ", ".join(f"{c} {v:.3f}" for c, v in fidelity["per_class"].items())
        lines += ["", f"Synthetic label fidelity ({fidelity['what']}): macro {fidelity['macro']:.3f}; {per}."]
    return "\n".join(lines) + "\n"


def write_plot(result: dict, path: str | Path) -> Path | None:
    """Macro AUROC per arm (CI bars, seeds as dots) and per-class AUROC; None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'cxrgen[demo]'): no plot, the table and JSON are written")
        return None
    arms = list(result["auroc"]["arms"])
    classes = result["classes"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1, 1.4]})
    for i, arm in enumerate(arms):
        macro = result["auroc"]["arms"][arm]["macro"]
        low, high = macro["ci"]
        left.errorbar([i], [macro["auroc"]], yerr=[[macro["auroc"] - low], [high - macro["auroc"]]], fmt="o",
                      color=f"C{i}", capsize=4)
        left.scatter([i + 0.15] * len(macro["seeds"]), macro["seeds"], s=10, color=f"C{i}", alpha=0.6)
        width = 0.8 / len(arms)
        for j, c in enumerate(classes):
            entry = result["auroc"]["arms"][arm]["per_class"][c]
            x = j + (i - (len(arms) - 1) / 2) * width
            low, high = entry["ci"]
            right.errorbar([x], [entry["auroc"]], yerr=[[entry["auroc"] - low], [high - entry["auroc"]]],
                           fmt="s", color=f"C{i}", capsize=2, markersize=4, label=arm if j == 0 else None)
    left.set_xticks(range(len(arms)), arms, rotation=20, fontsize=8)
    left.set_ylabel("test AUROC (macro, one-vs-rest)")
    left.set_title(f"{result['task']}: mean of {len(result['seeds'])} seeds, bootstrap CI", fontsize=9)
    right.set_xticks(range(len(classes)), classes, fontsize=8)
    right.set_title("per class", fontsize=9)
    right.legend(fontsize=7, loc="lower center")
    for ax in (left, right):
        ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
