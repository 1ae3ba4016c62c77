"""The demo's light logic (no torch, no Gradio): request bounds, the labeler's reading, the model loader.

The pipeline itself is touched only in ``cxrgen.serve.model`` (imported in the background while
the page is already served, so the page is up before torch and the model are loaded).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cxrgen
from cxrgen.config import SamplingConfig, from_dict
from cxrgen.config.sampling import SAMPLER_NAMES
from cxrgen.data.labeler import NO_FINDING, label_report
from cxrgen.data.manifest import POSITIVE, UNCERTAIN
from cxrgen.errors import ConfigError, CxrgenError, ReportError

log = logging.getLogger(__name__)

#: Where the packaged default model is (cxrgen.generate.DEFAULT_MODEL, which imports torch to say so).
PACKAGED_MODEL = Path(cxrgen.__file__).parent / "models" / "default"

#: Shown under every image in the page (short, so it is not cut); the files carry the mark in their metadata.
SYNTHETIC_CAPTION = "SYNTHETIC (cxrgen)"
#: The gallery's title.
GALLERY_LABEL = "Synthetic images made by cxrgen from the report (not of a patient)"

#: Example reports of the page: (label, text). Side and size are read by the labeler panel.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("normal", "PA chest radiograph. The lungs are clear. No pleural effusion or pneumothorax. "
               "Heart size is normal."),
    ("effusion, large right", "PA chest radiograph. Large right pleural effusion. Heart size is normal."),
    ("effusion, small left", "PA chest radiograph. Small left pleural effusion. No pneumothorax."),
    ("pneumothorax", "PA chest radiograph. Moderate left pneumothorax. No pleural effusion."),
    ("cardiomegaly", "PA chest radiograph. The heart is enlarged, consistent with cardiomegaly. Lungs are clear."),
    ("pediatric", "AP chest radiograph of a 4-year-old child. Patchy right lower lobe opacity consistent "
                  "with pneumonia."),
)


@dataclass(frozen=True)
class DemoLimits:
    """Bounds on one request, so one user cannot hold the CPU for minutes."""

    max_report_chars: int = 2000  # longer reports are cut here (a warning says so)
    max_images: int = 4
    max_steps: int = 50
    max_guidance: float = 15.0
    concurrency_limit: int = 1  # generations running at once; the rest wait in the queue
    max_queue: int = 16  # waiting requests beyond this are refused with a message

    def __post_init__(self) -> None:
        if min(self.max_report_chars, self.max_images, self.max_steps, self.concurrency_limit, self.max_queue) < 1:
            raise ConfigError(f"demo limits must be >= 1: {self}")


@dataclass
class DemoResult:
    """One generation: PNG and DICOM files (same order), each image's seed, and the time it took."""

    pngs: list[Path]
    dicoms: list[Path]
    seeds: list[int]
    seconds: float
    warning: str | None = None

    def captions(self) -> list[str]:
        """The visible caption of each image: the synthetic mark and its seed."""
        return [f"{SYNTHETIC_CAPTION} · seed {s}" for s in self.seeds]


# --- request bounds ---------------------------------------------------------------------------
#: Where a long report may be cut, best first: after a sentence, then between words.
_CUT_AT = (re.compile(r"[.!?]\s"), re.compile(r"\s"))


