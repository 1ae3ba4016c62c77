"""tools/probe_aligned_findings.py: a linear probe reads a class the features encode and not one they do not."""

from __future__ import annotations

from pathlib import Path

import torch
from script_loader import load_script
from torch.nn import functional as F

TOOL = Path(__file__).resolve().parents[1] / "tools" / "probe_aligned_findings.py"


def load_tool():
    return load_script(TOOL)


def test_the_probe_ranks_encoded_features_above_noise() -> None:
    tool = load_tool()
    g = torch.Generator().manual_seed(0)
    y = torch.where(torch.rand(400, generator=g) < 0.7, 0, torch.randint(1, 3, (400,), generator=g))  # majority 0
    encoded = F.one_hot(y, 3).float() + 0.3 * torch.randn(400, 3, generator=g)
    noise = torch.randn(400, 16, generator=g)
    accuracy, majority = tool.probe(encoded[:300], y[:300], encoded[300:], y[300:])
    assert 0.6 < majority < 0.8 and accuracy > 0.95
    accuracy, majority = tool.probe(noise[:300], y[:300], noise[300:], y[300:])
    assert accuracy < majority + 0.05  # nothing to read: no better than the majority class
    assert tool.CLASSES[None] == 0 and tool.CLASSES["left"] != tool.CLASSES["right"]
