"""cxrgen evaluate: the protocol end to end on a tiny random pipeline, a tiny evaluator and synthetic images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import WIDTH, make_bert

from cxrgen.cli import main
from cxrgen.config import (
    EvalConfig,
    EvaluatorConfig,
    ImageConfig,
    ModelConfig,
    SamplingConfig,
    ScheduleConfig,
    from_dict,
)
from cxrgen.data.images import save_png
from cxrgen.data.manifest import CHEXPERT_LABELS, new_manifest, write_manifest
from cxrgen.errors import MissingColumnsError
from cxrgen.evaluate.compute_cost import denoiser_cost
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.extractors import CXREvaluatorExtractor
from cxrgen.evaluate.reid import ReidNet
from cxrgen.evaluate.report import REPORT_NAME
from cxrgen.evaluate.run import RESULT_KEYS, read_prompt_table, run_evaluation
from cxrgen.evaluate.suite import ImageSets, input_notes, score
from cxrgen.parts import build_parts
from cxrgen.pipeline import CXRPipeline
from cxrgen.samplers import training_scheduler

SIZE = 32
N_TRAIN, N_TEST = 32, 16
CLASSES = ("No Finding", "Pneumonia")
PROMPTS = ["no acute disease", "right lower lobe opacity", "left pleural effusion", "no finding"]
K = 2


def synthetic_images(n: int, seed: int) -> torch.Tensor:
    """(n, 1, SIZE, SIZE) in [-1, 1]: a bright blob at a random place on a noisy dark background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cx, cy = 6 + 20 * torch.rand(n, generator=g), 6 + 20 * torch.rand(n, generator=g)
    blob = torch.exp(-((xx - cx.view(n, 1, 1)) ** 2 + (yy - cy.view(n, 1, 1)) ** 2) / 18.0)
    out = 0.3 * torch.rand(n, SIZE, SIZE, generator=g) + 0.7 * blob
    return (out.clamp(0, 1) * 2 - 1).unsqueeze(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    images = synthetic_images(N_TRAIN + N_TEST, seed=0)
    rows = []
    for i, img in enumerate(images):
        path = save_png(img, root / "img" / f"{i:03d}.png", ImageConfig(size=SIZE))
        label = float(i % 2)
        rows.append({"source": "synthetic", "image_path": str(path.relative_to(root)), "patient_id": str(i),
                     "prompt": PROMPTS[i % len(PROMPTS)], "split": "train" if i < N_TRAIN else "test",
                     "No Finding": 1.0 - label, "Pneumonia": label})
    manifest = write_manifest(new_manifest(rows), root / "manifest.csv")
    prompts = root / "prompts.csv"
    pd.DataFrame({"prompt": PROMPTS, "image_path": [f"img/{i:03d}.png" for i in range(len(PROMPTS))],
                  "No Finding": ["1", "0", "0", "1"], "Pneumonia": ["0", "1", "1", ""]}).to_csv(prompts, index=False)
    torch.manual_seed(0)  # test-side seeding of the random tiny networks
    evaluator = CXREvaluator(EvaluatorConfig(arch="densenet-tiny", class_names=CLASSES, image=ImageConfig(size=SIZE)))
    evaluator_dir = evaluator.save_pretrained(root / "evaluator")
    model_dir = tiny_pipeline(root).save_pretrained(root / "model")
    ReidNet(image_size=SIZE, width=4, embed_dim=8).save_pretrained(root / "reid")  # random: the block's plumbing
    return {"root": root, "manifest": manifest, "prompts": prompts, "evaluator": evaluator_dir, "model": model_dir,
            "real_paths": [root / r["image_path"] for r in rows]}


def tiny_pipeline(root: Path) -> CXRPipeline:
    """32 px images, 4x8x8 latents, a 2-layer BERT (width 16), a U-ViT tiny; DDIM 2 steps, guidance 2."""
    cfg = from_dict(ModelConfig, {
        "image_size": SIZE,
        "text_encoder": {"backend": "bert", "name_or_path": str(make_bert(root / "bert")), "max_length": 16},
        "autoencoder": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1},
        "denoiser": {"name": "uvit-tiny", "in_channels": 4, "sample_size": 8, "context_dim": WIDTH,
                     "context_len": 16},
    })  # fmt: skip
    parts = build_parts(cfg)
    scheduler = training_scheduler(ScheduleConfig(), cfg.denoiser.prediction_type)
    sampling = SamplingConfig(sampler="ddim", steps=2, guidance_scale=2.0)
    return CXRPipeline(parts.text_encoder, parts.autoencoder, parts.denoiser, scheduler, SIZE, sampling).eval()


