"""CXRPipeline: sampling, determinism, save/load, part checks, bad prompts (tiny random parts)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from tiny_models import PROMPTS, WIDTH, tiny_pipeline

from cxrgen.config import ScheduleConfig
from cxrgen.denoisers import UViT
from cxrgen.errors import ConfigError
from cxrgen.integrity import RECORD_NAME
from cxrgen.pipeline import MODEL_INDEX_NAME, CXRPipeline, load_pipeline
from cxrgen.samplers import training_scheduler


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> CXRPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def saved(pipe: CXRPipeline, tmp_path_factory) -> Path:
    return pipe.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_output_shape_range_and_prompts(pipe: CXRPipeline) -> None:
    out = pipe(PROMPTS, num_images_per_prompt=2, generator=_gen(0), progress=False)
    assert out.images.shape == (4, 1, 32, 32)
    assert torch.isfinite(out.images).all()
    assert out.images.min() >= -1 and out.images.max() <= 1
    assert out.prompts == [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]


def test_same_seed_identical_other_seed_differs(pipe: CXRPipeline) -> None:
    a = pipe(PROMPTS, generator=_gen(7), progress=False).images
    b = pipe(PROMPTS, generator=_gen(7), progress=False).images
    c = pipe(PROMPTS, generator=_gen(8), progress=False).images
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])  # ddpm also draws noise in every step
def test_per_image_generators_make_images_independent_of_batch(pipe: CXRPipeline, sampler: str) -> None:
    """With one generator per image, an image depends on its own seed, not on its batch mates."""
    both = pipe([PROMPTS[0]], num_images_per_prompt=2, sampler=sampler, generator=[_gen(3), _gen(4)],
                progress=False).images
    alone = pipe([PROMPTS[0]], num_images_per_prompt=1, sampler=sampler, generator=[_gen(4)], progress=False).images
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="generators"):
        pipe([PROMPTS[0]], num_images_per_prompt=2, generator=[_gen(3)], progress=False)


def test_sampling_runs_in_eval_mode_and_restores_modes(pipe: CXRPipeline) -> None:
    """Dropout of a module left in train mode (e.g. mid-training previews) must not randomize images."""
    ref = pipe(PROMPTS[:1], generator=_gen(9), progress=False).images
    pipe.text_encoder.model.train()  # the tiny BERT has dropout 0.1
    try:
        assert torch.equal(pipe(PROMPTS[:1], generator=_gen(9), progress=False).images, ref)
        assert pipe.text_encoder.model.training
    finally:
        pipe.eval()


def test_guidance_and_negative_prompt_change_the_image(pipe: CXRPipeline) -> None:
    base = pipe(PROMPTS[:1], guidance_scale=1.0, generator=_gen(1), progress=False).images
    guided = pipe(PROMPTS[:1], guidance_scale=4.0, generator=_gen(1), progress=False).images
    negative = pipe(PROMPTS[:1], guidance_scale=4.0, negative_prompt="right lower lobe opacity",
                    generator=_gen(1), progress=False).images
    assert not torch.allclose(base, guided) and not torch.allclose(guided, negative)


def test_save_load_gives_identical_images(pipe: CXRPipeline, saved: Path) -> None:
    index = json.loads((saved / MODEL_INDEX_NAME).read_text())
    assert index["_class_name"] == "CXRPipeline" and index["image_size"] == 32
    assert index["denoiser"] == ["cxrgen", "UViT"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["sampling"]["sampler"] == pipe.sampling.sampler
    assert {p.name for p in saved.iterdir()} == {"text_encoder", "autoencoder", "denoiser", "scheduler",
                                                 MODEL_INDEX_NAME, RECORD_NAME}
    assert not list(saved.rglob("*.bin")) and not list(saved.rglob("*.pt")) and not list(saved.rglob("*.yaml"))
    assert AutoencoderKL.from_pretrained(saved / "autoencoder").config.scaling_factor == pipe.autoencoder.scale
    a = pipe(PROMPTS, generator=_gen(5), progress=False).images
    for loaded in (CXRPipeline.from_pretrained(saved), DiffusionPipeline.from_pretrained(saved)):
        assert isinstance(loaded, CXRPipeline) and loaded.sampling == pipe.sampling
        assert torch.equal(a, loaded(PROMPTS, generator=_gen(5), progress=False).images)


def test_output_types(pipe: CXRPipeline) -> None:
    pt = pipe(PROMPTS[0], num_inference_steps=2, generator=_gen(3), progress=False).images  # one prompt as str
    arr = pipe(PROMPTS[0], num_inference_steps=2, generator=_gen(3), output_type="np", progress=False).images
    pil = pipe(PROMPTS[0], num_inference_steps=2, generator=_gen(3), output_type="pil", progress=False).images
    assert pt.shape == (1, 1, 32, 32) and arr.shape == (1, 32, 32, 1)
    assert np.allclose(arr[..., 0], (pt[:, 0].numpy() + 1) / 2, atol=1e-6)
    assert pil[0].mode == "L" and pil[0].size == (32, 32)
    assert np.abs(np.asarray(pil[0]) / 255.0 - arr[0, ..., 0]).max() <= 0.5 / 255 + 1e-6
    images, prompts = pipe(PROMPTS[0], num_inference_steps=2, generator=_gen(3), return_dict=False, progress=False)
    assert torch.equal(images, pt) and prompts == [PROMPTS[0]]
    with pytest.raises(ConfigError, match="output_type"):
        pipe(PROMPTS[0], output_type="latent", progress=False)


def test_sentence_pooled_text_samples_and_round_trips(tmp_path: Path) -> None:
    pipe = tiny_pipeline(tmp_path / "parts", overrides=["text_encoder.pooling=sentences",
                                                          "text_encoder.max_sentences=4"])
    prompts = ["Left effusion. No pneumothorax. Normal heart.", "Clear lungs."]  # 3 and 1 sentences
    context, mask = pipe.text_encoder.encode(prompts)
    assert context.shape[1] == 4 and mask.sum(dim=1).tolist() == [3, 1]
    images = pipe(prompts, generator=_gen(2), progress=False).images
    loaded = CXRPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "model"))
    assert loaded.text_encoder.config.pooling == "sentences"
    assert torch.equal(images, loaded(prompts, generator=_gen(2), progress=False).images)


@pytest.mark.parametrize("part", ["denoiser", "scheduler", "text_encoder", "autoencoder"])
def test_missing_part_folder_is_named(saved: Path, tmp_path: Path, part: str) -> None:
    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    shutil.rmtree(copy / part)
    with pytest.raises(ConfigError, match=part):
        CXRPipeline.from_pretrained(copy)


def test_broken_part_is_named(saved: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    (copy / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="denoiser"):
        CXRPipeline.from_pretrained(copy)


def test_mismatched_parts_are_named(pipe: CXRPipeline, saved: Path, tmp_path: Path) -> None:
    kwargs = {k: v for k, v in pipe.denoiser.config.items() if not k.startswith("_")}
    wide = UViT(**{**kwargs, "context_dim": 2 * WIDTH})
    with pytest.raises(ConfigError, match="context_dim"):
        CXRPipeline(pipe.text_encoder, pipe.autoencoder, wide, pipe.scheduler, 32)
    with pytest.raises(ConfigError, match="image_size"):
        CXRPipeline(pipe.text_encoder, pipe.autoencoder, pipe.denoiser, pipe.scheduler, 64)
    with pytest.raises(ConfigError, match="prediction_type"):
        CXRPipeline(pipe.text_encoder, pipe.autoencoder, pipe.denoiser,
                    training_scheduler(ScheduleConfig(), "v_prediction"), 32)
    copy = tmp_path / "model"  # a saved model whose denoiser expects other latent channels
    shutil.copytree(saved, copy)
    cfg_path = copy / "denoiser" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["in_channels"] = 8
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="denoiser"):
        CXRPipeline.from_pretrained(copy)


def test_unknown_location_and_offline_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        CXRPipeline.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="local"):
        CXRPipeline.from_pretrained("no-such-owner-cxrgen/no-such-model")  # offline or absent: clear error
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=MODEL_INDEX_NAME):
        CXRPipeline.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("prompts", [[""], ["   "], [], ["fine", ""]])
def test_empty_prompt_is_an_error(pipe: CXRPipeline, prompts: list[str]) -> None:
    with pytest.raises(ConfigError, match="prompt"):
        pipe(prompts, progress=False)


def test_long_prompt_warns_and_truncates(pipe: CXRPipeline, caplog) -> None:
    long = " ".join(["left pleural effusion"] * 20)
    with caplog.at_level(logging.WARNING):
        out = pipe([long], num_inference_steps=1, generator=_gen(0), progress=False)
    assert out.images.shape == (1, 1, 32, 32)
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_load_pipeline_applies_sampling_overrides(pipe: CXRPipeline, saved: Path) -> None:
    loaded = load_pipeline(saved, "cpu", steps=3, guidance_scale=None, sampler="ddim")
    assert (loaded.sampling.steps, loaded.sampling.sampler) == (3, "ddim")
    assert loaded.sampling.guidance_scale == pipe.sampling.guidance_scale  # None keeps the model's value
    with pytest.raises(ConfigError, match="unknown sampling"):
        load_pipeline(saved, guidance=2.0)


def test_unet_pipeline_round_trips_through_diffusers(tmp_path: Path) -> None:
    """A U-Net model: plain UNet2DConditionModel config on disk; its target comes from the scheduler."""
    pipe = tiny_pipeline(tmp_path / "parts", overrides=["denoiser.name=unet-tiny", "denoiser.prediction_type=sample"])
    saved = pipe.save_pretrained(tmp_path / "unet-model")
    assert json.loads((saved / MODEL_INDEX_NAME).read_text())["denoiser"] == ["cxrgen", "UNetDenoiser"]
    loaded = DiffusionPipeline.from_pretrained(saved)
    assert loaded.denoiser.spec.prediction_type == "sample" == loaded.scheduler.config.prediction_type
    a = pipe(PROMPTS[:1], generator=_gen(4), progress=False).images
    assert torch.equal(a, loaded(PROMPTS[:1], generator=_gen(4), progress=False).images)
