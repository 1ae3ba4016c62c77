"""U-ViT denoiser: shapes, text padding mask, long skips, save/load, bf16, config errors, sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import cxrgen.denoisers.uvit
from cxrgen.compute import count_params
from cxrgen.config import DenoiserConfig
from cxrgen.denoisers import DENOISERS, UViT, build_denoiser, denoiser_kwargs, load_denoiser
from cxrgen.denoisers.uvit import sincos_2d, timestep_embedding, trim_padding, unpatchify
from cxrgen.errors import ConfigError

B, C, SIZE, L, D_TEXT = 3, 4, 32, 8, 16
TINY = DenoiserConfig(name="uvit-tiny", sample_size=SIZE, context_dim=D_TEXT, context_len=L)
TINY_DEPTH = DENOISERS["uvit-tiny"].kwargs["depth"]
TOL = 1e-6  # float32 round-off between equal computations in a different token order


def _model(cfg: DenoiserConfig = TINY, seed: int = 0) -> UViT:
    return build_denoiser(cfg, generator=torch.Generator().manual_seed(seed)).eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, SIZE, SIZE, generator=g)
    t = torch.tensor([0, 250, 999])
    context = torch.randn(B, L, D_TEXT, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 5:] = False  # sample 0 has 5 real tokens, sample 2 has 3, sample 1 none padded
    mask[2, 3:] = False
    return z, t, context, mask


@pytest.fixture(scope="module")
def model() -> UViT:
    return _model()


def test_output_shape_odd_batch_with_padding(model: UViT) -> None:
    z, t, context, mask = _inputs()
    with torch.no_grad():
        out = model(z, t, context, mask)
    assert out.shape == (B, C, SIZE, SIZE)
    assert torch.isfinite(out).all()
    assert model.prediction_type == "epsilon"


def test_int_and_float_timesteps_agree_and_matter(model: UViT) -> None:
    z, t, context, mask = _inputs()
    with torch.no_grad():
        out_int = model(z, t, context, mask)
        out_float = model(z, t.float(), context, mask)
        out_other = model(z, t + 1, context, mask)
        out_scalar = model(z, 250, context, mask)
    torch.testing.assert_close(out_int, out_float)
    torch.testing.assert_close(out_scalar[1], out_int[1])  # a scalar t is broadcast
    assert not torch.allclose(out_int, out_other)


def test_padded_token_content_does_not_change_output(model: UViT) -> None:
    z, t, context, mask = _inputs()
    changed = context.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), D_TEXT) * 100.0
    changed[0, 7] = float("nan")  # even NaN at a padded position must not leak
    with torch.no_grad():
        torch.testing.assert_close(model(z, t, changed, mask), model(z, t, context, mask), rtol=0, atol=0)


def test_mask_makes_padding_equal_to_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padded + masked == the real tokens alone; with the attention mask disabled it is not."""
    model = _model()
    z, t, context, _ = _inputs()
    n_real = 5
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, :n_real] = True
    mask[1] = True  # one unpadded row: no position is padding in every row, so nothing is trimmed
    short = [0, 2]
    with torch.no_grad():
        truncated = model(z[short], t[short], context[short, :n_real], None)
        torch.testing.assert_close(model(z, t, context, mask)[short], truncated, rtol=0, atol=TOL)
        monkeypatch.setattr(UViT, "_attention_mask", staticmethod(lambda mask, n_tokens: None))
        unmasked = model(z, t, context, mask)[short]
    assert (unmasked - truncated).abs().max() > 10 * TOL  # about 300x TOL at this init


def test_padding_in_every_row_is_trimmed_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    z, t, context, mask = _inputs()
    mask[1, 6:] = False  # position 6.. is now padding in every row
    trimmed, trimmed_mask = trim_padding(context, mask)
    assert trimmed.shape == (B, 6, D_TEXT) and trimmed_mask.tolist() == mask[:, :6].tolist()
    assert trim_padding(context, torch.zeros_like(mask))[0].shape == (B, 0, D_TEXT)  # all padding: no text
    seen = []
    hook = model.in_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        out = model(z, t, context, mask)
    hook.remove()
    assert seen == [1 + 6 + model.grid**2]  # time + 6 text + patches, not + L text
    monkeypatch.setattr(cxrgen.denoisers.uvit, "trim_padding", lambda context, mask: (context, mask))
    with torch.no_grad():
        torch.testing.assert_close(out, model(z, t, context, mask), rtol=0, atol=TOL)  # untrimmed: same output


def test_attention_mask_keeps_time_and_patches() -> None:
    mask = torch.tensor([[True, False], [True, True]])
    keep = UViT._attention_mask(mask, n_tokens=5)  # [time, text, text, patch, patch]
    assert keep.shape == (2, 1, 1, 5) and keep.dtype == torch.bool
    assert keep[0, 0, 0].tolist() == [True, True, False, True, True]
    assert keep[1].all()