def cli_args(setup: dict, out: Path) -> list[str]:
    return ["evaluate", "--model", str(setup["model"]), "--prompts", str(setup["prompts"]), "--real",
            str(setup["manifest"]), "--out", str(out), "--json", str(out / "result.json"), "--evaluator",
            str(setup["evaluator"]), "--n-per-prompt", str(K), "--seed", "1", "--no-progress",
            "--train-manifest", str(setup["manifest"]), "--reid-model", str(setup["root"] / "reid")]


@pytest.fixture(scope="module")
def first_run(setup: dict) -> dict:
    out = setup["root"] / "run"
    assert main(cli_args(setup, out)) == 0
    return {"out": out, "result": json.loads((out / "result.json").read_text())}


def test_json_has_the_keys_and_types(first_run: dict) -> None:
    result = first_run["result"]
    assert set(RESULT_KEYS) <= set(result)
    assert isinstance(result["fid"]["cxrgen-evaluator"], float) and isinstance(result["kid"]["cxrgen-evaluator"], float)
    assert set(result["ms_ssim"]) >= {"mean", "std"} and 0.0 <= result["ms_ssim"]["mean"] <= 1.0
    assert set(result["auroc"]["per_class"]) == set(CLASSES) and isinstance(result["auroc"]["mean"], float)
    assert result["auroc"]["n_images"] == len(PROMPTS) * K and result["auroc_real"]["n_images"] == len(PROMPTS)
    assert isinstance(result["memorization"]["copy_rate"], float) and isinstance(result["memorization"]["threshold"], float)
    assert result["compute"]["gflops_per_image"] > 0 and result["compute"]["images_per_s"] > 0
    assert result["n_generated"] == len(PROMPTS) * K and result["n_real"] == N_TRAIN + N_TEST
    assert result["settings"]["label_source"] == "columns"
    reid = result["reid"]
    assert reid["n_generated"] == len(PROMPTS) * K and reid["n_train"] == N_TRAIN and reid["heldout"]["n"] == N_TEST
    assert 0.0 <= reid["mean"] <= reid["max"] <= 1.0 and reid["model"] == str(first_run["out"].parent / "reid")
    assert len(sorted((first_run["out"] / "generated").glob("*.png"))) == len(PROMPTS) * K


def test_report_grids_and_plots_exist(first_run: dict) -> None:
    out = first_run["out"]
    report = (out / REPORT_NAME).read_text()
    for name in ("samples.png", "memorization_pairs.png", "diversity_by_length.png", "auroc_per_class.png"):
        assert (out / name).is_file() and name in report
    assert "AUROC real" in report and PROMPTS[1] in report and "## Privacy (re-identification)" in report


def test_second_run_reuses_the_images(setup: dict, first_run: dict, monkeypatch) -> None:
    calls = []
    original = CXRPipeline.sample
    monkeypatch.setattr(CXRPipeline, "sample", lambda self, *a, **kw: calls.append(1) or original(self, *a, **kw))
    before = {p.name: p.read_bytes() for p in (first_run["out"] / "generated").glob("*.png")}
    assert main(cli_args(setup, first_run["out"])) == 0
    assert calls == []  # no denoiser call: every image was reused
    after = {p.name: p.read_bytes() for p in (first_run["out"] / "generated").glob("*.png")}
    assert after == before
    result = json.loads((first_run["out"] / "result.json").read_text())
    assert result["compute"]["images_generated_now"] == 0
    assert result["compute"]["images_per_s"] == pytest.approx(first_run["result"]["compute"]["images_per_s"])
    assert result["fid"] == first_run["result"]["fid"]


