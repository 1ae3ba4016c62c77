"""Autoencoder training: a tiny codec on synthetic blob images (32x32 PNGs), a few dozen CPU steps."""

from __future__ import annotations

import json
import math
from importlib.resources import files
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from cxrgen.autoencoder import LatentCodec
from cxrgen.config import AutoencoderConfig, AutoencoderTrainConfig, ImageConfig, load_config
from cxrgen.data.images import load_image, save_png
from cxrgen.data.manifest import new_manifest
from cxrgen.errors import ConfigError, DataError
from cxrgen.losses import PatchDiscriminator, hinge_d_loss, kl_loss, ssim_loss
from cxrgen.train.autoencoder import (
    METRICS_NAME,
    TRAIN_CONFIG_NAME,
    ImageFiles,
    _build_codec,
    evaluate_codec,
    holdout_split,
    jitter_intensity,
    random_crop,
    resolve_images,
    run_train_autoencoder,
    train_autoencoder,
)

SIZE = 32
N_IMAGES = 40


def blobs(n: int, seed: int) -> torch.Tensor:
    """Smooth random Gaussian blobs, (n, 1, SIZE, SIZE) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    out = torch.zeros(n, SIZE, SIZE)
    for _ in range(3):
        cx, cy, amp = torch.rand((3, n, 1, 1), generator=g)
        width = 0.08 + 0.15 * torch.rand((n, 1, 1), generator=g)
        out += amp * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    out = out / out.amax(dim=(1, 2), keepdim=True)
    return (out * 2 - 1).unsqueeze(1)  # (n, 1, H, W)


def tiny_train_cfg(**kw) -> AutoencoderTrainConfig:
    model = AutoencoderConfig(block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1,
                              norm_num_groups=4, mid_block_add_attention=False)
    base = dict(image=ImageConfig(size=SIZE), model=model, steps=40, batch_size=8, lr=3e-3,
                holdout_fraction=0.2, log_every=10, progress=False, device="cpu", seed=0)
    return AutoencoderTrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def png_paths(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("blobs")
    cfg = ImageConfig(size=SIZE)
    return [str(save_png(img, folder / f"{i:03d}.png", cfg)) for i, img in enumerate(blobs(N_IMAGES, 0))]


@pytest.fixture(scope="module")
def trained(png_paths, tmp_path_factory) -> tuple[AutoencoderTrainConfig, dict, Path]:
    cfg = tiny_train_cfg()
    out = tmp_path_factory.mktemp("run")
    return cfg, train_autoencoder(cfg, png_paths, out), out


def _eval_loader(cfg: AutoencoderTrainConfig, png_paths: list[str]) -> DataLoader:
    _, held = holdout_split(png_paths, cfg.holdout_fraction, cfg.seed)
    return DataLoader(ImageFiles(held, cfg.image), batch_size=cfg.batch_size)


def test_reconstruction_loss_goes_down(trained):
    _, metrics, _ = trained
    assert metrics["train"]["l1_last"] < 0.7 * metrics["train"]["l1_first"]


def test_held_out_psnr_ssim_finite_and_better_than_untrained(trained, png_paths):
    cfg, metrics, _ = trained
    ev = metrics["eval"]
    assert ev["images"] == round(cfg.holdout_fraction * N_IMAGES)
    assert math.isfinite(ev["psnr"]) and math.isfinite(ev["ssim"])
    untrained = evaluate_codec(_build_codec(cfg), _eval_loader(cfg, png_paths), cfg.image)
    assert ev["psnr"] > untrained["psnr"] + 1.0
    assert ev["ssim"] > untrained["ssim"]


def test_output_dir_has_safetensors_configs_and_metrics(trained):
    cfg, metrics, out = trained
    names = {p.name for p in out.iterdir()}
    assert {"diffusion_pytorch_model.safetensors", "config.json", TRAIN_CONFIG_NAME,
            METRICS_NAME} <= names
    assert json.loads((out / METRICS_NAME).read_text()) == json.loads(json.dumps(metrics))
    assert load_config(AutoencoderTrainConfig, out / TRAIN_CONFIG_NAME) == cfg
    assert metrics["latent_shape"] == [4, SIZE // 4, SIZE // 4]


def test_reloaded_codec_reproduces_trained_outputs(trained, png_paths):
    cfg, metrics, out = trained
    codec = LatentCodec.from_pretrained(out)
    again = evaluate_codec(codec, _eval_loader(cfg, png_paths), cfg.image)
    assert again["psnr"] == pytest.approx(metrics["eval"]["psnr"], rel=1e-5)
    assert again["ssim"] == pytest.approx(metrics["eval"]["ssim"], rel=1e-5)
    assert (codec.scale, codec.shift) == (metrics["scale"], metrics["shift"])


def test_measured_scale_standardises_training_latents(trained, png_paths):
    cfg, metrics, out = trained
    codec = LatentCodec.from_pretrained(out).eval()
    train_paths, _ = holdout_split(png_paths, cfg.holdout_fraction, cfg.seed)
    x = torch.stack([load_image(p, cfg.image) for p in train_paths])  # (N, 1, H, W)
    with torch.no_grad():
        z = codec.encode(x, generator=torch.Generator().manual_seed(1))
        mean, std = codec.encode_distribution(x)
        raw = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(2))
    assert float(z.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(z.std()) == pytest.approx(1.0, abs=0.05)
    assert metrics["scale"] == pytest.approx(1.0 / float(raw.std()), rel=0.05)  # scale = 1 / std


def test_manifest_input_uses_its_splits(png_paths, tmp_path):
    splits = ["train"] * 30 + ["validate"] * 6 + ["test"] * 4
    df = new_manifest([{"image_path": p, "split": s} for p, s in zip(png_paths, splits, strict=True)])
    metrics = train_autoencoder(tiny_train_cfg(steps=2), df, tmp_path / "m")
    assert metrics["train_images"] == 30 and metrics["eval"]["images"] == 6
    train, held = resolve_images(tiny_train_cfg(eval_split="test"), df)
    assert len(train) == 30 and set(held) == set(png_paths[36:])
    with pytest.raises(DataError, match="eval_split"):
        resolve_images(tiny_train_cfg(eval_split="nonexistent"), df)


def test_holdout_split_is_seeded_disjoint_and_complete():
    paths = [f"img{i}.png" for i in range(20)]
    train, held = holdout_split(paths, 0.25, seed=3)
    assert (train, held) == holdout_split(paths, 0.25, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and set(train) | set(held) == set(paths)
    assert holdout_split(paths, 0.25, seed=4) != (train, held)
    with pytest.raises(DataError):
        holdout_split(paths[:1], 0.5, seed=0)


def test_discriminator_runs_after_its_start_step(png_paths, tmp_path):
    cfg = tiny_train_cfg(steps=4, log_every=1, use_discriminator=True, disc_start=3, disc_channels=8,
                         disc_layers=2)
    history = train_autoencoder(cfg, png_paths, tmp_path / "gan")["history"]
    assert [("d_loss" in h) for h in history] == [False, False, True, True]
    assert all(math.isfinite(h["d_loss"]) and math.isfinite(h["g_adv"]) for h in history[2:])


def test_run_from_yaml_with_overrides(png_paths, tmp_path):
    cfg_file = tmp_path / "ae.yaml"
    data = yaml.safe_load((files("cxrgen") / "configs" / "autoencoder-tiny.yaml").read_text())
    data |= {"image_globs": [str(Path(png_paths[0]).parent / "*.png")], "image": {"size": SIZE},
             "model": data["model"] | {"block_out_channels": [8, 16], "norm_num_groups": 4}}
    cfg_file.write_text(yaml.safe_dump(data))
    metrics = run_train_autoencoder(cfg_file, ["steps=2", "progress=false", "device=cpu"],
                                    out_dir=tmp_path / "out")
    assert metrics["steps"] == 2 and metrics["latent_shape"] == [4, SIZE // 2, SIZE // 2]
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(ConfigError):
        run_train_autoencoder(cfg_file, ["no_such_field=1"])


def test_cli_train_autoencoder(png_paths, tmp_path, capsys):
    from cxrgen.cli import main
    from cxrgen.config import save_config

    cfg_file = save_config(tiny_train_cfg(image_globs=(str(Path(png_paths[0]).parent / "*.png"),)), tmp_path / "ae.yaml")
    code = main(["train-autoencoder", str(cfg_file), "--set", "steps=2", "--out", str(tmp_path / "cli")])
    assert code == 0 and (tmp_path / "cli" / "metrics.json").is_file()
    assert '"psnr"' in capsys.readouterr().out


def test_no_images_configured_is_a_config_error():
    with pytest.raises(ConfigError, match="manifests or image_globs"):
        resolve_images(tiny_train_cfg(), None)
    with pytest.raises(DataError, match="match no files"):
        resolve_images(tiny_train_cfg(image_globs=("/nonexistent/*.png",)), None)


def test_intensity_jitter_is_an_increasing_affine_map_per_image():
    cfg = ImageConfig(size=SIZE)
    x = blobs(4, seed=1) * 0.5  # stay inside the range so nothing is clamped
    y = jitter_intensity(x, 0.1, cfg, torch.Generator().manual_seed(0))
    assert not torch.allclose(x, y)
    for xi, yi in zip(x.flatten(1), y.flatten(1), strict=True):
        design = torch.stack([xi, torch.ones_like(xi)], dim=1)  # (P, 2)
        coef = torch.linalg.lstsq(design, yi.unsqueeze(1)).solution.squeeze(1)
        assert coef[0] > 0  # increasing: no inversion; same pixel positions: no flip
        torch.testing.assert_close(design @ coef, yi, atol=1e-5, rtol=0)
    assert jitter_intensity(x, 0.0, cfg, torch.Generator()) is x


def test_random_crop_takes_windows_of_the_image_unflipped():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    y = random_crop(x, 8, torch.Generator().manual_seed(0))
    assert y.shape == (2, 1, 8, 8)
    for xi, yi in zip(x, y, strict=True):  # each crop is a contiguous window: rows and columns increase as in x
        top, left = divmod(int(yi[0, 0, 0].item()) - int(xi[0, 0, 0].item()), 16)
        assert torch.equal(yi, xi[:, top:top + 8, left:left + 8])
    assert random_crop(x, None, torch.Generator()) is x and random_crop(x, 16, torch.Generator()) is x
    with pytest.raises(ConfigError, match="crop_size"):
        tiny_train_cfg(crop_size=4)


def test_losses_behave():
    cfg = ImageConfig(size=SIZE)
    x = blobs(2, seed=2)
    pred = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    loss = ssim_loss(pred, x, cfg)
    loss.backward()
    assert float(ssim_loss(x, x, cfg)) == pytest.approx(0.0, abs=1e-5) and float(loss.detach()) > 0.1
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    assert float(kl_loss(torch.zeros(3), torch.ones(3))) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_loss(torch.ones(3), torch.ones(3))) == pytest.approx(0.5)
    logits = PatchDiscriminator(1, 8, 3)(x)
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch
    assert float(hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))) == 0.0
