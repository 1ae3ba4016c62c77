"""The diffusion trainer: outputs, EMA, LR schedule, accumulation, checkpoints, NaN stop, bf16, data."""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn
from train_helpers import IMAGE_SIZE, PROMPTS, make_manifest, tiny_config, write_config

from cxrgen.cli import main
from cxrgen.config import ImageConfig, SamplingConfig
from cxrgen.data.dataset import ManifestImageDataset
from cxrgen.errors import TrainingDivergedError
from cxrgen.parts import build_model_parts
from cxrgen.pipeline import CXRPipeline
from cxrgen.text import saved_by_reference
from cxrgen.train import loop, state
from cxrgen.train.checkpoint import (
    CHECKPOINTS_DIR,
    STAGING_PREFIX,
    list_checkpoints,
    read_state,
)
from cxrgen.train.data import ShardedBatchStream, epoch_permutation
from cxrgen.train.ema import EMA
from cxrgen.train.optim import build_lr_schedule, build_optimizer
from cxrgen.train.trainer import setup_run, train


def _ckpt_names(out: Path) -> list[str]:
    return [p.name for p in list_checkpoints(out / CHECKPOINTS_DIR)]


def test_run_writes_model_logs_samples_and_last_k_checkpoints(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=6, sample_every=3, validation_prompts=["left pleural effusion", "no finding"],
                      sampling=dataclasses.asdict(SamplingConfig(steps=2, sampler="ddim")))
    summary = train(cfg)
    out = Path(cfg.out_dir)
    assert summary["steps"] == 6 and summary["images_seen"] == 6 * cfg.batch_size
    assert _ckpt_names(out) == ["step-00000004", "step-00000006"]  # keep_checkpoints = 2
    assert not list((out / CHECKPOINTS_DIR).glob(STAGING_PREFIX + "*"))
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("loss", "lr", "images_per_s", "grad_norm"))
    assert list((out / "tensorboard").iterdir())
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    # the shipped model holds the EMA weights and loads as a pipeline that samples
    pipe = CXRPipeline.from_pretrained(summary["model_dir"])
    ema = read_state_tensors(out / CHECKPOINTS_DIR / "step-00000006" / state.EMA_FILE)
    for name, value in pipe.denoiser.state_dict().items():
        assert torch.equal(value, ema[name]), name
    images = pipe(["no finding"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    assert images.images.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)


def test_final_model_can_name_its_frozen_text_encoder_by_reference(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=1, text_by_reference=True)
    summary = train(cfg)
    text_dir = Path(summary["model_dir"]) / "text_encoder"
    assert saved_by_reference(text_dir) and not list(text_dir.glob("*.safetensors"))
    pipe = CXRPipeline.from_pretrained(summary["model_dir"])  # reloads the encoder from its source folder
    assert pipe.text_encoder.config.name_or_path == cfg.model.text_encoder.name_or_path
    images = pipe(["no finding"], num_inference_steps=1, generator=torch.Generator().manual_seed(0), progress=False)
    assert images.images.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)


def read_state_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_ema_update_math() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    for shadow, s0, p in zip(ema.model.parameters(), start, model.parameters(), strict=True):
        torch.testing.assert_close(shadow, 0.9 * s0 + 0.1 * p)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)  # buffers copied
    follow = EMA(model, decay=None)  # no EMA: the copy follows the weights
    with torch.no_grad():
        model[0].weight.mul_(3)
    follow.update(model)
    assert torch.equal(follow.model[0].weight, model[0].weight)


def test_ema_warmup_lowers_the_decay_early() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.999, warmup=True)
    decays = []
    for _ in range(200):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays[0] == pytest.approx(0.1) and decays[10] == pytest.approx(11 / 20)
    assert all(a <= b for a, b in pairwise(decays)) and decays[-1] < 0.999
    assert EMA(model, decay=0.999).current_decay() == 0.999  # off: the plain decay from the first update


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_warmup_then_schedule(tmp_path: Path, schedule: str) -> None:
    cfg = tiny_config(tmp_path, lr=0.01, warmup_steps=4, steps=12, lr_schedule=schedule)
    opt = build_optimizer(cfg, nn.Linear(2, 2), None)
    sched = build_lr_schedule(cfg, opt)
    seen = []
    for _ in range(cfg.steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for k, lr in enumerate(seen):
        if k < 4:
            expected = 0.01 * k / 4
        elif schedule == "cosine":
            expected = 0.01 * 0.5 * (1 + math.cos(math.pi * (k - 4) / (12 - 4)))
        else:
            expected = 0.01
        assert lr == pytest.approx(expected), k


def test_text_encoder_gets_its_own_learning_rate(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, lr=1e-3, text_lr=1e-5)
    text = nn.Linear(2, 2)
    text.trainable = True
    opt = build_optimizer(cfg, nn.Linear(2, 2), text)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-5]


