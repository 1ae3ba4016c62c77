"""Copy a trained any-to-any model folder into the package as ``twin-codi``, with a training record.

    .venv/bin/python tools/ship_multiview.py RUN [EARLIER_RUN ...] --report-ae AE_RUN --aligned ALIGNED_RUN [...] \
        --eval EVAL_VALIDATE/metrics.json EVAL_TEST/metrics.json --recipe "..." [--dest src/cxrgen/models/twin-codi] \
        [--guidance-scale W]

RUN is the last `cxrgen train-multiview` stage (holds model/, metrics.json and config.yaml); EARLIER_RUN are the
stages it started from (``codi.init_from``), oldest first. The weights are stored as float16 (half the bytes in
git; the pipeline loads them back as float32). DEST/training.json records the recipe, the hardware, every stage's
steps and CPU seconds (the report autoencoder's and the aligned encoders' included) and the evaluation it shipped
with (`cxrgen evaluate-multiview` on the shipped folder). ``--guidance-scale`` sets the shipped pipeline's default
classifier-free guidance (``model_index.json`` -> ``sampling``), e.g. the scale chosen on a validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cxrgen.integrity import record_weights


def halve_weights(folder: Path) -> None:
    """Rewrite every safetensors file under ``folder`` with its float32 tensors as float16."""
    for path in folder.rglob("*.safetensors"):
        state = load_file(str(path))
        save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}, str(path))


def set_guidance_default(folder: Path, guidance_scale: float) -> dict:
    """Set the default guidance scale in ``folder/model_index.json``'s ``sampling``; return the new sampling."""
    if guidance_scale < 1:
        raise SystemExit(f"--guidance-scale {guidance_scale}: give a scale >= 1 (1 is no guidance)")
    path = folder / "model_index.json"
    index = json.loads(path.read_text(encoding="utf-8"))
    if "sampling" not in index:
        raise SystemExit(f"{path} has no sampling defaults: is it a cxrgen multi-view pipeline folder?")
    index["sampling"] = {**index["sampling"], "guidance_scale": float(guidance_scale)}
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return index["sampling"]


def stage_record(run: Path) -> dict:
    """The stage's name, steps, batch size, training CPU / wall seconds and threads (its metrics.json)."""
    metrics = json.loads((run / "metrics.json").read_text())
    keys = ("stage", "steps", "batch_size", "train_studies", "train_reports", "parameters", "params", "train_seconds",
            "train_cpu_seconds", "threads")
    return {"run": run.name, **{k: metrics[k] for k in keys if k in metrics}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="the CoDi stages, oldest first; the last one's model/ is shipped")
    parser.add_argument("--report-ae", required=True, help="the report autoencoder's `train-multiview` folder")
    parser.add_argument("--aligned", required=True, nargs="+",
                        help="the aligned encoders' `train-multiview` folder(s), oldest first (e.g. InfoNCE, then the "
                             "nodule-site fine-tune whose towers the last CoDi stage read)")
    parser.add_argument("--eval", required=True, nargs="+",
                        help="metrics.json of `cxrgen evaluate-multiview` on the result (one per split)")
    parser.add_argument("--recipe", required=True, help="the configs and commands that made it")
    parser.add_argument("--dest", default="src/cxrgen/models/twin-codi")
    parser.add_argument("--guidance-scale", type=float, help="the shipped default guidance scale (else the run's)")
    args = parser.parse_args()
    runs, dest = [Path(r) for r in args.runs], Path(args.dest)
    for run in runs:
        if not (run / "metrics.json").is_file():
            parser.error(f"{run}: no metrics.json; give finished `cxrgen train-multiview` folders")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(runs[-1] / "model", dest)
    halve_weights(dest)
    if args.guidance_scale is not None:
        set_guidance_default(dest, args.guidance_scale)
    record_weights(dest)  # the sha256 of the weights as shipped
    evaluations = [json.loads(Path(p).read_text()) for p in args.eval]
    record = {
        "recipe": args.recipe,
        "hardware": {"device": "cpu", "cores": os.cpu_count(), "torch": torch.__version__},
        "stages": [stage_record(Path(args.report_ae)), *(stage_record(Path(a)) for a in args.aligned),
                   *(stage_record(r) for r in runs)],
        "sampling": json.loads((dest / "model_index.json").read_text(encoding="utf-8")).get("sampling"),
        "weights_dtype": "float16",
        "weights_bytes": sum(p.stat().st_size for p in dest.rglob("*.safetensors")),
        "evaluation": {e["split"]: {k: e[k] for k in ("n", "settings", "marks", "all_marks_passed", "all_mistakes_fail")
                                    if k in e} for e in evaluations},
    }
    record["codi_train_cpu_seconds"] = sum(s.get("train_cpu_seconds", 0.0) for s in record["stages"])
    (dest / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in record.items() if k != "evaluation"}, indent=2))


if __name__ == "__main__":
    main()
