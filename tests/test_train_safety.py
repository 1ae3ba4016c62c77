"""`cxrgen train` never loses a finished run and fails before step 1 when it cannot write (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import one_error_line
from train_helpers import write_config

from cxrgen.cli import main
from cxrgen.train import checkpoint as ckpt


def _train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), *extra])


def test_fresh_run_into_a_finished_run_folder_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(write_config(tmp_path, steps=6), out) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _train(write_config(tmp_path, "short.yaml", steps=2), out) == 2
    line = one_error_line(capsys)
    assert "--resume latest" in line and "--overwrite" in line
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing touched


def test_overwrite_replaces_the_old_run_and_keeps_the_new_checkpoints(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(write_config(tmp_path, steps=6), out) == 0
    assert _train(write_config(tmp_path, "short.yaml", steps=2), out, "--overwrite") == 0
    steps = [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(out / ckpt.CHECKPOINTS_DIR)]
    assert steps == [2]  # the old run's step 4 and 6 are gone, the new run's own checkpoint is kept
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 2 and Path(summary["checkpoint"]).is_dir()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + this run's two logged steps
    assert ckpt.resolve_resume(out, "latest").name == ckpt.checkpoint_name(2)


def test_retention_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    root = tmp_path / ckpt.CHECKPOINTS_DIR
    for step in (4, 6):
        folder = root / ckpt.checkpoint_name(step)
        folder.mkdir(parents=True)
        (folder / ckpt.STATE_NAME).write_text("{}")
    staging = ckpt.start_staging(root, 2)
    (staging / ckpt.STATE_NAME).write_text("{}")
    final = ckpt.commit(staging, keep=1)
    assert final.is_dir()


def test_unwritable_output_folder_fails_before_training(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _train(write_config(tmp_path), blocker / "run") == 2
    line = one_error_line(capsys)
    assert "cannot write" in line and str(blocker / "run") in line


def test_resume_from_a_truncated_checkpoint_names_the_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    config = write_config(tmp_path, steps=2)
    assert _train(config, out) == 0
    weights = ckpt.list_checkpoints(out / ckpt.CHECKPOINTS_DIR)[-1] / "denoiser.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    capsys.readouterr()
    assert _train(config, out, "--resume", "latest", "--set", "steps=4") == 2
    line = one_error_line(capsys)
    assert str(weights) in line and "corrupt" in line
