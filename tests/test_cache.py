"""The latent / text-embedding cache: values, shards, fingerprint, resume, CachedDataset, `cxrgen cache`."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from tiny_models import WIDTH, make_bert

from cxrgen.autoencoder import LatentCodec
from cxrgen.cache import (
    INDEX_NAME,
    NULL_NAME,
    CachedDataset,
    StaleCacheError,
    build_cache,
    cache_matches,
    cache_mismatches,
    check_cache,
    read_index,
    shard_name,
)
from cxrgen.cli import main
from cxrgen.config import (
    AutoencoderConfig,
    ImageConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
)
from cxrgen.data.images import load_image, save_png
from cxrgen.data.manifest import new_manifest, write_manifest
from cxrgen.errors import ConfigError, DataError
from cxrgen.text import build_text_encoder

N_TRAIN, SIZE, MAX_LEN = 7, 32, 12
WORDS = ["left", "right", "pleural", "effusion", "no", "acute", "disease", "lower", "lobe", "opacity"]
TINY_AE = AutoencoderConfig(block_out_channels=(8, 16, 16), norm_num_groups=4, layers_per_block=1,
                            mid_block_add_attention=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Synthetic PNGs, a manifest (7 train rows + 1 validate row), a tiny BERT and a saved tiny codec."""
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_TRAIN + 1):
        save_png(rng.uniform(-1, 1, (40, 36)), root / "images" / f"{i}.png", TrainConfig().image)
        prompt = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 20))))  # some exceed MAX_LEN tokens
        rows.append({"image_path": f"images/{i}.png", "prompt": prompt, "split": "train" if i < N_TRAIN else "validate"})
    manifest = write_manifest(new_manifest(rows), root / "manifest.csv")
    torch.manual_seed(0)  # test-side seeding of the random tiny codec
    codec_dir = LatentCodec.build(TINY_AE).save_pretrained(root / "codec")
    return {"root": root, "manifest": manifest, "bert": make_bert(root / "bert"), "codec_dir": codec_dir}


def _cfg_dict(world: dict, **extra) -> dict:
    data = {
        "manifests": [str(world["manifest"])],
        "image": {"size": SIZE},
        "model": {
            "image_size": SIZE,
            "text_encoder": {"backend": "bert", "name_or_path": str(world["bert"]), "max_length": MAX_LEN},
            "autoencoder": {**dataclasses.asdict(TINY_AE), "pretrained": str(world["codec_dir"])},
            "denoiser": {"name": "uvit-tiny", "in_channels": 4, "sample_size": 8, "context_dim": WIDTH,
                         "context_len": MAX_LEN},
        },
        "cache": {"shard_size": 3, "batch_size": 2, "device": "cpu"},
        "progress": False,
    }
    data.update(extra)
    return data


@pytest.fixture()
def cfg(world: dict) -> TrainConfig:
    return from_dict(TrainConfig, _cfg_dict(world))


@pytest.fixture(scope="module")
def parts(world: dict) -> tuple[LatentCodec, torch.nn.Module]:
    cfg = from_dict(TrainConfig, _cfg_dict(world))
    return LatentCodec.from_pretrained(world["codec_dir"]).eval(), build_text_encoder(cfg.model.text_encoder)


@pytest.fixture(scope="module")
def built(world: dict, parts, tmp_path_factory) -> Path:
    """A float32 cache of the 7 train rows in shards of 3, batches of 2."""
    cfg = from_dict(TrainConfig, _cfg_dict(world))
    return build_cache(cfg, tmp_path_factory.mktemp("built"), *parts)


def _images(world: dict, rows: list[int]) -> torch.Tensor:
    paths = [world["root"] / "images" / f"{i}.png" for i in rows]
    return torch.stack([load_image(p, ImageConfig(size=SIZE)) for p in paths])  # (B, 1, H, W)


def _prompts(manifest: Path) -> list[str]:
    return pd.read_csv(manifest, keep_default_na=False)["prompt"].tolist()


def _shard(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle is not iterable)