def test_grad_accumulation_matches_the_large_batch(tmp_path: Path, monkeypatch) -> None:
    """2 micro-batches of B accumulated == one batch of 2B (same samples, deterministic loss)."""

    def fixed_loss(run, batch):  # draws nothing: inputs depend only on the sample index
        idx = torch.as_tensor(batch["index"])
        g = torch.Generator().manual_seed(0)
        z = torch.randn(64, 4, 8, 8, generator=g)[idx]
        ctx, mask = torch.randn(64, 8, 16, generator=g)[idx], torch.ones(len(idx), 8, dtype=torch.bool)
        return (run.denoiser(z, idx * 7, ctx, mask) - z).pow(2).mean()

    monkeypatch.setattr(loop, "micro_batch_loss", fixed_loss)
    weights, norms = [], []
    for batch_size, accum in ((4, 1), (2, 2)):
        cfg = tiny_config(tmp_path, batch_size=batch_size, grad_accum=accum, steps=1, ema_decay=None)
        run, data = setup_run(cfg, tmp_path / f"b{batch_size}")
        run.batches = iter(torch.utils.data.DataLoader(data, batch_sampler=ShardedBatchStream(len(data), batch_size, 0)))
        out = loop.optimizer_step(run)
        assert run.step == 1 and run.consumed == 4 and math.isfinite(out["grad_norm"])
        weights.append(torch.cat([p.detach().flatten() for p in run.denoiser.parameters()]))
        norms.append(out["grad_norm"])
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)  # the mean gradient, not the sum of two
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


def test_failed_checkpoint_write_leaves_no_partial_folder(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_config(tmp_path, steps=6, checkpoint_every=2, keep_checkpoints=3)
    real_write = state.ckpt.write_state

    def flaky(obj, path):
        if path.name == state.OPTIMIZER_FILE and STAGING_PREFIX + "step-00000004" in str(path):
            real_write(obj, path)  # the file lands, then the disk "fills up"
            raise OSError(28, "No space left on device")
        real_write(obj, path)

    monkeypatch.setattr(state.ckpt, "write_state", flaky)
    with pytest.raises(OSError, match="No space"):
        train(cfg)
    root = Path(cfg.out_dir) / CHECKPOINTS_DIR
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002"]  # nothing half-written
    assert read_state(root / "step-00000002" / state.OPTIMIZER_FILE)["state"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=6, checkpoint_every=2)
    parts = build_model_parts(cfg)
    calls = {"n": 0}

    def poison(module, args, output):  # the 4th forward (step 4) returns NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 4 else output

    parts.denoiser.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match=r"step 4.*step-00000002"):
        train(cfg, parts=parts)
    assert _ckpt_names(Path(cfg.out_dir)) == ["step-00000002"]
    assert not (Path(cfg.out_dir) / "model").exists()


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=2, mixed_precision="bf16", checkpoint_every=10)
    parts = build_model_parts(cfg)
    before = [p.detach().clone() for p in parts.denoiser.parameters()]
    summary = train(cfg, parts=parts)
    assert math.isfinite(summary["final_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, parts.denoiser.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in parts.denoiser.parameters())  # master weights stay fp32


def test_manifest_dataset_and_sharded_stream(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=5)
    data = ManifestImageDataset([manifest], "train", ImageConfig(size=IMAGE_SIZE))
    item = data[2]
    assert item["image"].shape == (1, IMAGE_SIZE, IMAGE_SIZE) and item["prompt"] == PROMPTS[2]
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    # two ranks: disjoint halves of each global batch, whole epochs covered, epochs reshuffled
    r0, r1 = (iter(ShardedBatchStream(5, 2, seed=3, rank=r, world_size=2)) for r in (0, 1))
    seen = [i for _ in range(5) for i in next(r0) + next(r1)]  # 20 indices = 4 epochs of 5
    assert seen[:5] == epoch_permutation(5, 3, 0).tolist() and seen[5:10] == epoch_permutation(5, 3, 1).tolist()
    assert seen[:5] != seen[5:10]
    # restarting 8 samples in continues exactly where the stream was
    resumed = iter(ShardedBatchStream(5, 2, seed=3, rank=1, world_size=2, start=8))
    assert next(resumed) == seen[10:12] and next(resumed) == seen[14:16]


def test_cli_train_and_resume_latest(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, steps=2, checkpoint_every=1)
    out = tmp_path / "cli-run"
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert (out / "model" / "model_index.json").is_file()
    assert main(["train", str(config), "--out", str(out), "--set", "steps=3", "--resume", "latest"]) == 0
    assert '"start_step": 2' in capsys.readouterr().out and _ckpt_names(out)[-1] == "step-00000003"
    assert main(["train", str(config), "--out", str(tmp_path / "none"), "--resume", "latest"]) == 2


def test_trains_from_the_cache_and_refuses_a_stale_one(tmp_path: Path) -> None:
    from train_helpers import tiny_config_dict

    from cxrgen.cache import StaleCacheError, build_cache

    model = tiny_config_dict(tmp_path)["model"]
    build_model_parts(tiny_config(tmp_path)).autoencoder.save_pretrained(tmp_path / "ae")
    model["autoencoder"]["pretrained"] = str(tmp_path / "ae")  # architecture fields kept: parts checks them
    cfg = tiny_config(tmp_path, model=model, cache_dir=str(tmp_path / "cache"), steps=2)
    build_cache(cfg)
    shutil.rmtree(tmp_path / "images")  # only the cache can serve the images now
    summary = train(cfg)
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    # a cache made with another autoencoder is refused, naming the difference
    other = build_model_parts(tiny_config(tmp_path, seed=1)).autoencoder
    other.save_pretrained(tmp_path / "ae")
    with pytest.raises(StaleCacheError, match="autoencoder"):
        train(dataclasses.replace(cfg, out_dir=str(tmp_path / "stale")))
