"""Convert a model folder of the earlier cxrgen layout (YAML sidecars) to the diffusers layout.

    python tools/convert_legacy_model.py OLD_DIR NEW_DIR

Earlier layout: denoiser/denoiser_config.yaml + model.safetensors, autoencoder/codec.yaml beside the
AutoencoderKL files, text_encoder/text_encoder_config.yaml (+ by_reference.json), sampling.yaml.
New layout: what ``CXRPipeline.save_pretrained`` writes (model_index.json loadable by diffusers).
Weights are copied exactly; float16 denoiser weights stay float16. Other files (training.json,
train_config.yaml) are copied unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from cxrgen.autoencoder import IdentityCodec, LatentCodec
from cxrgen.config import AutoencoderConfig, DenoiserConfig, SamplingConfig, TextEncoderConfig, load_config
from cxrgen.denoisers import UNetDenoiser, UViT, build_denoiser, denoiser_preset
from cxrgen.pipeline import CXRPipeline
from cxrgen.text import TEXT_ENCODER_CONFIG_NAME, build_text_encoder, load_text_encoder

LEGACY_FILES = {"model_index.json", "sampling.yaml", "autoencoder", "denoiser", "text_encoder", "scheduler"}


def load_legacy(old: Path) -> tuple[CXRPipeline, bool, bool]:
    """The pipeline of a legacy folder, whether its text encoder was by reference, whether its denoiser was fp16."""
    den_cfg = load_config(DenoiserConfig, old / "denoiser" / "denoiser_config.yaml")  # flat fields: read as kwargs
    if denoiser_preset(den_cfg.name).cls is UViT:
        denoiser = build_denoiser(den_cfg)
        state = load_file(str(old / "denoiser" / "model.safetensors"))
        denoiser.load_state_dict(state)
        fp16 = any(v.dtype == torch.float16 for v in state.values())
    else:
        denoiser = UNetDenoiser.from_pretrained(old / "denoiser")
        denoiser.prediction_type = den_cfg.prediction_type
        fp16 = denoiser.dtype == torch.float16
        denoiser.float()
    codec_cfg = load_config(AutoencoderConfig, old / "autoencoder" / "codec.yaml")
    codec = IdentityCodec(codec_cfg) if codec_cfg.kind == "identity" else LatentCodec.from_pretrained(old / "autoencoder")
    text_dir = old / "text_encoder"
    text_cfg = load_config(TextEncoderConfig, text_dir / "text_encoder_config.yaml")
    by_reference = (text_dir / "by_reference.json").is_file()
    if by_reference:
        text = build_text_encoder(text_cfg)
    else:  # weights saved beside the config: rewrite the config as JSON, then load
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(text_dir, tmp, dirs_exist_ok=True)
            record = {**dataclasses.asdict(text_cfg), "by_reference": False}
            (Path(tmp) / TEXT_ENCODER_CONFIG_NAME).write_text(json.dumps(record), encoding="utf-8")
            text = load_text_encoder(tmp)
    sampling_path = old / "sampling.yaml"
    sampling = load_config(SamplingConfig, sampling_path) if sampling_path.is_file() else None
    index = yaml.safe_load((old / "model_index.json").read_text())
    scheduler = DDPMScheduler.from_pretrained(old / "scheduler")
    pipe = CXRPipeline(text, codec, denoiser, scheduler, int(index["image_size"]), sampling)
    return pipe, by_reference, fp16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    pipe, by_reference, fp16 = load_legacy(args.old)
    pipe.save_pretrained(args.new, text_weights=not by_reference)
    if fp16:  # as shipped: half the bytes in git, loaded back as float32
        for path in (args.new / "denoiser").glob("*.safetensors"):
            state = load_file(str(path))
            save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}, str(path))
    for item in args.old.iterdir():
        if item.name not in LEGACY_FILES:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, args.new / item.name)
    print(f"wrote {args.new}")


if __name__ == "__main__":
    main()