def test_real_images_as_generated_give_fid_zero_and_copies(setup: dict, tmp_path: Path) -> None:
    evaluator = CXREvaluator.from_pretrained(setup["evaluator"])
    paths = setup["real_paths"]
    train, test = paths[:N_TRAIN], paths[N_TRAIN:]
    table = read_prompt_table(setup["prompts"], CLASSES)
    groups = [train[p * 8 : (p + 1) * 8] for p in range(len(PROMPTS))]  # the training images, 8 per prompt
    cfg = EvalConfig(progress=False, kid_subset_size=8)
    extractors = {"cxrgen-evaluator": CXREvaluatorExtractor(evaluator)}
    same = score(cfg, table, ImageSets(groups, real=train, train=train, heldout=test), evaluator, extractors, tmp_path)
    other = score(cfg, table, ImageSets(groups, real=test, train=train, heldout=test), evaluator, extractors, tmp_path)
    assert abs(same["fid"]["cxrgen-evaluator"]) < 1e-3 * other["fid"]["cxrgen-evaluator"]
    assert other["fid"]["cxrgen-evaluator"] > 0
    assert same["memorization"]["copy_rate"] == 1.0  # every "generated" image is a training image
    assert same["memorization"]["top_pairs"][0]["pixel_ssim"] == pytest.approx(1.0, abs=1e-4)


def test_prompts_without_a_prompt_column_fail_clearly(setup: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["left pleural effusion"]}).to_csv(bad, index=False)
    with pytest.raises(MissingColumnsError, match="'prompt' column"):
        read_prompt_table(bad, CLASSES)
    monkeypatch.setattr(CXRPipeline, "sample", lambda *a, **kw: pytest.fail("sampled despite a bad CSV"))
    args = cli_args(setup, tmp_path / "out")
    args[args.index("--prompts") + 1] = str(bad)
    assert main(args) == 2
    assert "no 'prompt' column" in capsys.readouterr().err