def test_long_skips_pair_in_blocks_in_reverse(model: UViT) -> None:
    z, t, context, mask = _inputs()
    in_outputs, skips_seen = [], []
    hooks = [blk.register_forward_hook(lambda m, a, out: in_outputs.append(out)) for blk in model.in_blocks]
    hooks += [
        blk.register_forward_pre_hook(lambda m, a, kw: skips_seen.append(kw["skip"]), with_kwargs=True)
        for blk in model.out_blocks
    ]
    try:
        with torch.no_grad():
            model(z, t, context, mask)
    finally:
        for h in hooks:
            h.remove()
    assert len(skips_seen) == len(in_outputs) == TINY_DEPTH // 2
    for out_index, skip in enumerate(skips_seen):
        assert skip is in_outputs[-1 - out_index]


def test_zeroing_skip_linears_changes_output() -> None:
    model = _model()
    z, t, context, mask = _inputs()
    with torch.no_grad():
        before = model(z, t, context, mask)
        for blk in model.out_blocks:
            blk.skip_linear.weight[:, blk.skip_linear.in_features // 2 :] = 0.0  # drop the skip half
        after = model(z, t, context, mask)
    assert (before - after).abs().max() > 1e-4


def test_save_load_gives_identical_output(model: UViT, tmp_path) -> None:
    z, t, context, mask = _inputs()
    model.save_pretrained(tmp_path / "uvit")
    assert {p.name for p in (tmp_path / "uvit").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    loaded = load_denoiser(tmp_path / "uvit").eval()
    public = lambda m: {k: v for k, v in m.config.items() if not k.startswith("_")}  # noqa: E731
    assert isinstance(loaded, UViT) and public(loaded) == public(model)
    direct = UViT.from_pretrained(tmp_path / "uvit").eval()  # diffusers' own loader reads the same folder
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, t, context, mask), model(z, t, context, mask), rtol=0, atol=0)
        torch.testing.assert_close(direct(z, t, context, mask), model(z, t, context, mask), rtol=0, atol=0)


def test_registry_sizes_are_constructor_kwargs() -> None:
    kwargs = denoiser_kwargs(DenoiserConfig(name="uvit-xs", context_dim=384))
    assert kwargs["hidden_size"] == 256 and kwargs["depth"] == 9 and kwargs["patch_size"] == 4
    model = UViT(**kwargs)
    assert model.config.hidden_size == 256 and model.spec.context_dim == 384


def test_pretrained_starts_from_saved_weights(model: UViT, tmp_path) -> None:
    z, t, context, mask = _inputs()
    model.save_pretrained(tmp_path / "pipe" / "denoiser")  # a CXRPipeline folder holds it as denoiser/
    for source in (tmp_path / "pipe" / "denoiser", tmp_path / "pipe"):
        started = _model(dataclasses.replace(TINY, pretrained=str(source)), seed=9)  # another init seed
        with torch.no_grad():
            torch.testing.assert_close(started(z, t, context, mask), model(z, t, context, mask), rtol=0, atol=0)
    started.save_pretrained(tmp_path / "again")
    assert "pretrained" not in load_denoiser(tmp_path / "again").config  # the saved model does not point back
    with pytest.raises(ConfigError, match="hidden_size"):
        build_denoiser(dataclasses.replace(TINY, kwargs={"hidden_size": 64, "num_heads": 2},
                                           pretrained=str(tmp_path / "pipe")))
    with pytest.raises(ConfigError, match="local folder"):
        build_denoiser(dataclasses.replace(TINY, pretrained=str(tmp_path / "missing")))


def test_generator_fixes_the_init() -> None:
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    assert torch.equal(a.pos_embed, b.pos_embed) and torch.equal(a.patch_embed.weight, b.patch_embed.weight)
    assert not torch.equal(a.pos_embed, c.pos_embed)


