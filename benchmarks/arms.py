"""Shared by the comparison benchmarks: held-out prompt / reference sets, train one arm, score one model.

An *arm* is one training config (a base YAML plus ``--set`` overrides) trained for a fixed number of
steps on the same cache, then scored with ``cxrgen evaluate``'s protocol on the same prompts, seeds
and real reference images, so that the arms differ only in what the overrides change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.config import EvalConfig, TrainConfig, load_config
from cxrgen.data.manifest import read_manifest
from cxrgen.evaluate.run import run_evaluation
from cxrgen.train.trainer import train

#: Evaluator label columns the prompt table carries (the shipped evaluator's classes).
LABELS = ("No Finding", "Pneumonia")


@dataclass(frozen=True)
class EvalSets:
    """Files of one comparison: prompts (with labels and the real image), real reference, training rows."""

    prompts: Path
    real: Path
    train: Path


def _absolute(df: pd.DataFrame, manifest: Path) -> pd.DataFrame:
    df = df.copy()
    df["image_path"] = [str((manifest.parent / p).resolve()) if not Path(p).is_absolute() else p
                        for p in df["image_path"].astype(str)]
    return df


def _balanced_prompts(test: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` test rows, half of them normal (No Finding = 1) where the set has that many, so AUROC has both classes."""
    normal = (test["No Finding"] == 1).to_numpy()
    n_normal = min(n // 2, int(normal.sum()))
    picks = [rng.choice(np.flatnonzero(normal), n_normal, replace=False),
             rng.choice(np.flatnonzero(~normal), min(n - n_normal, int((~normal).sum())), replace=False)]
    return test.iloc[np.sort(np.concatenate(picks))]


def eval_sets(manifests: list[str], out_dir: Path, prompts_per_set: int, seed: int = 0) -> EvalSets:
    """Balanced held-out sets: ``prompts_per_set`` test prompts and an equal share of test/validate images per set.

    Each manifest (collection) gives the same number of prompts (its test rows, half of them normal
    where it has enough) and of real
    reference images (its test + validate rows, capped at the smallest collection's count), so the
    reference mixes the collections as the prompts do.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tables = [_absolute(read_manifest(m), Path(m)) for m in manifests]
    held = [t[t["split"].isin(["test", "validate"])] for t in tables]
    per_set = min(len(h) for h in held)
    prompts, real = [], []
    for table, h in zip(tables, held, strict=True):
        prompts.append(_balanced_prompts(table[table["split"] == "test"], prompts_per_set, rng))
        real.append(h.iloc[np.sort(rng.choice(len(h), per_set, replace=False))])
    sets = EvalSets(out_dir / "prompts.csv", out_dir / "real.csv", out_dir / "train.csv")
    columns = ["prompt", "image_path", *LABELS]
    pd.concat(prompts)[columns].to_csv(sets.prompts, index=False)
    pd.concat(real).to_csv(sets.real, index=False)
    pd.concat([t[t["split"] == "train"] for t in tables]).to_csv(sets.train, index=False)
    return sets


def train_arm(config: str, overrides: list[str], out_dir: Path, steps: int) -> dict:
    """Train one arm for ``steps`` (reusing a finished run in ``out_dir``); the run's metrics.json."""
    done = out_dir / "metrics.json"
    if done.is_file() and json.loads(done.read_text())["steps"] == steps and (out_dir / "model").is_dir():
        return json.loads(done.read_text())
    cfg = load_config(TrainConfig, config, [*overrides, f"steps={steps}", f"out_dir={out_dir}",
                                            "checkpoint_every=1000000", "sample_every=0"])
    return train(cfg, out_dir=out_dir)


def raw_model(run_dir: Path) -> Path:
    """RUN/model-raw: the run's model with the last checkpoint's raw (not EMA) denoiser weights.

    Short runs trained before the EMA warm-up existed hold much of their random init in the EMA
    (0.995 ** 200 = 37%); the raw weights show what the arm learned. Made once, then reused.
    """
    from cxrgen.pipeline import CXRPipeline
    from cxrgen.text import saved_by_reference
    from cxrgen.train.checkpoint import list_checkpoints, read_module
    from cxrgen.train.state import DENOISER_FILE

    dest = run_dir / "model-raw"
    if (dest / "model_index.json").is_file():
        return dest
    pipe = CXRPipeline.from_pretrained(run_dir / "model")
    read_module(pipe.denoiser, list_checkpoints(run_dir / "checkpoints")[-1] / DENOISER_FILE)
    by_reference = saved_by_reference(run_dir / "model" / "text_encoder")
    pipe.save_pretrained(dest, text_weights=not by_reference)
    return dest


def conditioning(model: Path, manifests: list[str], out: Path, per_set: int = 64, seed: int = 0) -> dict:
    """Conditioning gain of ``model`` on ``per_set`` validate rows of each manifest (cached in ``out``)."""
    import torch

    from cxrgen.config import ImageConfig
    from cxrgen.data.images import load_image
    from cxrgen.evaluate.conditioning import conditioning_gain
    from cxrgen.pipeline import CXRPipeline

    if out.is_file():
        return json.loads(out.read_text())
    rng = np.random.default_rng(seed)
    rows = []
    for m in manifests:
        table = _absolute(read_manifest(m), Path(m))
        val = table[table["split"] == "validate"]
        rows.append(val.iloc[np.sort(rng.choice(len(val), min(per_set, len(val)), replace=False))])
    rows = pd.concat(rows)
    pipe = CXRPipeline.from_pretrained(model).eval()
    cfg = ImageConfig(size=pipe.image_size)
    images = torch.stack([load_image(p, cfg) for p in rows["image_path"]])
    result = conditioning_gain(pipe, images, [str(p) for p in rows["prompt"]], seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def score_model(model: Path, sets: EvalSets, out_dir: Path, n_per_prompt: int = 4, **sampling) -> dict:
    """``cxrgen evaluate`` on the comparison's sets; sampling overrides: sampler, steps, guidance_scale, seed."""
    cfg = EvalConfig(model=str(model), prompts=str(sets.prompts), real_manifest=str(sets.real),
                     train_manifest=str(sets.train), out_dir=str(out_dir), n_per_prompt=n_per_prompt,
                     batch_size=n_per_prompt, device="cpu", heldout_splits=("test", "validate"),
                     **{k: v for k, v in sampling.items() if v is not None})
    start = time.perf_counter()
    result = run_evaluation(cfg)
    result["wall_s"] = time.perf_counter() - start
    return result


def run_arm(name: str, config: str, overrides: list[str], folder: Path, steps: int, sets: EvalSets,
            manifests: list[str], n_per_prompt: int, weights: str = "ema") -> tuple[dict, dict]:
    """Train (or reuse) one arm, score its EMA or raw weights and add the conditioning gain: (row, result)."""
    trained = train_arm(config, overrides, folder, steps)
    model = raw_model(folder) if weights == "raw" else folder / "model"
    result = score_model(model, sets, folder / f"eval-{weights}", n_per_prompt)
    row = summary_row(name, result, trained)
    row["cond_gain"] = conditioning(model, manifests, folder / f"conditioning-{weights}.json")["gain"]
    return row, result


def summary_row(name: str, result: dict, trained: dict | None = None) -> dict:
    """The figures the tables print, from an evaluation result and the run's training metrics."""
    compute = result["compute"]
    ips = compute.get("images_per_s")
    prdc = (result.get("prdc") or {}).get("cxrgen-evaluator") or {}
    row = {
        "arm": name,
        "params_M": compute["denoiser_params"] / 1e6,
        "gflops_forward": compute["gflops_forward"],
        "fid_cxr": result["fid"].get("cxrgen-evaluator"),
        "auroc": result["auroc"].get("mean"),
        "ms_ssim": result["ms_ssim"].get("mean"),
        "c2st_cnn": (result.get("c2st") or {}).get("cnn"),
        "c2st_linear": (result.get("c2st") or {}).get("linear"),
        "swd": (result.get("swd") or {}).get("mean"),
        "precision": prdc.get("precision"),
        "recall": prdc.get("recall"),
        "s_per_image": None if not ips else 1.0 / ips,
        "n_generated": result["n_generated"],
        "n_real": result["n_real"],
    }
    if trained is not None:
        row.update(train_images_per_s=trained["images_per_s"], images_seen=trained["images_seen"],
                   train_wall_s=trained["wall_s"])
    return row


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``columns`` for each row (None as '-')."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def ratio_row(a: dict, b: dict, columns: list[str]) -> dict:
    """``a / b`` for each numeric column (the arm name says which)."""
    row: dict = {"arm": f"{a['arm']} / {b['arm']}"}
    for c in columns[1:]:
        x, y = a.get(c), b.get(c)
        row[c] = x / y if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None
    return row
