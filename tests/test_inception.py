"""The FID Inception network (plain torch): size, structure, input conversion, loading weights by path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cxrgen.config import EvalConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.extractors import (
    ExtractorUnavailableError,
    InceptionV3Extractor,
    build_extractor,
)
from cxrgen.evaluate.inception import (
    BN_COUNTER,
    FID_FEATURE_DIM,
    FID_INPUT_SIZE,
    FID_NUM_CLASSES,
    MIN_INPUT_SIZE,
    PYTORCH_FID_FILE,
    FIDInceptionV3,
    InceptionE,
    _same_pool,
    fid_inception_input,
    init_fid_inception,
    load_fid_inception,
    read_state_dict,
)
from cxrgen.evaluate.networks import count_parameters
from cxrgen.evaluate.run import build_extractors

#: torchvision.models.inception_v3() (aux_logits=True, 1000 classes): "num_params" documented for
#: Inception_V3_Weights.IMAGENET1K_V1 at https://pytorch.org/vision/stable/models/generated/torchvision.models.inception_v3.html
TORCHVISION_INCEPTION_V3_PARAMS = 27_161_264
IMAGENET_CLASSES = 1000
AUX_IN, AUX_MID, AUX_OUT, AUX_KERNEL = 768, 128, 768, 5  # torchvision's InceptionAux: conv0 1x1, conv1 5x5, fc
SMALL = MIN_INPUT_SIZE  # test-only input size: same network, ~16x fewer FLOPs than 299


def images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def random_inception(seed: int = 0) -> FIDInceptionV3:
    """Random weights, BatchNorm statistics included, so every tensor of a file matters."""
    g = torch.Generator().manual_seed(seed)
    model = init_fid_inception(FIDInceptionV3(), g)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(1 + 0.1 * torch.rand(bn.num_features, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> FIDInceptionV3:
    return random_inception()


@pytest.fixture(scope="module")
def weight_files(model, tmp_path_factory) -> dict:
    """The random network saved as pytorch-fid's file is (a torch.save'd state dict, no BN counters) and as safetensors."""
    root = tmp_path_factory.mktemp("inception")
    state = model.state_dict()
    torch.save({k: v for k, v in state.items() if not k.endswith(BN_COUNTER)}, root / PYTORCH_FID_FILE)
    save_file({k: v.contiguous() for k, v in state.items()}, root / "inception.safetensors")
    return {"pth": root / PYTORCH_FID_FILE, "safetensors": root / "inception.safetensors", "root": root}


# ------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------
def test_parameter_count_is_torchvision_minus_aux_head_with_1008_classes(model):
    aux = (AUX_IN * AUX_MID + 2 * AUX_MID) + (AUX_MID * AUX_OUT * AUX_KERNEL**2 + 2 * AUX_OUT) \
        + (AUX_OUT * IMAGENET_CLASSES + IMAGENET_CLASSES)  # conv + BN (weight, bias) each; fc with bias
    wider_fc = (FID_NUM_CLASSES - IMAGENET_CLASSES) * (FID_FEATURE_DIM + 1)
    assert count_parameters(model) == TORCHVISION_INCEPTION_V3_PARAMS - aux + wider_fc == 23_850_960


def test_state_dict_keys_are_pytorch_fids(model):
    state = model.state_dict()
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6b.branch7x7dbl_5.conv.weight"].shape == (192, 128, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3a.bn.running_var"].shape == (384,)
    assert state["fc.weight"].shape == (FID_NUM_CLASSES, FID_FEATURE_DIM)
    assert not any(k.startswith("AuxLogits") for k in state)


def test_pools_follow_the_tensorflow_graph():
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(_same_pool(x), x)  # padding not counted: a constant stays constant at the border
    y = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_same_pool(y, "max"), F.max_pool2d(y, 3, stride=1, padding=1))
    block = init_fid_inception(FIDInceptionV3(), torch.Generator().manual_seed(0))
    assert (block.Mixed_7b.pool, block.Mixed_7c.pool) == ("avg", "max")  # FIDInceptionE_1 / FIDInceptionE_2
    with pytest.raises(ConfigError, match="'avg' or 'max'"):
        InceptionE(8, pool="min")


def test_last_block_pool_branch_uses_max():
    torch.manual_seed(0)  # test-side seeding of a small random block
    block = InceptionE(4, pool="max").eval()
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        out = block(x)
        pooled_branch = block.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1))
    assert out.shape == (1, 2048, 3, 3)
    assert torch.equal(out[:, -pooled_branch.shape[1]:], pooled_branch)


def test_features_at_299_and_at_the_small_size(model):
    extractor = InceptionV3Extractor(model)
    assert extractor.image_size == FID_INPUT_SIZE and extractor.feature_dim == FID_FEATURE_DIM
    real = extractor.features(images(1))  # the real FID path: 32 px -> 299 px, once
    assert real.shape == (1, FID_FEATURE_DIM) and torch.isfinite(real).all() and (real >= 0).all()
    small = InceptionV3Extractor(model, image_size=SMALL).features(images(2))
    assert small.shape == (2, FID_FEATURE_DIM) and not torch.allclose(small[0], small[1])


def test_features_are_deterministic_and_per_image(model):
    extractor = InceptionV3Extractor(model, image_size=SMALL)
    x = images(2, seed=3)
    both = extractor.features(x)
    assert torch.equal(both, extractor.features(x))
    assert torch.allclose(both[1:], extractor.features(x[1:]), atol=1e-5)  # no batch statistics in eval


# ------------------------------------------------------------------------------------------
# Input conversion
# ------------------------------------------------------------------------------------------
def test_gray_is_replicated_to_rgb_resized_and_kept_in_range(model):
    x = images(2, size=2 * FID_INPUT_SIZE // 3)  # larger than SMALL: a downscale, where antialiasing would show
    rgb = fid_inception_input(x, SMALL)
    assert rgb.shape == (2, 3, SMALL, SMALL)
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    assert torch.equal(rgb[:, :1], F.interpolate(x, size=(SMALL, SMALL), mode="bilinear", align_corners=False))
    black = fid_inception_input(-torch.ones(1, 1, 32, 32), SMALL)
    assert torch.equal(black, -torch.ones_like(black))  # [-1, 1] is the network's range: no rescaling
    same = images(1, size=SMALL)
    assert torch.equal(fid_inception_input(same, SMALL)[:, :1], same)  # already the right size: untouched
    extractor = InceptionV3Extractor(model, image_size=SMALL)
    assert torch.allclose(extractor.features(x), extractor.features(x.expand(-1, 3, -1, -1)), atol=1e-6)


def test_input_errors():
    with pytest.raises(DataError, match=r"\(B, 1, H, W\)"):
        fid_inception_input(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ConfigError, match="minimum"):
        fid_inception_input(images(1), MIN_INPUT_SIZE - 1)


# ------------------------------------------------------------------------------------------
# Weights by path
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_weights_by_path_give_identical_features(model, weight_files, kind):
    extractor = build_extractor("inception-v3", weight_files[kind])
    assert isinstance(extractor, InceptionV3Extractor) and not extractor.model.training
    loaded = extractor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    extractor.image_size = SMALL
    x = images(2, seed=7)
    assert torch.equal(extractor.features(x), InceptionV3Extractor(model, image_size=SMALL).features(x))


def test_cli_weights_reach_the_extractor(weight_files):
    cfg = EvalConfig(extractors=("inception-v3",), extractor_weights=(f"inception-v3={weight_files['pth']}",))
    built = build_extractors(cfg, evaluator=None, device=torch.device("cpu"))
    assert isinstance(built["inception-v3"], InceptionV3Extractor)


def test_missing_weights_say_where_to_get_them(tmp_path):
    for weights in (None, tmp_path / "missing.pth"):
        with pytest.raises(ExtractorUnavailableError, match=PYTORCH_FID_FILE) as info:
            build_extractor("inception-v3", weights)
        assert "--extractor-weights inception-v3=PATH" in str(info.value)
    with pytest.raises(ConfigError, match="missing.pth does not exist"):
        load_fid_inception(tmp_path / "missing.pth")


def test_wrong_keys_are_listed(model, tmp_path):
    state = dict(model.state_dict())
    state["Mixed_5b.branch1x1.conv.kernel"] = state.pop("Mixed_5b.branch1x1.conv.weight")
    del state["fc.bias"]
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(ConfigError, match=r"2 key\(s\) missing") as info:
        load_fid_inception(tmp_path / "renamed.pth")
    message = str(info.value)
    assert "Mixed_5b.branch1x1.conv.weight" in message and "fc.bias" in message
    assert "1 unexpected" in message and "Mixed_5b.branch1x1.conv.kernel" in message


def test_wrong_shapes_are_a_config_error(model, tmp_path):
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(IMAGENET_CLASSES, FID_FEATURE_DIM)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "imagenet_fc.safetensors")
    with pytest.raises(ConfigError, match="does not fit"):
        load_fid_inception(tmp_path / "imagenet_fc.safetensors")


def test_pickles_that_are_not_plain_state_dicts_are_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole pickled module
    with pytest.raises(ConfigError, match="weights_only=True.*torch.nn.modules.linear.Linear") as info:
        read_state_dict(tmp_path / "module.pth")
    assert "weights_only` set to `False`" not in str(info.value)  # torch's advice to unpickle is not repeated
    torch.save({"epoch": 3, "weights": torch.zeros(2)}, tmp_path / "checkpoint.pth")
    with pytest.raises(ConfigError, match="not a state dict of tensors"):
        read_state_dict(tmp_path / "checkpoint.pth")
    for name, text in (("opcodes.pth", "not a weight file"), ("bad_key.pth", "hello")):  # torch raises either
        (tmp_path / name).write_text(text)  # UnpicklingError or KeyError, depending on the first bytes
        with pytest.raises(ConfigError, match=f"{name} is not a"):
            read_state_dict(tmp_path / name)
