"""The Markdown report of ``cxrgen evaluate``: tables, image grids and matplotlib plots beside it.

Plots need matplotlib (extra ``[demo]``); without it they are skipped with a logged note and the
report still has every number and the image grids (written with PIL).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import torch

from cxrgen.config import EvalConfig, ImageConfig
from cxrgen.data.images import save_png
from cxrgen.evaluate.suite import ImageSets, PromptTable, load_images

log = logging.getLogger(__name__)

REPORT_NAME = "report.md"
SAMPLES_GRID_NAME = "samples.png"
DIVERSITY_PLOT_NAME = "diversity_by_length.png"
AUROC_PLOT_NAME = "auroc_per_class.png"
MOST_GENERATED_NAME = "c2st_most_generated.png"
GRID_PAD = 4  # pixels of white between tiles
PROMPT_CHARS = 160  # prompt text shown per grid row
FIGURE_SIZE = (6.0, 3.5)  # inches
FIGURE_DPI = 120


def _pyplot() -> ModuleType | None:
    """matplotlib.pyplot on the Agg backend, or None (logged) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: the report has no plots (pip install 'cxrgen[demo]')")
        return None
    return plt


def save_sample_grid(rows: list[list[torch.Tensor | None]], path: Path, image_cfg: ImageConfig) -> Path:
    """One row per prompt: tiles (1, H, W) in the image_cfg range; None leaves a black tile."""
    height, width = image_cfg.size, image_cfg.size
    cols = max(len(r) for r in rows)
    canvas = torch.full((len(rows) * (height + GRID_PAD) + GRID_PAD, cols * (width + GRID_PAD) + GRID_PAD),
                        image_cfg.high)  # (rows of tiles, columns of tiles) with white padding
    for r, row in enumerate(rows):
        top = GRID_PAD + r * (height + GRID_PAD)
        for c, tile in enumerate(row):
            left = GRID_PAD + c * (width + GRID_PAD)
            value = tile[0] if tile is not None else torch.full((height, width), image_cfg.low)
            canvas[top : top + height, left : left + width] = value
    return save_png(canvas, path, image_cfg, text={"layout": "rows: prompts; columns: real | generated 1..K"})


def _samples(table: PromptTable, sets: ImageSets, size: int, cfg: EvalConfig, out_dir: Path) -> list[str]:
    n = min(cfg.grid_prompts, len(table.prompts))
    rows = []
    for p in range(n):
        real_path = table.image_paths[p]
        real = load_images([real_path], size, progress=False)[0] if real_path is not None else None
        rows.append([real, *load_images(sets.generated[p], size, progress=False)])
    save_sample_grid(rows, out_dir / SAMPLES_GRID_NAME, ImageConfig(size=size))
    lines = ["## Samples", "", f"![samples]({SAMPLES_GRID_NAME})", "",
             "Columns: the prompt's real image (black when the table has none), then the generated images.", "",
             "| row | prompt |", "| --- | --- |"]
    for p in range(n):
        text = table.prompts[p].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {p + 1} | {text[:PROMPT_CHARS]}{'…' if len(text) > PROMPT_CHARS else ''} |")
    return lines