def test_shards_hold_exact_encodings(world, parts, built: Path) -> None:
    codec, text = parts
    index = read_index(built)
    assert index["rows"] == N_TRAIN and index["complete"] and index["latent_shape"] == [4, 8, 8]
    assert [s["rows"] for s in index["shards"]] == [3, 3, 1]  # 7 rows in shards of 3: rows cross boundaries
    prompts = _prompts(world["manifest"])
    assert index["prompts"] == prompts[:N_TRAIN]  # the validate row is not cached
    expected = [(world["root"] / "images" / f"{i}.png").resolve() for i in range(N_TRAIN)]
    assert [Path(p).resolve() for p in index["image_paths"]] == expected  # relative to the manifest's folder
    stored = [_shard(built / shard_name(k)) for k in range(3)]
    cat = {key: torch.cat([s[key] for s in stored]) for key in stored[0]}
    for batch in ([0, 1], [2], [3, 4], [5], [6]):  # batches of 2 never cross a shard of 3
        with torch.no_grad():
            mean, std = codec.encode_distribution(_images(world, batch))
            context, mask = text.encode([prompts[i] for i in batch])
        assert torch.equal(cat["latent_mean"][batch], mean) and torch.equal(cat["latent_std"][batch], std)
        assert torch.equal(cat["context"][batch], context) and torch.equal(cat["mask"][batch], mask)
    assert cat["latent_mean"].dtype == torch.float32 and cat["mask"].dtype == torch.bool
    null = _shard(built / NULL_NAME)
    null_context, null_mask = text.encode_null(1)
    assert torch.equal(null["context"], null_context[0]) and torch.equal(null["mask"], null_mask[0])


def test_dataset_items(world, built: Path) -> None:
    ds = CachedDataset(built, max_open_shards=1)  # every shard change closes the other handle
    assert len(ds) == N_TRAIN and ds.has_text and ds.context_shape == (MAX_LEN, WIDTH)
    stored = torch.cat([_shard(built / shard_name(k))["latent_mean"] for k in range(3)])
    for i in (0, 4, 2, 6, 3, -1):  # jumps back and forth between shards
        item = ds[i]
        assert set(item) == {"latent_mean", "latent_std", "prompt", "index", "context", "mask"}
        assert item["latent_mean"].shape == (4, 8, 8) and item["latent_std"].dtype == torch.float32
        assert item["context"].shape == (MAX_LEN, WIDTH) and item["mask"].dtype == torch.bool
        assert torch.equal(item["latent_mean"], stored[i]) and item["index"] == i % N_TRAIN
        assert item["prompt"] == _prompts(world["manifest"])[i % N_TRAIN]
    with pytest.raises(IndexError):
        ds[N_TRAIN]
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers get: no open handles
    assert torch.equal(clone[5]["latent_std"], ds[5]["latent_std"])
    context, mask = ds.null_text()
    assert context.shape == (MAX_LEN, WIDTH) and mask.dtype == torch.bool


def test_float16_storage(world, parts, built: Path, tmp_path: Path) -> None:
    cfg = from_dict(TrainConfig, _cfg_dict(world, cache={"shard_size": 3, "batch_size": 2, "dtype": "float16"}))
    half = build_cache(cfg, tmp_path, *parts)
    assert _shard(half / shard_name(0))["latent_mean"].dtype == torch.float16
    full_ds, half_ds = CachedDataset(built), CachedDataset(half)
    item, ref = half_ds[4], full_ds[4]
    assert item["latent_mean"].dtype == torch.float32  # read back as float32
    assert torch.allclose(item["latent_mean"], ref["latent_mean"], rtol=1e-3, atol=1e-3)
    assert torch.allclose(item["context"], ref["context"], rtol=1e-2, atol=1e-2)
    full_bytes = sum(s["bytes"] for s in read_index(built)["shards"])
    half_bytes = sum(s["bytes"] for s in read_index(half)["shards"])
    assert half_bytes < 0.6 * full_bytes


def test_second_build_writes_nothing(world, parts, built: Path, monkeypatch) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    codec, text = parts

    def refuse(*_args, **_kwargs):
        raise AssertionError("a complete, matching cache must not be encoded again")

    monkeypatch.setattr(codec, "encode_distribution", refuse)
    cfg = from_dict(TrainConfig, _cfg_dict(world))
    assert build_cache(cfg, built, codec, text) == built
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before