def bound_report(text: str | None, max_chars: int) -> tuple[str, str | None]:
    """The report to sample from and a warning if it was cut; ReportError if it is empty."""
    given = len(text or "")
    text = (text or "").strip()
    if not text:
        raise ReportError("The report is empty: type a report (or pick an example), then press Generate.")
    if len(text) <= max_chars:
        return text, None
    head = text[:max_chars + 1]  # a sentence ending exactly at the limit still counts
    cut = text[:max_chars]
    for pattern in _CUT_AT:  # the last sentence (else word) end in the second half of the limit
        ends = [m.start() + 1 for m in pattern.finditer(head) if m.start() + 1 > max_chars // 2]
        if ends:
            cut = text[:ends[-1]].rstrip()
            break
    warning = (f"The report was cut from {given:,} to {len(cut):,} characters (the demo's limit is "
               f"{max_chars:,}); the images follow the first part only.")
    return cut, warning


def request_settings(defaults: SamplingConfig, limits: DemoLimits, sampler: str, steps: float, guidance: float,
                     seed: float, n_images: float) -> SamplingConfig:
    """The sampling settings of a request, checked against the limits (ConfigError saying the bound)."""
    if sampler not in SAMPLER_NAMES:
        raise ConfigError(f"Unknown sampler {sampler!r}: choose one of {', '.join(SAMPLER_NAMES)}.")
    checks = [("Number of images", n_images, 1, limits.max_images), ("Steps", steps, 1, limits.max_steps),
              ("Guidance scale", guidance, 0, limits.max_guidance), ("Seed", seed, 0, 2**63 - 1)]
    for what, value, low, high in checks:
        if value is None or not low <= float(value) <= high:
            raise ConfigError(f"{what} must be between {low} and {high:,} in this demo (got {value}).")
    for what, value in (("Number of images", n_images), ("Steps", steps), ("Seed", seed)):
        if float(value) != int(value):
            raise ConfigError(f"{what} must be a whole number (got {value}).")
    return dataclasses.replace(defaults, sampler=sampler, steps=int(steps), guidance_scale=float(guidance),
                               seed=int(seed), num_images_per_prompt=int(n_images))


# --- the labeler's reading --------------------------------------------------------------------
def labeler_reading(text: str) -> list[dict[str, str]]:
    """What the labeler reads in the report: one row per positive or uncertain finding (side, size)."""
    result = label_report(text)
    rows = []
    for finding, status in result.labels.items():
        if status not in (POSITIVE, UNCERTAIN):
            continue
        details = result.details.get(finding, {})
        rows.append({"finding": finding, "reading": "present" if status == POSITIVE else "uncertain",
                     "side": details.get("laterality", "-"), "size": details.get("size", "-")})
    return rows


def labeler_markdown(text: str) -> str:
    """The labeler panel: one line per finding the model is asked for (reading, side, size)."""
    rows = [r for r in labeler_reading(text) if r["finding"] != NO_FINDING]
    head = "**What the labeler reads in the report**\n\n"
    if not rows:
        return head + "No finding: a normal study (or terms the labeler does not know)."
    lines = [f"- **{r['finding']}**: {r['reading']}; side: {r['side']}; size: {r['size']}" for r in rows]
    return head + "\n".join(lines) + "\n\n(The model is conditioned on the text itself, not on these labels.)"


def status_markdown(result: DemoResult, settings: SamplingConfig) -> str:
    """The line under the gallery: how many images, the time, the settings (and a cut warning)."""
    text = (f"Generated {len(result.seeds)} synthetic image(s) in **{result.seconds:.1f} s** "
            f"({settings.sampler}, {settings.steps} steps, guidance {settings.guidance_scale:g}, "
            f"seeds {result.seeds[0]}–{result.seeds[-1]}).")
    return f"⚠️ {result.warning}\n\n{text}" if result.warning else text


def page_defaults(model: str | Path | None) -> SamplingConfig:
    """The sampling settings the page starts with: the model folder's model_index.json, read without torch."""
    path = Path(model or PACKAGED_MODEL) / "model_index.json"
    if not path.is_file():
        return SamplingConfig()
    sampling = json.loads(path.read_text(encoding="utf-8")).get("sampling")
    return from_dict(SamplingConfig, sampling, where=str(path)) if sampling else SamplingConfig()


# --- the model, loaded in the background ------------------------------------------------------
class ModelLoader:
    """Loads the model in a background thread (so the page is served meanwhile); ``get()`` waits for it."""

    def __init__(self, model: str | Path | None, device: str = "cpu", start: bool = True) -> None:
        self.source, self.device = model, device
        self.started: float | None = None
        self.seconds: float | None = None  # load time, once loaded
        self._future: Future | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Begin loading (once); the page's server should already be up, as both compete for the CPU."""
        if self._future is None:
            self.started = time.perf_counter()
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrgen-load")
            self._future = pool.submit(self._load, self.source, self.device)
            pool.shutdown(wait=False)

    def _load(self, model: str | Path | None, device: str) -> Any:
        from cxrgen.serve.model import load_model  # torch, diffusers and the weights: the slow part

        loaded = load_model(model, device)
        self.seconds = time.perf_counter() - self.started
        log.info("demo model loaded in %.1f s", self.seconds)
        return loaded

    def get(self, timeout: float | None = None) -> Any:
        """The loaded DemoModel (waits for it); a failed load raises its CxrgenError (or one naming it)."""
        self.start()
        try:
            return self._future.result(timeout)
        except (CxrgenError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a corrupt weight file: say which model failed
            raise CxrgenError(f"could not load the model {self.source or '(packaged default)'}: "
                              f"{type(exc).__name__}: {exc}") from exc
