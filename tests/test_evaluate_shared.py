"""`cxrgen evaluate` on the shared data: a tiny model trained ~100 steps, scored with the SHIPPED evaluator.

Plumbing, not quality: the tiny model's numbers are poor by design; the test checks that the JSON
and the report come out, with values of the right kind, through the CLI like a user would run it.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cxrgen.cli import main
from cxrgen.data.manifest import read_manifest
from cxrgen.evaluate.reid import DEFAULT_REID
from cxrgen.evaluate.run import DEFAULT_EVALUATOR, RESULT_KEYS

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
N_PROMPTS = 6
N_PER_PROMPT = 4


@pytest.fixture(scope="module")
def trained(covid_run: dict) -> dict:
    root = covid_run["root"]
    manifest = root / "covid" / "manifest.parquet"
    heldout = read_manifest(manifest).query("split != 'train'")
    normal = heldout[heldout["No Finding"] == 1].head(N_PROMPTS // 2)  # both label values, so AUROC exists
    rows = pd.concat([normal, heldout[heldout["Pneumonia"] == 1].head(N_PROMPTS - len(normal))])
    prompts = root / "prompts.csv"
    rows[["prompt", "image_path", "No Finding", "Pneumonia"]].to_csv(prompts, index=False)
    return {"root": root, "model": covid_run["model"], "manifest": manifest, "prompts": prompts}


def test_cli_evaluate_with_the_shipped_evaluator(trained: dict) -> None:
    out = trained["root"] / "eval"
    code = main(["evaluate", "--model", str(trained["model"]), "--prompts", str(trained["prompts"]),
                 "--real", str(trained["manifest"]), "--out", str(out), "--json", str(out / "metrics.json"),
                 "--n-per-prompt", str(N_PER_PROMPT), "--steps", "4", "--sampler", "ddim", "--seed", "0",
                 "--no-progress"])
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    assert set(RESULT_KEYS) <= set(result)
    assert result["settings"]["evaluator"] == str(DEFAULT_EVALUATOR)
    assert result["n_generated"] == N_PROMPTS * N_PER_PROMPT
    assert result["n_real"] == len(read_manifest(trained["manifest"]))
    assert result["fid"]["cxrgen-evaluator"] > 0 and result["kid"]["cxrgen-evaluator"] is not None
    assert 0.0 <= result["ms_ssim"]["mean"] <= 1.0
    assert set(result["auroc"]["per_class"]) == {"No Finding", "Pneumonia"}
    assert 0.0 <= result["auroc"]["per_class"]["No Finding"] <= 1.0  # held-out rows with No Finding 1 and 0
    assert 0.0 <= result["auroc_real"]["per_class"]["No Finding"] <= 1.0
    assert result["auroc_real"]["n_images"] == N_PROMPTS
    assert 0.0 <= result["memorization"]["copy_rate"] <= 1.0 and result["memorization"]["n_train"] > 0
    reid = result["reid"]  # the shipped re-identification network against the model's own training images
    assert reid["model"] == str(DEFAULT_REID) and reid["n_train"] == result["memorization"]["n_train"]
    assert 0.0 <= reid["mean"] <= reid["max"] <= reid["copy_score"] + 1e-6 and reid["heldout"]["n"] > 0
    assert result["compute"]["gflops_per_image"] > 0 and result["compute"]["images_per_s"] > 0
    report = (out / "report.md").read_text()
    assert "## Alignment" in report and (out / "samples.png").is_file() and (out / "auroc_per_class.png").is_file()
