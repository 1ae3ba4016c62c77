"""The cxrgen-evaluator network (DenseNet-BC), its save/load, and the pluggable feature extractors."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

from cxrgen.config import EvaluatorConfig, EvaluatorTrainConfig, ImageConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.evaluator import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CXREvaluator,
    _warn_once,
    as_evaluator_input,
)
from cxrgen.evaluate.extractors import (
    EXTRACTORS,
    CXREvaluatorExtractor,
    ExtractorUnavailableError,
    build_extractor,
    clip_source,
    extract_features,
)
from cxrgen.evaluate.networks import (
    COMPRESSION,
    DENSENET_SIZES,
    STEM_KERNEL,
    DenseNet,
    build_densenet,
    count_parameters,
    densenet_size,
)

SIZE = 32
CLASSES = ("No Finding", "Pneumonia", "Pleural Effusion")
#: torchvision.models.densenet121() (3-channel stem, 1000 ImageNet classes): its documented count.
TORCHVISION_DENSENET121_PARAMS = 7_978_856
IMAGENET_CLASSES, RGB = 1000, 3


def tiny_cfg(**kw) -> EvaluatorConfig:
    base = {"arch": "densenet-tiny", "class_names": CLASSES, "image": ImageConfig(size=SIZE)}
    return EvaluatorConfig(**(base | kw))


def images(n: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def evaluator() -> CXREvaluator:
    return CXREvaluator(tiny_cfg(), generator=torch.Generator().manual_seed(0)).eval()


# ------------------------------------------------------------------------------------------
# DenseNet-BC
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [IMAGENET_CLASSES, 14])
def test_densenet121_parameters_match_torchvision_up_to_stem_and_classifier(num_classes):
    model = build_densenet("densenet121", in_channels=1, num_classes=num_classes)
    size = DENSENET_SIZES["densenet121"]
    stem_difference = (RGB - 1) * STEM_KERNEL**2 * size.num_init_features  # 7x7 conv, no bias
    classifier_difference = (IMAGENET_CLASSES - num_classes) * (model.num_features + 1)
    assert model.num_features == 1024
    assert count_parameters(model) == TORCHVISION_DENSENET121_PARAMS - stem_difference - classifier_difference


def test_densenet121_with_three_channels_is_torchvision_size():
    assert count_parameters(build_densenet("densenet121", in_channels=RGB)) == TORCHVISION_DENSENET121_PARAMS


def test_densenet_shapes_and_feature_width():
    size = densenet_size("densenet-tiny", growth_rate=4, block_config=(2, 3))
    model = DenseNet(size, in_channels=1, num_classes=5)
    after_first = int((size.num_init_features + 2 * 4) * COMPRESSION)
    assert model.num_features == after_first + 3 * 4
    x = images(3)
    assert model.features(x).shape == (3, model.num_features)
    assert model(x).shape == (3, 5)


def test_densenet_init_follows_the_generator():
    a = build_densenet("densenet-tiny", generator=torch.Generator().manual_seed(1))
    b = build_densenet("densenet-tiny", generator=torch.Generator().manual_seed(1))
    c = build_densenet("densenet-tiny", generator=torch.Generator().manual_seed(2))
    wa, wb, wc = (m.stem[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unknown_densenet_size_lists_the_choices():
    with pytest.raises(ConfigError, match="densenet121"):
        densenet_size("densenet-huge")
    with pytest.raises(ConfigError, match="depth"):
        densenet_size("densenet-tiny", depth=3)


# ------------------------------------------------------------------------------------------
# CXREvaluator
# ------------------------------------------------------------------------------------------
def test_features_and_probabilities_shapes(evaluator):
    x = images(4)
    feats, probs = evaluator.features(x), evaluator.probabilities(x)
    assert feats.shape == (4, evaluator.feature_dim) and evaluator.feature_dim == evaluator.net.num_features
    assert probs.shape == (4, len(CLASSES)) and evaluator.class_names == CLASSES
    assert ((probs > 0) & (probs < 1)).all()
    assert torch.allclose(probs, torch.sigmoid(evaluator.net.classifier(feats)), atol=1e-6)


def test_config_is_resolved_from_the_preset(evaluator):
    preset = DENSENET_SIZES["densenet-tiny"]
    assert evaluator.cfg.growth_rate == preset.growth_rate and evaluator.cfg.block_config == preset.block_config
    custom = CXREvaluator(tiny_cfg(growth_rate=6))
    assert custom.cfg.growth_rate == 6 and custom.feature_dim != evaluator.feature_dim


def test_save_and_load_give_identical_outputs(evaluator, tmp_path):
    evaluator.save_pretrained(tmp_path / "ev")
    assert (tmp_path / "ev" / WEIGHTS_NAME).is_file()
    saved = yaml.safe_load((tmp_path / "ev" / CONFIG_NAME).read_text())
    assert saved["arch"] == "densenet-tiny" and saved["class_names"] == list(CLASSES)
    loaded = CXREvaluator.from_pretrained(tmp_path / "ev")
    assert not loaded.training
    x = images(3, seed=5)
    assert torch.equal(loaded.features(x), evaluator.features(x))
    assert torch.equal(loaded.probabilities(x), evaluator.probabilities(x))


def test_load_errors_say_what_to_do(evaluator, tmp_path):
    with pytest.raises(ConfigError, match="train-evaluator"):
        CXREvaluator.from_pretrained(tmp_path / "nothing")
    evaluator.save_pretrained(tmp_path / "ev")
    other = CXREvaluator(tiny_cfg(growth_rate=6))
    save_file({k: v.contiguous() for k, v in other.net.state_dict().items()}, tmp_path / "ev" / WEIGHTS_NAME)
    with pytest.raises(ConfigError, match="do not fit"):
        CXREvaluator.from_pretrained(tmp_path / "ev")


def test_rgb_and_other_sizes_are_converted_and_said(evaluator, caplog):
    _warn_once.cache_clear()  # each conversion is said once per process
    x = images(2)
    with caplog.at_level(logging.WARNING):
        rgb = evaluator.features(x.expand(-1, 3, -1, -1))
        big = as_evaluator_input(images(2, size=2 * SIZE), SIZE)
    assert torch.allclose(rgb, evaluator.features(x), atol=1e-6)
    assert big.shape == (2, 1, SIZE, SIZE)
    assert "averaging" in caplog.text and "resizing" in caplog.text
    with pytest.raises(DataError, match=r"\(B, 1, H, W\)"):
        evaluator.features(torch.zeros(2, 2, SIZE, SIZE))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_names": ()}, "at least one class"),
        ({"class_names": ("Pneumonia", "Pneumonia")}, "repeats"),
        ({"growth_rate": 0}, "growth_rate"),
        ({"block_config": (2, 0)}, "block_config"),
        ({"drop_rate": 1.0}, "drop_rate"),
    ],
)
def test_evaluator_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_cfg(**kwargs)


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="densenet-small"):
        CXREvaluator(tiny_cfg(arch="resnet50"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"uncertain": "maybe"}, "ignore"),
        ({"epochs": 0}, "positive"),
        ({"lr": 0.0}, "lr"),
        ({"max_scale": 1.5}, "max_scale"),
        ({"max_rotation_deg": 90.0}, "small angle"),
        ({"max_train_images": 0}, "max_train_images"),
    ],
)
def test_evaluator_train_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EvaluatorTrainConfig(**kwargs)


# ------------------------------------------------------------------------------------------
# Feature extractors
# ------------------------------------------------------------------------------------------
def test_registry_names_and_unknown_name():
    assert {"cxrgen-evaluator", "xrv-densenet", "inception-v3", "clip-image"} <= set(EXTRACTORS)
    with pytest.raises(ConfigError, match="cxrgen-evaluator"):
        build_extractor("vgg16")


def test_cxrgen_evaluator_extractor_from_a_folder(evaluator, tmp_path):
    evaluator.save_pretrained(tmp_path / "ev")
    extractor = build_extractor("cxrgen-evaluator", tmp_path / "ev")
    assert isinstance(extractor, CXREvaluatorExtractor) and extractor.feature_dim == evaluator.feature_dim
    x = images(5, seed=3)
    batches = [x[:2], x[2:]]
    assert torch.equal(extract_features(extractor, batches, progress=False), evaluator.features(x))
    with pytest.raises(ConfigError, match="train-evaluator"):
        build_extractor("cxrgen-evaluator", None)
    with pytest.raises(ConfigError, match="no images"):
        extract_features(extractor, [], progress=False)


def test_inception_v3_without_weights_says_where_to_get_them():
    with pytest.raises(ExtractorUnavailableError, match="torchvision") as info:
        build_extractor("inception-v3", "pt_inception-2015-12-05-6726825d.pth")
    assert "pytorch-fid" in str(info.value) and "cxrgen-evaluator" in str(info.value)


@pytest.mark.parametrize("name, module, extra", [("xrv-densenet", "torchxrayvision", "xrv"),
                                                 ("clip-image", "open_clip", "biomedclip")])
def test_missing_optional_package_names_the_extra(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ExtractorUnavailableError, match=rf"pip install 'cxrgen\[{extra}\]'"):
        build_extractor(name, "anything")


def test_clip_source_forms(tmp_path):
    assert clip_source("hf-hub:org/model") == "hf-hub:org/model"
    (tmp_path / "open_clip_config.json").write_text("{}")
    assert clip_source(tmp_path) == f"local-dir:{tmp_path}"
    with pytest.raises(ConfigError, match="open_clip_config.json"):
        clip_source(tmp_path / "missing")


def test_xrv_densenet_from_a_local_safetensors_file(tmp_path):
    xrv = pytest.importorskip(
        "torchxrayvision",
        reason="torchxrayvision is the optional [xrv] extra (pip install 'cxrgen[xrv]'); it needs torchvision, "
        "which this environment does not install",
    )
    torch.manual_seed(0)  # xrv's constructor draws its random init from the global generator
    reference = xrv.models.DenseNet(weights=None, num_classes=3).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "xrv.safetensors")
    extractor = build_extractor("xrv-densenet", tmp_path / "xrv.safetensors")
    x = images(2, size=224)
    with torch.no_grad():
        expected = reference.features2(x * 1024)  # xrv pixels are [-1024, 1024]
    assert extractor.feature_dim == 1024
    assert torch.allclose(extractor.features(x), expected, atol=1e-4)
    with pytest.raises(ConfigError, match="safetensors"):
        build_extractor("xrv-densenet", tmp_path / "weights.pt")


def test_clip_image_from_a_local_open_clip_folder(tmp_path):
    open_clip = pytest.importorskip(
        "open_clip",
        reason="open_clip is the optional [biomedclip] extra (pip install 'cxrgen[biomedclip]'); it needs "
        "torchvision, which this environment does not install",
    )
    import json

    model_cfg = {
        "embed_dim": 8,
        "vision_cfg": {"image_size": SIZE, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    reference = open_clip.create_model("local-dir:" + str(tmp_path)).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              tmp_path / "open_clip_model.safetensors")
    extractor = build_extractor("clip-image", tmp_path)
    x = images(2)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.encode_image(((x + 1) / 2).expand(-1, 3, -1, -1).sub(mean).div(std))
    assert extractor.features(x).shape == (2, 8)
    assert torch.allclose(extractor.features(x), expected, atol=1e-5)
