"""The model parts built together from one ModelConfig, and `cxrgen info`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_models import WIDTH, make_bert

from cxrgen.cli import main
from cxrgen.config import ModelConfig, ScheduleConfig, apply_overrides, from_dict
from cxrgen.errors import ConfigError
from cxrgen.parts import build_parts, check_consistent, describe, describe_parts, latent_shape
from cxrgen.pipeline import CXRPipeline
from cxrgen.samplers import training_scheduler

REPO = Path(__file__).resolve().parents[1]


def _tiny(bert_dir: Path) -> dict:
    return {
        "image_size": 32,
        "text_encoder": {"backend": "bert", "name_or_path": str(bert_dir), "max_length": 16},
        "autoencoder": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1},
        "denoiser": {"name": "uvit-tiny", "in_channels": 4, "sample_size": 8, "context_dim": WIDTH,
                     "context_len": 16},
    }


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parts")
    path = root / "model.yaml"
    path.write_text(yaml.safe_dump(_tiny(make_bert(root / "bert"))))
    return path


def test_describe_tiny_config(tiny_yaml: Path) -> None:
    info = describe(tiny_yaml)
    assert info["latent_shape"] == [4, 8, 8] and info["context"] == [16, WIDTH]
    assert info["denoiser"]["params"] > 0 and info["text_encoder"]["params"] > 0
    assert info["autoencoder"]["params"] > 0 and info["notes"] == []
    assert info["denoiser"]["gflops_fwd"] == pytest.approx(2 * info["denoiser"]["gmacs_fwd"])


def test_describe_reads_the_model_section_of_a_training_yaml(tiny_yaml: Path, tmp_path: Path) -> None:
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({"model": yaml.safe_load(tiny_yaml.read_text()), "steps": 5}))
    assert describe(train_yaml)["denoiser"]["params"] == describe(tiny_yaml)["denoiser"]["params"]
    wider = describe(train_yaml, ["denoiser.kwargs.hidden_size=64"])  # overrides address the model section
    assert wider["denoiser"]["params"] > describe(tiny_yaml)["denoiser"]["params"]


def test_saved_folder_gives_same_info(tiny_yaml: Path, tmp_path: Path) -> None:
    cfg = from_dict(ModelConfig, yaml.safe_load(tiny_yaml.read_text()))
    parts = build_parts(cfg)
    scheduler = training_scheduler(ScheduleConfig(), cfg.denoiser.prediction_type)
    CXRPipeline(parts.text_encoder, parts.autoencoder, parts.denoiser, scheduler, 32).save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m"), "--json", str(tmp_path / "info.json")]) == 0
    from_folder, from_yaml = json.loads((tmp_path / "info.json").read_text()), describe(tiny_yaml)
    assert from_folder == describe_parts(CXRPipeline.from_pretrained(tmp_path / "m").parts())
    for part in ("denoiser", "text_encoder", "autoencoder"):
        assert from_folder[part]["params"] == from_yaml[part]["params"]
    assert from_folder["denoiser"]["gflops_fwd"] == pytest.approx(from_yaml["denoiser"]["gflops_fwd"])


def test_folder_missing_a_part(tmp_path: Path) -> None:
    (tmp_path / "denoiser").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ConfigError, match="autoencoder"):
        CXRPipeline.from_pretrained(tmp_path)


def test_inconsistent_shapes_are_named(tiny_yaml: Path) -> None:
    cfg = from_dict(ModelConfig, yaml.safe_load(tiny_yaml.read_text()))
    assert latent_shape(cfg) == (4, 8, 8)
    with pytest.raises(ConfigError, match="denoiser.sample_size=8"):
        check_consistent(apply_overrides(cfg, ["denoiser.sample_size=16"]))
    with pytest.raises(ConfigError, match="denoiser.in_channels=8"):
        check_consistent(apply_overrides(cfg, ["autoencoder.latent_channels=8"]))
    with pytest.raises(ConfigError, match="context_len"):
        check_consistent(apply_overrides(cfg, ["text_encoder.max_length=32"]))


def test_sentence_pooling_needs_context_for_its_sentences_only(tiny_yaml: Path) -> None:
    cfg = from_dict(ModelConfig, yaml.safe_load(tiny_yaml.read_text()))
    sentences = ["text_encoder.pooling=sentences", "text_encoder.max_length=32", "text_encoder.max_sentences=8"]
    check_consistent(apply_overrides(cfg, sentences))  # 8 sentence vectors fit 16 positions
    assert describe(tiny_yaml, sentences)["context"] == [8, WIDTH]
    with pytest.raises(ConfigError, match="24 context positions"):  # both: 8 sentences + 16 tokens
        check_consistent(apply_overrides(cfg, ["text_encoder.pooling=both", "text_encoder.max_sentences=8"]))


def test_unavailable_part_is_a_note_not_a_crash(tiny_yaml: Path, tmp_path: Path) -> None:
    data = _tiny(Path(yaml.safe_load(tiny_yaml.read_text())["text_encoder"]["name_or_path"]))
    data["text_encoder"]["name_or_path"] = str(tmp_path / "no-such-model")
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    info = describe(path)
    assert info["text_encoder"]["params"] is None
    assert any("text encoder not built" in n for n in info["notes"])


def test_shipped_uvit_s2_config(tmp_path: Path, capsys) -> None:
    out = tmp_path / "info.json"
    assert main(["info", str(REPO / "src/cxrgen/configs/uvit-s2-256.yaml"), "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["latent_shape"] == [4, 32, 32]
    assert info["denoiser"]["params"] == pytest.approx(45e6, rel=0.03)  # U-ViT-S/2: about 45M
    assert set(info) >= {"denoiser", "text_encoder", "autoencoder"}
    assert set(info["denoiser"]) >= {"params", "gflops_fwd", "gmacs_fwd"}
