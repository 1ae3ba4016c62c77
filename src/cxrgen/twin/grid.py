"""The docs figure: twin cases as rows of PA, lateral, report, and measured findings beside the truth."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrgen.twin.case import TwinCase
from cxrgen.twin.measure import TwinMeasurement, lateral_zone, measure

CELL = 192  # pixels per view in the figure
TEXT_WIDTH = 560
WRAP = 84


def truth_line(case: TwinCase) -> str:
    f = case.findings
    eff = "none" if f.effusion_side == "none" else f"{f.effusion_side} {f.effusion_size}"
    nod = "none" if f.nodule_lobe == "none" else f"{f.nodule_lobe} {f.nodule_mm:.0f} mm"
    return (f"truth: effusion {eff}; ptx {f.pneumothorax_side} {f.pneumothorax_size}; consolidation "
            f"{f.consolidation_lobe}; CTR {case.ctr:.2f}{' (enlarged)' if f.cardiomegaly else ''}; nodule {nod}")


def measured_lines(pa: TwinMeasurement, lat: TwinMeasurement) -> list[str]:
    eff = "none" if pa.effusion_side == "none" else f"{pa.effusion_side} {pa.effusion_size}"
    return [f"PA measured: effusion {eff}; ptx {pa.pneumothorax_side}; consolidation {pa.consolidation_lobe}; "
            f"CTR {pa.ctr:.2f}{' (enlarged)' if pa.cardiomegaly else ''}",
            f"lateral measured: effusion {lat.effusion_size}; consolidation zone {lat.consolidation_zone}; "
            f"heart {'enlarged' if lat.cardiomegaly else 'normal'}"]


def twin_grid(cases: list[TwinCase], reports: list[str], out_path: str | Path) -> Path:
    """Write the figure: one row per case (PA, lateral, then report, truth and measurements as text)."""
    canvas = Image.new("L", (2 * CELL + TEXT_WIDTH, CELL * len(cases)), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (case, report) in enumerate(zip(cases, reports, strict=True)):
        for j, view in enumerate(("pa", "lateral")):
            pix = Image.fromarray((case.view(view) * 255).round().astype(np.uint8)).resize((CELL, CELL), Image.BILINEAR)
            canvas.paste(pix, (j * CELL, i * CELL))
        pa, lat = measure(case.pa, "pa"), measure(case.lateral, "lateral")
        zone = lateral_zone(case.findings.consolidation_lobe)
        lines = textwrap.wrap(report, WRAP) + [""] + textwrap.wrap(truth_line(case) + f" (lateral zone {zone})", WRAP)
        lines += [w for line in measured_lines(pa, lat) for w in textwrap.wrap(line, WRAP)]
        draw.multiline_text((2 * CELL + 8, i * CELL + 6), "\n".join(lines), fill=0)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path