def _fmt(value: object, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _plot_diversity(plt: ModuleType, rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    ax.bar([r["tokens"] for r in rows], [r["ms_ssim"] for r in rows], color="tab:blue")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("mean intra-prompt MS-SSIM (lower = more diverse)")
    ax.set_title("Diversity by prompt length")
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def _plot_auroc(plt: ModuleType, auroc: dict, auroc_real: dict, path: Path) -> None:
    names = list(auroc["per_class"])
    nan = float("nan")
    gen = [auroc["per_class"][n] if auroc["per_class"][n] is not None else nan for n in names]
    real = [auroc_real["per_class"].get(n) if auroc_real["per_class"].get(n) is not None else nan for n in names]
    xs = range(len(names))
    width = 0.4
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    ax.bar([x - width / 2 for x in xs], real, width, label="real images", color="tab:gray")
    ax.bar([x + width / 2 for x in xs], gen, width, label="generated images", color="tab:orange")
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC (cxrgen-evaluator vs prompt labels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)


def _tables(result: dict) -> list[str]:
    lines = ["## Fidelity (FID, KID)", "", "| extractor | features | FID | KID (x1e3) |", "| --- | --- | --- | --- |"]
    for name, fid in result["fid"].items():
        kid = result["kid"].get(name)
        lines.append(f"| {name} | {result['feature_dims'].get(name, '')} | {_fmt(fid, 3)} | "
                     f"{_fmt(kid * 1e3 if kid is not None else None, 3)} |")
    ms = result["ms_ssim"]
    lines += ["", (f"{result['n_generated']} generated vs {result['n_real']} real images. FID needs far more images "
              "than feature dimensions: small sets give biased, unstable values."), "",
              "## Diversity (MS-SSIM within a prompt; lower = more diverse)", "",
              (f"mean {_fmt(ms.get('mean'))} ± {_fmt(ms.get('std'))} over {result['n_prompts']} prompts"
              f" ({ms.get('scales', 'n/a')} scales)"), "", "| prompt tokens | MS-SSIM | prompts |", "| --- | --- | --- |"]
    lines += [f"| {r['tokens']} | {_fmt(r['ms_ssim'])} | {r['prompts']} |" for r in result["diversity_by_length"]]
    gen, real = result["auroc"], result["auroc_real"]
    lines += ["", "## Alignment (RoentGen table 3 layout)", "",
              "| class | AUROC real | AUROC generated | positives / negatives (per prompt) |",
              "| --- | --- | --- | --- |"]
    for name, value in gen["per_class"].items():
        counts = (real.get("counts") or {}).get(name) or {}
        n = f"{counts['positive']} / {counts['negative']}" if counts else ""
        lines.append(f"| {name} | {_fmt(real['per_class'].get(name), 3)} | {_fmt(value, 3)} | {n} |")
    lines.append(f"| **mean** | {_fmt(real.get('mean'), 3)} | {_fmt(gen.get('mean'), 3)} | |")
    return lines


def _memorization_lines(mem: dict) -> list[str]:
    lines = ["", "## Memorization", ""]
    if mem.get("threshold") is None and mem.get("copy_rate") is None and "top_pairs" not in mem:
        return lines + [f"not measured: {mem.get('note', '')}"]
    lines += [(f"copy rate {_fmt(mem['copy_rate'])} (share of generated images closer to their nearest training "
              f"image than the {mem['quantile']} quantile of real held-out images: threshold "
              f"{_fmt(mem['threshold'])}, {mem['similarity']} similarity of {mem['feature_space']} features; "
              f"{mem['n_train']} training, {mem['n_heldout']} held-out images)"), "",
              f"![nearest pairs]({mem['grid']})", "", "Rows: generated | nearest training image.", "",
              "| similarity | pixel SSIM | generated | training |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['similarity']:.4f} | {p['pixel_ssim']:.3f} | {Path(p['generated']).name} | {p['train']} |"
              for p in mem["top_pairs"]]
    return lines


def _reid_lines(reid: dict) -> list[str]:
    lines = ["", "## Privacy (re-identification)", ""]
    if reid.get("mean") is None:
        return lines + [f"not measured: {reid.get('note', '')}"]
    held = reid.get("heldout") or {}
    return lines + [
        (f"Highest P(same patient) of each generated image against the {reid['n_train']} training images: mean "
         f"{_fmt(reid['mean'], 3)}, max {_fmt(reid['max'], 3)} (an exact copy: {_fmt(reid['copy_score'], 3)}); "
         f"real held-out images (other patients) against the "
         f"same training images: mean {_fmt(held.get('mean'), 3)}, max {_fmt(held.get('max'), 3)}. Generated images "
         f"above the held-out {reid['quantile']} quantile ({_fmt(reid['threshold'], 3)}): "
         f"{_fmt(reid['above_threshold'], 3)}. Model `{reid['model']}` (held-out pair AUROC "
         f"{_fmt(reid.get('model_heldout_auroc'), 3)}).")]


def _c2st_lines(c2st: dict, size: int, out_dir: Path) -> list[str]:
    if c2st.get("cnn") is None:
        return [f"C2ST not measured: {c2st.get('note', '')}"]
    ci, lci = c2st["cnn_ci"], c2st["linear_ci"]
    lines = [(f"C2ST accuracy (generated vs real held-out, {c2st['n']} + {c2st['n']} images, {c2st['folds']}-fold; "
              f"0.5 = indistinguishable, 1.0 = every image told apart): CNN **{c2st['cnn']:.3f}** "
              f"[{ci[0]:.3f}, {ci[1]:.3f}], linear on {c2st['image_size']} px pixels **{c2st['linear']:.3f}** "
              f"[{lci[0]:.3f}, {lci[1]:.3f}] ({c2st['confidence']:.0%} Wilson intervals)"), ""]
    lines += [f"note: {n}" for n in c2st.get("notes", [])]
    top = c2st.get("most_generated", [])
    if top:
        tiles = load_images([Path(t["path"]) for t in top], size, progress=False)
        save_sample_grid([list(tiles)], out_dir / MOST_GENERATED_NAME, ImageConfig(size=size))
        lines += ["", f"![most generated-looking]({MOST_GENERATED_NAME})", "",
                  "The generated images the CNN finds most \"generated\" (out-of-fold P(generated): "
                  + ", ".join(f"{t['p_generated']:.3f}" for t in top) + ")."]
    return lines


def _realism_lines(result: dict, out_dir: Path) -> list[str]:
    """C2ST (with the most "generated" images), SWD, PRDC per feature space and per-finding FID."""
    lines = ["", "## Realism (C2ST, SWD, PRDC)", ""] + _c2st_lines(result["c2st"], result["image_size"], out_dir)
    swd = result["swd"]
    levels = ", ".join(f"{k} px {v:.1f}" for k, v in swd.get("per_level", {}).items())
    lines += ["", f"SWD x1e3 (Laplacian-pyramid 7x7 patches, lower = closer): mean {_fmt(swd.get('mean'), 2)}"
              + (f" ({levels})" if levels else f" ({swd.get('note', '')})"), "",
              "| feature space | precision | recall | density | coverage |", "| --- | --- | --- | --- | --- |"]
    for name, p in result["prdc"].items():
        lines.append(f"| {name} | {_fmt(p['precision'], 3)} | {_fmt(p['recall'], 3)} | {_fmt(p['density'], 3)} | "
                     f"{_fmt(p['coverage'], 3)} |")
    if result["fid_per_finding"]:
        lines += ["", "Per-finding FID (prompts with the finding vs real images labelled with it):", "",
                  "| finding | generated | real | FID |", "| --- | --- | --- | --- |"]
        for name, f in result["fid_per_finding"].items():
            fids = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in f["fid"].items())
            lines.append(f"| {name} | {f['n_generated']} | {f['n_real']} | {fids} |")
    return lines


def _compute_lines(compute: dict) -> list[str]:
    ips = compute.get("images_per_s")
    return ["", "## Compute", "", "| quantity | value |", "| --- | --- |",
            f"| denoiser parameters | {compute['denoiser_params']:,} |",
            (f"| text encoder / autoencoder parameters | {compute['text_encoder_params']:,} / "
            f"{compute['autoencoder_params']:,} |"),
            (f"| denoiser GFLOPs per image ({compute['steps']} steps x {compute['forward_passes_per_step']} passes) "
            f"| {compute['gflops_per_image']:.3f} |"),
            f"| images/s (batch {compute.get('batch_size', 'n/a')}, {compute.get('device', 'n/a')}) | {_fmt(ips, 3)} |",
            f"| peak memory (MiB; {compute.get('memory_kind', 'n/a')}) | {_fmt(compute.get('peak_memory_mib'), 1)} |"]


def write_report(result: dict, table: PromptTable, sets: ImageSets, out_dir: str | Path, cfg: EvalConfig) -> Path:
    """Write ``report.md`` with grids (samples, memorization pairs) and plots beside it; returns its path."""
    out_dir = Path(out_dir)
    settings = result.get("settings", {})
    lines = ["# cxrgen evaluation report", "", f"model: `{settings.get('model', '')}`  ",
             (f"prompts: `{settings.get('prompts', '')}` ({result['n_prompts']} prompts x "
             f"{settings.get('n_per_prompt', '')} images, labels from {settings.get('label_source', '')})  "),
             f"real reference: `{settings.get('real_manifest', '')}` ({result['n_real']} images)  ",
             f"evaluator: cxrgen-evaluator `{settings.get('evaluator', '')}`", ""]
    lines += [f"note: {n}  " for n in result.get("input_notes", [])] + ([""] if result.get("input_notes") else [])
    lines += _samples(table, sets, result["image_size"], cfg, out_dir) + [""] + _tables(result)
    lines += _memorization_lines(result["memorization"])
    if "reid" in result:
        lines += _reid_lines(result["reid"])
    if "c2st" in result:
        lines += _realism_lines(result, out_dir)
    lines += _compute_lines(result["compute"])
    plt = _pyplot()
    if plt is not None:
        lines += ["", "## Plots", ""]
        if result["diversity_by_length"]:
            _plot_diversity(plt, result["diversity_by_length"], out_dir / DIVERSITY_PLOT_NAME)
            lines += [f"![diversity by prompt length]({DIVERSITY_PLOT_NAME})", ""]
        _plot_auroc(plt, result["auroc"], result["auroc_real"], out_dir / AUROC_PLOT_NAME)
        lines += [f"![per-class AUROC]({AUROC_PLOT_NAME})", ""]
    path = out_dir / REPORT_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path