def test_labels_come_from_the_labeler_without_label_columns(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": ["Right lower lobe pneumonia.", "No pneumonia."]}).to_csv(path, index=False)
    table = read_prompt_table(path, CLASSES)
    assert table.label_source == "labeler" and table.image_paths == [None, None]
    np.testing.assert_array_equal(table.labels[:, 1], [1.0, 0.0])


def test_gflops_scale_with_steps_and_guidance(setup: dict) -> None:
    pipe = CXRPipeline.from_pretrained(setup["model"])
    base = denoiser_cost(pipe, steps=4, guidance_scale=1.0)
    assert denoiser_cost(pipe, steps=8, guidance_scale=1.0)["gflops_per_image"] == pytest.approx(
        2 * base["gflops_per_image"])
    assert denoiser_cost(pipe, steps=4, guidance_scale=3.0)["gflops_per_image"] == pytest.approx(
        2 * base["gflops_per_image"])
    assert base["denoiser_params"] == sum(p.numel() for p in pipe.denoiser.parameters())


def test_report_without_matplotlib_has_no_plots(setup: dict, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    cfg = EvalConfig(model=str(setup["model"]), prompts=str(setup["prompts"]), real_manifest=str(setup["manifest"]),
                     out_dir=str(tmp_path), evaluator=str(setup["evaluator"]), n_per_prompt=K, progress=False,
                     train_manifest=str(setup["manifest"]))
    result = run_evaluation(cfg)
    assert (tmp_path / REPORT_NAME).is_file() and (tmp_path / "samples.png").is_file()
    assert not (tmp_path / "auroc_per_class.png").exists()
    assert "matplotlib is not installed" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["n_generated"] == result["n_generated"]


def test_realism_block_with_enough_images(setup: dict, tmp_path: Path) -> None:
    """C2ST, SWD, PRDC and per-finding FID come out of score() once the sets are large enough."""
    evaluator = CXREvaluator.from_pretrained(setup["evaluator"])
    paths = setup["real_paths"]
    train, test = paths[:N_TRAIN], paths[N_TRAIN:]
    table = read_prompt_table(setup["prompts"], CLASSES)
    groups = [train[p * 8 : (p + 1) * 8] for p in range(len(PROMPTS))]
    labels = np.full((len(train), 14), np.nan)
    labels[:, CHEXPERT_LABELS.index("Pleural Effusion")] = 1.0  # every reference image has it
    cfg = EvalConfig(progress=False, kid_subset_size=8, c2st_folds=2, c2st_epochs=2)
    result = score(cfg, table, ImageSets(groups, real=train, train=train, heldout=test, real_labels=labels),
                   evaluator, {"cxrgen-evaluator": CXREvaluatorExtractor(evaluator)}, tmp_path)
    c2st = result["c2st"]
    assert c2st["n"] == N_TEST and 0.0 <= c2st["cnn"] <= 1.0 and 0.0 <= c2st["linear"] <= 1.0
    assert c2st["cnn_ci"][0] <= c2st["cnn"] <= c2st["cnn_ci"][1]
    assert any("32 generated" in note for note in c2st["notes"])  # 16 real vs 32 generated: balanced
    assert all(Path(t["path"]) in train for t in c2st["most_generated"])
    assert result["swd"]["mean"] > 0 and set(result["swd"]["per_level"]) == {"32", "16"}
    prdc = result["prdc"]["cxrgen-evaluator"]
    assert prdc["precision"] == 1.0 and prdc["coverage"] == 1.0  # generated == reference features
    effusion = result["fid_per_finding"]["Pleural Effusion"]
    assert effusion["n_generated"] == 8 and effusion["n_real"] == N_TRAIN and effusion["fid"]["cxrgen-evaluator"] > 0


def test_too_few_images_give_null_metrics_that_say_how_many(first_run: dict) -> None:
    """4 prompts x 2 images: C2ST (5 folds) needs 10 per set; findings without 2 real images get no FID."""
    result = first_run["result"]
    c2st = result["c2st"]
    assert c2st["cnn"] is None and c2st["linear"] is None
    assert "C2ST needs at least 10 generated images, got 8" in c2st["note"]
    starved = [f for f in result["fid_per_finding"].values() if f["n_real"] < 2]
    assert starved and all(f["fid"]["cxrgen-evaluator"] is None and "at least 2" in f["note"] for f in starved)
    assert "C2ST not measured: C2ST needs at least 10" in (first_run["out"] / REPORT_NAME).read_text()


def test_real_images_of_another_size_and_colour_are_converted_and_said(setup: dict, tmp_path: Path) -> None:
    """Real images RGB at 48 px, generated gray at 32 px: every metric runs, and the JSON says what was converted."""
    from PIL import Image

    evaluator = CXREvaluator.from_pretrained(setup["evaluator"])
    gray = ((synthetic_images(N_TEST, seed=5)[:, 0] + 1) * 127.5).round().byte().numpy()  # (N, 32, 32) uint8
    rgb = []
    for i, img in enumerate(gray):
        path = tmp_path / f"rgb{i}.png"
        Image.fromarray(img).resize((48, 48)).convert("RGB").save(path)
        rgb.append(path)
    train = setup["real_paths"][:N_TRAIN]
    table = read_prompt_table(setup["prompts"], CLASSES)
    groups = [train[p * 8 : (p + 1) * 8] for p in range(len(PROMPTS))]
    cfg = EvalConfig(progress=False, kid_subset_size=8, c2st_folds=2, c2st_epochs=2)
    result = score(cfg, table, ImageSets(groups, real=rgb, train=train, heldout=rgb), evaluator,
                   {"cxrgen-evaluator": CXREvaluatorExtractor(evaluator)}, tmp_path)
    notes = " ".join(result["input_notes"])
    assert f"{N_TEST} of {N_TEST} real reference images are not 32x32 px (48x48 ({N_TEST}))" in notes
    assert "colour channels (RGB): read as grayscale" in notes
    assert result["image_size"] == SIZE and result["fid"]["cxrgen-evaluator"] > 0
    assert result["c2st"]["n"] == N_TEST and result["swd"]["image_size"] == SIZE
    assert input_notes(SIZE, {"real reference": train}) == []  # nothing converted, nothing said