def test_bf16_autocast_on_cpu(model: UViT) -> None:
    z, t, context, mask = _inputs()
    with torch.no_grad():
        ref = model(z, t, context, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(z, t, context, mask)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_unpatchify_inverts_patch_order() -> None:
    p, grid = 2, 4
    x = torch.randn(2, C, grid * p, grid * p)
    patches = x.reshape(2, C, grid, p, grid, p).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    patches = patches.reshape(2, grid * grid, p * p * C)  # (B, N, p*p*C)
    assert torch.equal(unpatchify(patches, C, p, grid), x)


def test_timestep_embedding_at_zero_is_cos_one_sin_zero() -> None:
    emb = timestep_embedding(torch.tensor([0, 10]), 7)
    assert emb.shape == (2, 7)
    assert torch.equal(emb[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    assert not torch.equal(emb[1], emb[0])


def test_sincos_positions_are_fixed_and_tell_patches_apart(tmp_path) -> None:
    pos = sincos_2d(4, 16)  # (16 patches, 16 channels): channels 0-7 encode the row, 8-15 the column
    assert pos.shape == (16, 16) and len({tuple(row.tolist()) for row in pos}) == 16
    assert torch.equal(pos[1, :8], pos[0, :8]) and not torch.equal(pos[1, 8:], pos[0, 8:])  # same row, next column
    assert torch.equal(pos[4, 8:], pos[0, 8:]) and not torch.equal(pos[4, :8], pos[0, :8])  # next row, same column
    cfg = dataclasses.replace(TINY, kwargs={"pos_embed_type": "sincos"})
    model = _model(cfg)
    grid = SIZE // model.config.patch_size
    assert model.pos_embed.shape == (1, 1 + L, model.config.hidden_size)  # learned: time and text only
    assert torch.equal(model.patch_pos[0], sincos_2d(grid, model.config.hidden_size))
    assert "patch_pos" not in model.state_dict() and not any(p is model.patch_pos for p in model.parameters())
    z, t, context, mask = _inputs()
    model.save_pretrained(tmp_path / "sincos")
    loaded = load_denoiser(tmp_path / "sincos").eval()
    assert loaded.config.pos_embed_type == "sincos"
    with torch.no_grad():
        out = model(z, t, context, mask)
        torch.testing.assert_close(loaded(z, t, context, mask), out, rtol=0, atol=0)
        model.patch_pos.zero_()  # the fixed positions are used
        assert not torch.allclose(model(z, t, context, mask), out)


def test_same_widths_need_no_projection() -> None:
    cfg = dataclasses.replace(TINY, context_dim=32, kwargs={"project_context": False})
    model = _model(cfg)
    assert isinstance(model.context_embed, torch.nn.Identity)
    z, t, _, mask = _inputs()
    assert model(z, t, torch.randn(B, L, 32), mask).shape == (B, C, SIZE, SIZE)


@pytest.mark.parametrize(
    ("changes", "kwargs", "message"),
    [
        ({"name": "uvit-huge"}, {}, "valid names"),
        ({}, {"patch_size": 3}, "patch_size"),
        ({}, {"num_heads": 5}, "num_heads"),
        ({}, {"depth": 4}, "odd"),
        ({}, {"time_embed_type": "linear"}, "time_embed"),
        ({}, {"project_context": False}, "project_context"),
        ({}, {"block_out_channels": (32, 64)}, "block_out_channels is not a parameter of UViT; valid: .*hidden_size"),
        ({}, {"hidden_sise": 64}, "did you mean 'hidden_size'"),
        ({}, {"context_len": 4}, "set denoiser.in_channels, sample_size, context_dim, context_len"),
        ({"prediction_type": "x0"}, {}, "prediction_type"),
        ({}, {"pos_embed_type": "rope"}, "pos_embed"),
        ({}, {"pos_embed_type": "sincos", "hidden_size": 34}, "divisible by 4"),
        ({"name": "unet-tiny"}, {"pos_embed_type": "sincos"}, "pos_embed_type is not a parameter of UNetDenoiser"),
    ],
)
def test_bad_configs_raise_at_construction(changes: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_denoiser(dataclasses.replace(TINY, **changes, kwargs=kwargs))


def test_bad_inputs_raise_config_error(model: UViT) -> None:
    z, t, context, mask = _inputs()
    with pytest.raises(ConfigError, match="context_dim"):
        model(z, t, torch.randn(B, L, D_TEXT + 1), mask)
    with pytest.raises(ConfigError, match="context_len"):
        model(z, t, torch.randn(B, L + 1, D_TEXT), None)
    with pytest.raises(ConfigError, match="sample_size"):
        model(torch.randn(B, C, SIZE // 2, SIZE // 2), t, context, mask)
    with pytest.raises(ConfigError, match="timesteps"):
        model(z, t[:2], context, mask)


# Bao et al. 2023, Table 1: U-ViT-S 44M, S-Deep 58M, M 131M, L 287M (ImageNet, one class token).
# For text we count what the same configs give with a 77x768 CLIP context projected to the width
# (MS-COCO U-ViT-S: 45M): per block 12 D^2 + 10 D, per long skip 2 D^2 + D, plus patch embed,
# text projection, positions over 1 + 77 + 256 tokens, head and 3x3 conv. U-ViT-S/2 -> 44.69M.
PAPER_PARAMS_M = {"uvit-s": 44, "uvit-s-deep": 58, "uvit-m": 131, "uvit-l": 287}


def _uvit_t2i_params(depth: int, d: int, c: int = 4, p: int = 2, grid: int = 16, text_dim: int = 768) -> int:
    block = 12 * d * d + 10 * d  # qkv (no bias) 3D^2, proj D^2 + D, MLP 8D^2 + 5D, two norms 4D
    skips = (depth // 2) * (2 * d * d + d)
    embeds = (c * p * p * d + d) + (text_dim * d + d) + (1 + 77 + grid * grid) * d
    head = 2 * d + (d * p * p * c + p * p * c) + (c * c * 9 + c)
    return depth * block + skips + embeds + head


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_published_sizes_match_the_paper(name: str) -> None:
    cfg = DenoiserConfig(name=name, sample_size=32, context_dim=768, context_len=77)
    with torch.device("meta"):  # no memory, no init cost
        model = build_denoiser(cfg)
    kwargs = denoiser_kwargs(cfg)
    n = count_params(model)
    assert n == _uvit_t2i_params(kwargs["depth"], kwargs["hidden_size"])
    assert abs(n / 1e6 - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.03
    if name == "uvit-s":
        assert abs(n / 45e6 - 1) < 0.03  # the MS-COCO (77x768 CLIP context) U-ViT-S/2
