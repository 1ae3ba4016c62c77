"""Loading by hub id or local path: a local path that does not exist fails at once, with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrgen.errors import ConfigError
from cxrgen.hub import load_pretrained, looks_local


def test_looks_local_tells_paths_from_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for local in ("/abs/model", "./model", "../model", "~/model", "a/b/c", "runs/ae-cxr256-gpu"):
        assert looks_local(local), local
    for hub in ("stabilityai/sd-vae-ft-mse", "gpt2", "owner/name"):
        assert not looks_local(hub), hub


def test_missing_local_path_fails_fast_without_calling_the_loader(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    class Loader:
        calls = 0

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            cls.calls += 1
            raise OSError("would have tried the hub")

    with pytest.raises(ConfigError, match="no folder 'runs/ae-gpu' here. Train it first"):
        load_pretrained(Loader, "runs/ae-gpu", None, "an autoencoder", "Train it first.")
    assert Loader.calls == 0  # no hub round trip (and its retries)
    with pytest.raises(ConfigError, match="would have tried the hub. Give a local folder"):
        load_pretrained(Loader, "owner/name", None, "an autoencoder", "Give a local folder.")  # hub id: tried
    assert Loader.calls == 1
