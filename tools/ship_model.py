"""Copy a trained model folder into the package as the default model, with a training record.

    .venv/bin/python tools/ship_model.py runs/cxr256-cpu --autoencoder runs/ae-cxr256 \
        --recipe "cxr256-cpu.yaml + autoencoder-cxr256.yaml" [--dest src/cxrgen/models/default]

A run that started from an earlier model's weights (``model.denoiser.pretrained``) is shipped with
``--start-from OLD/training.json`` instead of ``--autoencoder`` (read before DEST is replaced):

    .venv/bin/python tools/ship_model.py runs/cxr256-cpu-stage2 \
        --start-from src/cxrgen/models/default/training.json --recipe "..."

Writes DEST/training.json: the recipe, the hardware it ran on (CPU model, cores, torch), wall time
and images seen of the diffusion run (its metrics.json, summed over resumed segments as recorded
in segments, and over the earlier stages of --start-from, which are kept under "stages"), and the
autoencoder's held-out PSNR / SSIM (its metrics.json, or the earlier record's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cxrgen.integrity import record_weights


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def halve_weights(folder: Path) -> None:
    """Rewrite every safetensors file in ``folder`` with its float32 tensors as float16."""
    for path in folder.glob("*.safetensors"):
        state = load_file(str(path))
        save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a `cxrgen train` output folder (holds model/ and metrics.json)")
    parser.add_argument("--autoencoder", help="the `cxrgen train-autoencoder` output folder")
    parser.add_argument("--start-from", help="training.json of the model this run started from (fine-tuning stage)")
    parser.add_argument("--recipe", required=True, help="the configs and commands that made it")
    parser.add_argument("--segments", nargs="*", default=[], help="metrics.json of earlier segments of a resumed run")
    parser.add_argument("--dest", default="src/cxrgen/models/default")
    parser.add_argument("--fp16-denoiser", action="store_true",
                        help="store the denoiser's weights as float16 (half the bytes in git; loaded back as float32)")
    parser.add_argument("--wall-s", type=float, help="training wall time when the run was stopped and finished "
                        "with --resume (its metrics.json then times only the last segment)")
    args = parser.parse_args()
    run, dest = Path(args.run), Path(args.dest)
    metrics = [json.loads(Path(p).read_text()) for p in args.segments] + [json.loads((run / "metrics.json").read_text())]
    if (args.autoencoder is None) == (args.start_from is None):
        parser.error("give --autoencoder (a run from scratch) or --start-from (a run from an earlier model), not both")
    before = json.loads(Path(args.start_from).read_text()) if args.start_from else None  # read before DEST goes
    if before is None:
        ae_raw = json.loads((Path(args.autoencoder) / "metrics.json").read_text())
        ae = {"steps": ae_raw["steps"], "train_images": ae_raw["train_images"], "heldout": ae_raw["eval"],
              "scale": ae_raw["scale"], "shift": ae_raw["shift"]}
    else:
        ae = before["autoencoder"]
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run / "model", dest)
    if args.fp16_denoiser:
        halve_weights(dest / "denoiser")
    record_weights(dest)  # the sha256 of the weights as shipped (halving rewrote the denoiser's)
    record = {
        "recipe": args.recipe,
        "hardware": {"device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                     "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
        "steps": metrics[-1]["steps"],
        "images_seen": metrics[-1]["images_seen"],
        "wall_s": args.wall_s if args.wall_s is not None else sum(m["wall_s"] for m in metrics),
        "final_loss": metrics[-1]["final_loss"],
        "autoencoder": ae,
        "denoiser_weights_dtype": "float16" if args.fp16_denoiser else "float32",
        "weights_bytes": sum(p.stat().st_size for p in dest.rglob("*.safetensors")),
    }
    if before is not None:  # totals over all stages; each stage's own record kept in order
        stages = before.pop("stages", None) or [{k: v for k, v in before.items() if k not in ("autoencoder", "weights_bytes")}]
        stage = {k: v for k, v in record.items() if k not in ("autoencoder", "weights_bytes")}
        record.update(stages=[*stages, stage], steps=sum(st["steps"] for st in [*stages, stage]),
                      images_seen=sum(st["images_seen"] for st in [*stages, stage]),
                      wall_s=sum(st["wall_s"] for st in [*stages, stage]))
    (dest / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
