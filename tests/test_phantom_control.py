"""The controllability benchmark's scoring, checked with oracle 'pipelines' that render the truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrgen.cli import main
from cxrgen.config import ImageConfig, SamplingConfig
from cxrgen.errors import ConfigError
from cxrgen.phantom import PhantomFindings, benchmark_prompts, render
from cxrgen.phantom.control import CONTROL_KEYS, control_benchmark, negated_findings, score_image, summarise
from cxrgen.phantom.measure import measure

SIZE = 32
CASES = benchmark_prompts()


def _mirror(f: PhantomFindings) -> PhantomFindings:
    """The same findings on the other patient side."""
    swap = {"right": "left", "left": "right"}

    def side(s: str) -> str:
        return swap.get(s, s)

    lobe = f.consolidation_lobe
    if lobe != "none":
        lobe = f"{side(lobe.split('_')[0])}_{lobe.split('_')[1]}"
    return PhantomFindings(side(f.effusion_side), f.effusion_size, side(f.pneumothorax_side),
                           f.pneumothorax_extent, f.ctr, lobe)


class OraclePipe:
    """Renders, for each prompt, a phantom of ``transform(truth)`` (a perfect or a broken 'model')."""

    image_config = ImageConfig(size=SIZE)
    image_size = SIZE
    sampling = SamplingConfig(steps=1)

    def __init__(self, transform=lambda f: f) -> None:
        self.truth = dict(CASES)
        self.transform = transform

    def sample(self, prompts, cfg, generator=None, progress=True):
        images = []
        for i, prompt in enumerate(prompts):
            for j in range(cfg.num_images_per_prompt):
                gen = generator[i * cfg.num_images_per_prompt + j]
                rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
                img = render(self.transform(self.truth[prompt]), SIZE, rng)  # (H, W) in [0, 1]
                images.append(torch.from_numpy(img).float()[None] * 2 - 1)
        return type("Out", (), {"images": torch.stack(images)})()  # (N, 1, H, W)


def test_negated_findings_reads_heldout_and_train_negations() -> None:
    assert negated_findings("Large left pleural effusion. No evidence of pneumothorax.") == {"pneumothorax"}
    assert negated_findings("There is no effusion and no pneumothorax. Normal heart size.") == {
        "effusion", "pneumothorax", "cardiomegaly"}
    assert negated_findings("No pleural fluid. Lungs are clear without consolidation.") == {
        "effusion", "consolidation"}
    assert negated_findings("Large right pneumothorax.") == set()
    assert sum(bool(negated_findings(p)) for p, _ in CASES) >= len(CASES) // 4  # the benchmark has negations


def test_oracle_scores_high_and_mirrored_oracle_fails_laterality() -> None:
    good = control_benchmark(OraclePipe(), n_per_prompt=1, progress=False)
    assert set(CONTROL_KEYS) <= set(good) and good["n"] == len(CASES)
    for key in ("laterality_acc", "presence_acc", "negation_acc", "cardiomegaly_acc"):
        assert good[key] >= 0.95, (key, good[key])
    assert good["size_spearman"] >= 0.9
    assert len(good["per_prompt"]) == len(CASES) and good["settings"]["n_per_prompt"] == 1
    assert min(good["laterality_by_finding"].values()) >= 0.95
    mirrored = control_benchmark(OraclePipe(_mirror), n_per_prompt=1, progress=False)
    assert mirrored["laterality_acc"] < 0.2  # bilateral effusions are the only sides that survive a mirror
    assert mirrored["laterality_by_finding"]["pneumothorax"] == 0.0
    assert mirrored["laterality_by_finding"]["consolidation"] < 0.1
    assert mirrored["presence_acc"] >= 0.95 and mirrored["size_spearman"] >= 0.9  # presence/size ignore side


def test_prompt_ignoring_model_scores_low() -> None:
    normal = PhantomFindings()
    result = control_benchmark(OraclePipe(lambda f: normal), n_per_prompt=2, progress=False)
    assert result["n"] == 2 * len(CASES)
    assert result["laterality_acc"] < 0.1 and result["size_spearman"] < 0.5
    assert result["negation_acc"] >= 0.95  # nothing drawn: every negation holds (negation alone is not enough)


def test_score_of_unreadable_image_counts_every_item_wrong() -> None:
    truth = PhantomFindings(effusion_side="left", effusion_size="large", pneumothorax_side="right",
                            pneumothorax_extent="apical")
    row = score_image(None, truth, "A large effusion is seen in the left pleural space. No airspace opacity.")
    assert row["laterality"] == {"effusion": False, "pneumothorax": False} and row["negation"] == [False]
    assert not any(row["presence"].values()) and not row["cardiomegaly"]
    measured = measure(render(truth, 64, np.random.default_rng(1)))
    good = score_image(measured, truth, "")
    assert good["laterality"] == {"effusion": True, "pneumothorax": True} and good["fluid_height"] > 0.4
    scores = summarise([dict(good, truth=truth), dict(row, truth=truth)])
    assert scores["laterality_acc"] == 0.5 and scores["n"] == 2
    assert scores["laterality_by_finding"]["effusion"] == 0.5 and scores["laterality_by_finding"]["pneumothorax"] == 0.5
    assert math.isnan(scores["laterality_by_finding"]["consolidation"])  # not prompted: undefined
    empty = summarise([dict(score_image(None, PhantomFindings(), "Normal chest."), truth=PhantomFindings())])
    assert math.isnan(empty["negation_acc"]) and math.isnan(empty["size_spearman"])  # no items: undefined


def test_control_rejects_zero_images() -> None:
    with pytest.raises(ConfigError, match="n_per_prompt"):
        control_benchmark(OraclePipe(), n_per_prompt=0)


def test_control_cli_writes_the_json_keys(tmp_path: Path, tiny_pixel_model: Path) -> None:
    out = tmp_path / "control.json"
    assert main(["control", "--model", str(tiny_pixel_model), "--json", str(out), "--n-per-prompt", "1",
                 "--steps", "2", "--guidance", "2.0", "--sampler", "ddim", "--seed", "3"]) == 0
    result = json.loads(out.read_text())
    assert set(CONTROL_KEYS) <= set(result) and result["n"] == len(CASES)
    assert result["settings"] == {"sampler": "ddim", "steps": 2, "guidance_scale": 2.0, "n_per_prompt": 1,
                                  "seed": 3, "prompts": len(CASES), "image_size": SIZE, "wording": "heldout",
                                  "findings": ["effusion", "pneumothorax", "consolidation", "cardiomegaly"]}
    assert set(result["laterality_by_finding"]) == {"effusion", "pneumothorax", "consolidation"}
    assert main(["control", "--model", str(tiny_pixel_model), "--json", str(out), "--n-per-prompt", "1",
                 "--steps", "1", "--wording", "train"]) == 0
    trained = json.loads(out.read_text())
    assert trained["settings"]["wording"] == "train"
    assert [p["prompt"] for p in trained["per_prompt"]] == [p for p, _ in benchmark_prompts(wording="train")]
    assert main(["control", "--model", str(tiny_pixel_model), "--json", str(out), "--n-per-prompt", "1",
                 "--steps", "1", "--findings", "effusion"]) == 0
    effusion = json.loads(out.read_text())
    assert effusion["n"] == len(benchmark_prompts(findings=("effusion",))) < len(CASES)
    assert effusion["laterality_by_finding"]["pneumothorax"] is None  # not prompted: null in the JSON
    assert all(result[k] is None or 0.0 <= result[k] <= 1.0 for k in CONTROL_KEYS if k.endswith("_acc"))


@pytest.fixture(scope="module")
def tiny_pixel_model(tmp_path_factory) -> Path:
    from test_identity_codec import save_pixel_pipeline

    return save_pixel_pipeline(tmp_path_factory.mktemp("pixel"))
