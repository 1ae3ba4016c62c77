"""What an any-to-any call returns, and how it is written: PNGs with text chunks, reports with a JSON beside."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxrgen.config import ImageConfig
from cxrgen.data.images import save_png


@dataclass
class MultiViewOutput:
    """Every modality of the N samples, given or generated, and which was which.

    ``frontal`` / ``lateral``: (N, 1, H, W) in [-1, 1] or None; ``report``: N texts or None;
    ``report_latent``: the generated report latents (N, L_r, D_r) when the report was generated.
    """

    given: tuple[str, ...]
    generated: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    frontal: torch.Tensor | None = None
    lateral: torch.Tensor | None = None
    report: list[str] | None = None
    report_latent: torch.Tensor | None = None

    def __len__(self) -> int:
        first = next(x for x in (self.frontal, self.lateral, self.report) if x is not None)
        return len(first)

    def metadata(self) -> dict[str, Any]:
        """Which modalities were given and which generated, and the sampling settings (JSON-ready)."""
        return {"given": list(self.given), "generated": list(self.generated),
                "mode": f"{'+'.join(self.given)}->{'+'.join(self.generated)}", **self.settings}

    def save(self, out_dir: str | Path, stem: str = "sample", model: str | None = None) -> list[Path]:
        """Write sample i as ``{stem}_{i}_{frontal,lateral}.png`` (tEXt chunks) and ``{stem}_{i}_report.txt`` + ``.json``."""
        out, written = Path(out_dir), []
        meta = {**self.metadata(), **({"model": model} if model else {})}
        for i in range(len(self)):
            for view in ("frontal", "lateral"):
                images = getattr(self, view)
                if images is None:
                    continue
                role = "generated" if view in self.generated else "given"
                text = {"cxrgen_view": view, "cxrgen_role": role, "cxrgen_multiview": json.dumps(meta)}
                if self.report is not None:
                    text["report"] = self.report[i]
                written.append(save_png(images[i], out / f"{stem}_{i}_{view}.png", ImageConfig(size=images.shape[-1]),
                                        text=text))
            if self.report is not None:
                path = out / f"{stem}_{i}_report.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(self.report[i] + "\n", encoding="utf-8")
                role = "generated" if "report" in self.generated else "given"
                path.with_suffix(".json").write_text(json.dumps({**meta, "report_role": role}, indent=2) + "\n",
                                                     encoding="utf-8")
                written += [path, path.with_suffix(".json")]
        return written