def test_interrupted_build_resumes(world, parts, built: Path, tmp_path: Path, monkeypatch) -> None:
    codec, text = parts
    cfg = from_dict(TrainConfig, _cfg_dict(world))
    real = codec.encode_distribution
    calls: list[int] = []

    def crash_on_shard_two(images):
        calls.append(len(images))
        if len(calls) == 3:  # batches [0, 1], [2] make shard 0; the third batch starts shard 1
            raise KeyboardInterrupt
        return real(images)

    monkeypatch.setattr(codec, "encode_distribution", crash_on_shard_two)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, tmp_path, codec, text)
    index = read_index(tmp_path)
    assert not index["complete"] and [s["file"] for s in index["shards"]] == [shard_name(0)]
    with pytest.raises(DataError, match="incomplete"):
        CachedDataset(tmp_path)
    assert not cache_matches(cfg, tmp_path, codec, text)
    calls.clear()
    monkeypatch.setattr(codec, "encode_distribution", lambda images: (calls.append(len(images)), real(images))[1])
    build_cache(cfg, tmp_path, codec, text)
    assert calls == [2, 1, 1]  # shard 0 kept; shards 1 and 2 encoded
    for k in range(3):
        ours, ref = _shard(tmp_path / shard_name(k)), _shard(built / shard_name(k))
        assert all(torch.equal(ours[key], ref[key]) for key in ref)


def test_fingerprint_detects_changes(world, parts, built: Path, tmp_path: Path) -> None:
    codec, text = parts
    cfg = from_dict(TrainConfig, _cfg_dict(world))
    assert cache_matches(cfg, built, codec, text)
    assert cache_matches(cfg, built)  # parts loaded from cfg.model: the same saved codec and BERT
    other = LatentCodec.from_pretrained(world["codec_dir"])
    with torch.no_grad():
        other.vae.decoder.conv_out.bias.add_(1.0)  # the decoder does not touch the cached posterior
    assert cache_matches(cfg, built, other, text)
    with torch.no_grad():
        other.vae.encoder.conv_in.bias.add_(1e-3)
    assert cache_mismatches(cfg, built, other, text) == ["autoencoder: differs in encoder_sha256"]
    assert any(p.startswith("image") for p in cache_mismatches(apply_overrides(cfg, ["image.size=64"]), built, codec, text))
    other_text = build_text_encoder(cfg.model.text_encoder)
    with torch.no_grad():
        next(other_text.parameters()).add_(1e-3)
    assert cache_mismatches(cfg, built, codec, other_text)[0].startswith("text_encoder")
    trainable = apply_overrides(cfg, ["model.text_encoder.trainable=true"])
    assert cache_matches(trainable, built, codec)  # latents still serve; the embeddings go unused
    wider = apply_overrides(cfg, ["model.denoiser.kwargs.hidden_size=64"])  # the denoiser reads the cache,
    assert cache_matches(wider, built, codec, text)  # it does not make it: another one trains on the same latents
    with pytest.raises(StaleCacheError, match="cxrgen cache"):
        check_cache(apply_overrides(cfg, ["image.size=64"]), built, codec, text)


def test_fingerprint_detects_changed_manifest(world, parts, tmp_path: Path) -> None:
    codec, text = parts
    manifest = tmp_path / "manifest.csv"
    original = world["manifest"].read_text().replace("images/", f"{world['root']}/images/")
    manifest.write_text(original)
    cfg = from_dict(TrainConfig, _cfg_dict(world, manifests=[str(manifest)]))
    build_cache(cfg, tmp_path / "cache", codec, text)
    assert cache_matches(cfg, tmp_path / "cache", codec, text)
    manifest.write_text(original.replace("images/0.png", "images/7.png", 1))  # same path, new content
    assert cache_mismatches(cfg, tmp_path / "cache", codec, text) == [
        f"manifests: {manifest.resolve()} changed since the cache was built"]
    other = apply_overrides(cfg, [f"manifests=[{world['manifest']}]"])
    assert cache_mismatches(other, tmp_path / "cache", codec, text)[0].startswith("manifests: the cache was built from")
    cache_only = apply_overrides(cfg, ["manifests=[]"])  # training from a copied cache alone
    assert cache_matches(cache_only, tmp_path / "cache", codec, text)


