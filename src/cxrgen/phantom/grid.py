"""The figure of docs/phantom.md: one row per prompt -> generated phantom, with the findings the measurer reads back."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from cxrgen.phantom.control import measure_or_none
from cxrgen.phantom.measure import MeasuredFindings

CELL = 128  # pixels per generated image in the figure
TEXT_WIDTH = 420  # pixels of the text column
WRAP = 62  # characters per text line


def describe(m: MeasuredFindings | None) -> str:
    """One line of measured findings, e.g. 'effusion left large; ptx none; CTR 0.46; lobe none'."""
    if m is None:
        return "measured: not measurable (no air/abdomen contrast)"
    eff = "none" if m.effusion_side == "none" else f"{m.effusion_side} {m.effusion_size}"
    ptx = "none" if m.pneumothorax_side == "none" else f"{m.pneumothorax_side} {m.pneumothorax_extent}"
    return f"measured: effusion {eff}; ptx {ptx}; CTR {m.ctr:.2f}; consolidation {m.consolidation_lobe}"


def phantom_grid(pipe: Any, prompts: list[str], out_path: str | Path, seed: int = 0) -> list[str]:
    """Generate one image per prompt with ``pipe``, write the figure PNG; return the measured lines."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe.sample(prompts, pipe.sampling, generator=gens, progress=False).images  # (P, 1, H, W)
    low, high = pipe.image_config.low, pipe.image_config.high
    pixels = ((images[:, 0].float() - low) / (high - low)).clamp(0, 1).numpy()  # (P, H, W)
    lines = [describe(measure_or_none(p)) for p in pixels]
    canvas = Image.new("L", (CELL + TEXT_WIDTH, CELL * len(prompts)), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (prompt, pix, line) in enumerate(zip(prompts, pixels, lines, strict=True)):
        cell = Image.fromarray((pix * 255).round().astype(np.uint8)).resize((CELL, CELL), Image.BILINEAR)
        canvas.paste(cell, (0, i * CELL))
        text = "\n".join(textwrap.wrap(prompt, WRAP) + [""] + textwrap.wrap(line, WRAP))
        draw.multiline_text((CELL + 8, i * CELL + 8), text, fill=0)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return lines