def test_different_parts_rebuild(world, parts, built: Path, tmp_path: Path) -> None:
    codec, text = parts
    cfg = from_dict(TrainConfig, _cfg_dict(world))
    other = LatentCodec.from_pretrained(world["codec_dir"])
    with torch.no_grad():
        other.vae.encoder.conv_in.bias.add_(0.5)
    build_cache(cfg, tmp_path, codec, text)
    build_cache(cfg, tmp_path, other, text)
    assert cache_matches(cfg, tmp_path, other, text) and not cache_matches(cfg, tmp_path, codec, text)
    assert not torch.equal(CachedDataset(tmp_path)[0]["latent_mean"], CachedDataset(built)[0]["latent_mean"])


def test_trainable_text_encoder_caches_latents_only(world, parts, tmp_path: Path) -> None:
    codec, _ = parts
    cfg = apply_overrides(from_dict(TrainConfig, _cfg_dict(world)), ["model.text_encoder.trainable=true"])
    ds = CachedDataset(build_cache(cfg, tmp_path, codec))
    assert set(ds[0]) == {"latent_mean", "latent_std", "prompt", "index"}
    assert not ds.has_text and ds.null_text() is None and not (tmp_path / NULL_NAME).exists()


def test_no_folder_is_a_config_error(cfg: TrainConfig, parts) -> None:
    with pytest.raises(ConfigError, match="cache_dir"):
        build_cache(cfg, None, *parts)


def test_cli_end_to_end(world, built: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_cfg_dict(world)))
    out = tmp_path / "cache"
    assert main(["cache", str(config), "--out", str(out), "--set", "cache.shard_size=4"]) == 0
    assert f"{N_TRAIN} rows in 2 shard(s)" in capsys.readouterr().out
    index = json.loads((out / INDEX_NAME).read_text())
    assert [s["rows"] for s in index["shards"]] == [4, 3]
    cfg = from_dict(TrainConfig, _cfg_dict(world))
    assert cache_matches(cfg, out)  # same saved codec and BERT as the config names
    assert torch.allclose(CachedDataset(out)[5]["latent_mean"], CachedDataset(built)[5]["latent_mean"], atol=1e-6)
    assert main(["cache", str(config)]) == 2  # neither --out nor cache_dir
    assert "cache_dir" in capsys.readouterr().err


def test_unpadded_text_is_padded_to_the_token_limit(world, parts, tmp_path: Path) -> None:
    codec, _ = parts
    cfg = apply_overrides(from_dict(TrainConfig, _cfg_dict(world)), ["model.text_encoder.pad_to_max_length=false"])
    text = build_text_encoder(cfg.model.text_encoder)
    ds = CachedDataset(build_cache(cfg, tmp_path, codec, text))
    context, mask = text.encode([ds.prompts[2]])  # (1, L', D) with L' the prompt's own length
    item = ds[2]
    assert item["context"].shape == (MAX_LEN, WIDTH) and ds.null_text()[0].shape == (MAX_LEN, WIDTH)
    length = context.shape[1]
    assert torch.equal(item["mask"][:length], mask[0]) and not item["mask"][length:].any()
    assert torch.allclose(item["context"][:length], context[0], atol=1e-5)
    assert not item["context"][length:].any()  # padding is zeros


def test_fresh_codec_matches_the_trainers(world, tmp_path: Path) -> None:
    data = _cfg_dict(world)
    data["model"]["autoencoder"]["pretrained"] = None  # an untrained codec, seeded by cfg.seed as in training
    cfg = from_dict(TrainConfig, data)
    build_cache(cfg, tmp_path)
    assert cache_matches(cfg, tmp_path)
    assert not cache_matches(apply_overrides(cfg, ["seed=1"]), tmp_path)


def test_float16_overflow_is_refused(world, parts, tmp_path: Path, monkeypatch) -> None:
    codec, text = parts
    cfg = from_dict(TrainConfig, _cfg_dict(world, cache={"shard_size": 3, "batch_size": 2, "dtype": "float16"}))
    real = codec.encode_distribution
    monkeypatch.setattr(codec, "encode_distribution", lambda images: tuple(x * 1e6 for x in real(images)))
    with pytest.raises(DataError, match="float32"):
        build_cache(cfg, tmp_path, codec, text)
