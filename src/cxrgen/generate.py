"""Batch generation to files: PNG or DICOM with their metadata, resumable and sharded over processes.

Image k of prompt p has the global index g = p * n_per_prompt + k, the file ``{p:05d}_{k:03d}.png``
and the seed ``seed + g`` (its own torch.Generator), so a file never depends on sharding or resuming,
and on the batch size only through floating-point rounding of batched kernels (a pixel may differ by
one grey level between --batch-size 1 and 2). Work is cut into fixed batches (consecutive images of one
prompt); process i of P takes the batches with index % P == i, so a sharded run forms the same batches
as a single process and writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image
from tqdm.auto import tqdm

import cxrgen
from cxrgen.config import SamplingConfig
from cxrgen.data.images import save_png
from cxrgen.dicom import read_synthetic_metadata, write_dicom
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.outputs import check_writable, remove_stale_temp_files
from cxrgen.pipeline import DEFAULT_MODEL, CXRPipeline, check_prompts, load_pipeline, model_label, resolve_model

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4
#: Output format -> file suffix.
FORMATS = {"png": ".png", "dicom": ".dcm"}
PROMPT_COLUMN = "prompt"
#: Metadata that must agree for an existing file to count as done when resuming ("filter": "" when unfiltered).
RESUME_KEYS = ("prompt", "seed", "sampler", "steps", "guidance_scale", "negative_prompt", "model", "filter")
SLOT_SEED_KEY = "filter_slot_seed"  # a filtered file's seed + g (its "seed" is that of the accepted draw)
FILTER_SUMMARY_NAME = "filter_summary.json"
__all__ = ["DEFAULT_MODEL", "GeneratedFiles", "SampleFilter", "generate_images", "resolve_model", "run_generate"]


class SampleFilter(Protocol):
    """Accepts or rejects sampled images of a prompt (evaluate.quality_filter.PromptConsistencyFilter is one)."""

    name: str  # recorded in each file's metadata (and compared when resuming)

    def judge(self, prompt: str, images: torch.Tensor) -> torch.Tensor:
        """Contradiction score (B,) of images (B, 1, H, W) for ``prompt``: accepted when <= 0, lower is better."""


class GeneratedFiles(list):
    """The files of a run (a list of paths) with ``filter_summary``: the quality filter's counts, or None."""

    filter_summary: dict | None = None


@dataclass(frozen=True)
class Batch:
    """Images ``ks`` of prompt ``prompt_index``, sampled together."""

    prompt_index: int
    ks: tuple[int, ...]


def read_text_table(path: Path) -> pd.DataFrame:
    """A UTF-8 CSV as strings, inner blank lines kept as rows (row numbers match the file; trailing ones dropped).

    DataError when the file is not UTF-8.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8 {path.name} > utf8.csv") from None
    filled = (table.apply(lambda col: col.str.strip()) != "").any(axis=1).to_numpy().nonzero()[0]  # rows with text
    return table.iloc[: filled[-1] + 1 if len(filled) else 0]


def read_prompts(path: str | Path) -> list[str]:
    """The ``prompt`` column of a UTF-8 CSV file, one prompt per row; a blank row is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} does not exist: give a CSV with a '{PROMPT_COLUMN}' column")
    table = read_text_table(path)
    if PROMPT_COLUMN not in table.columns:
        raise MissingColumnsError(f"{path} has no '{PROMPT_COLUMN}' column (columns: {list(table.columns)}); "
                                  f"put one report text per row under a '{PROMPT_COLUMN}' header")
    prompts = table[PROMPT_COLUMN].tolist()
    for i, prompt in enumerate(prompts):
        if not prompt.strip():  # would shift the numbering of every later prompt's files
            raise DataError(f"{path} line {i + 2} (prompt {i}) is blank: remove the line or give its report text")
    return prompts


def check_utf8(prompts: list[str]) -> list[str]:
    """Prompts that are valid text; undecodable bytes (from a shell argument) raise ConfigError."""
    for i, prompt in enumerate(prompts):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"prompt {i} holds bytes that are not UTF-8 text ({prompt!r}): give the report "
                              "text in UTF-8") from None
    return prompts


def output_name(prompt_index: int, k: int, fmt: str) -> str:
    """File name of image ``k`` of prompt ``prompt_index``."""
    return f"{prompt_index:05d}_{k:03d}{FORMATS[fmt]}"


def plan_batches(n_prompts: int, n_per_prompt: int, batch_size: int) -> list[Batch]:
    """All batches of a run in order: consecutive images of one prompt, at most ``batch_size`` each."""
    return [Batch(p, tuple(range(start, min(start + batch_size, n_per_prompt))))
            for p in range(n_prompts) for start in range(0, n_per_prompt, batch_size)]


def image_metadata(prompt: str, seed: int, settings: SamplingConfig, model_name: str,
                   filter_name: str = "") -> dict[str, str]:
    """What is recorded in each file: prompt, seed, sampler, steps, guidance_scale, model, synthetic: true."""
    meta = {"prompt": prompt, "seed": str(seed), "sampler": settings.sampler, "steps": str(settings.steps),
            "guidance_scale": str(settings.guidance_scale), "negative_prompt": settings.negative_prompt or "",
            "model": model_name, "synthetic": "true", "software": f"cxrgen {cxrgen.__version__}"}
    return {**meta, "filter": filter_name, SLOT_SEED_KEY: str(seed)} if filter_name else meta


def retry_seed(seed: int, attempt: int) -> int:
    """Seed of draw ``attempt`` of an image whose own seed is ``seed``: itself first, then derived (SeedSequence)."""
    return seed if attempt == 0 else int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _read_metadata(path: Path, fmt: str) -> dict[str, Any]:
    if fmt == "dicom":
        return read_synthetic_metadata(path)
    with Image.open(path) as im:
        return dict(im.text)


def _readable(path: Path, fmt: str) -> bool:
    """Whether an existing output decodes whole (a run killed mid-write outside cxrgen may leave a stub)."""
    try:
        if fmt == "dicom":
            ds = pydicom.dcmread(path)
            return len(ds.PixelData) >= int(ds.Rows) * int(ds.Columns) * 2
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError, AttributeError, pydicom.errors.InvalidDicomError):
        return False


def _check_existing(path: Path, fmt: str, expected: dict[str, str]) -> None:
    """An existing output must record the same settings, else resuming would mix two runs."""
    found = _read_metadata(path, fmt)
    if SLOT_SEED_KEY in found:  # a filtered draw: compare the image's slot, not the seed of its accepted draw
        found = {**found, "seed": found[SLOT_SEED_KEY]}
    differ = [k for k in RESUME_KEYS if str(found.get(k, "")) != expected.get(k, "")]
    if differ:
        raise ConfigError(f"{path} exists but was made with other {differ} "
                          f"({ {k: found.get(k) for k in differ} }): use a new --out directory or delete it")


def _write(image: torch.Tensor, path: Path, fmt: str, pipe: CXRPipeline, meta: dict[str, str]) -> None:
    """Write one image atomically (temp file + rename), so a killed run leaves no half file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "dicom":
            write_dicom(image, tmp, pipe.image_config, meta)
        else:
            save_png(image, tmp, pipe.image_config, text=meta)
        os.replace(tmp, path)
    finally:  # an error or Ctrl-C mid-write leaves no temp file (a SIGKILL's is removed by the next run)
        tmp.unlink(missing_ok=True)


def _process_state():
    """accelerate's per-process state (rank, world size, device); CPU processes join as gloo without CUDA."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _shard(process_index: int | None, num_processes: int | None) -> tuple[int, int]:
    if process_index is None or num_processes is None:
        state = _process_state()
        process_index = state.process_index if process_index is None else process_index
        num_processes = state.num_processes if num_processes is None else num_processes
    if not 0 <= process_index < num_processes:
        raise ConfigError(f"process_index={process_index} must be in [0, num_processes={num_processes})")
    return process_index, num_processes


def generate_images(
    pipe: CXRPipeline,
    prompts: list[str],
    out_dir: str | Path,
    n_per_prompt: int | None = None,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    fmt: str = "png",
    model_name: str = "cxrgen",
    batch_size: int = DEFAULT_BATCH_SIZE,
    process_index: int | None = None,
    num_processes: int | None = None,
    progress: bool = True,
    sample_filter: SampleFilter | None = None,
    max_tries: int = 4,
) -> GeneratedFiles:
    """Sample ``n_per_prompt`` images per prompt into ``out_dir``; returns this process's files.

    Unset ``n_per_prompt``/``sampling``/``seed`` come from ``pipe.sampling``; files that exist (with the
    same recorded settings) are skipped; ``process_index``/``num_processes`` default to accelerate's.
    With ``sample_filter``, a rejected image is drawn again from ``retry_seed`` up to ``max_tries`` draws.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}: use one of {list(FORMATS)}")
    if batch_size < 1 or max_tries < 1:
        raise ConfigError(f"batch_size={batch_size}, max_tries={max_tries}: give positive numbers")
    settings = sampling or pipe.sampling
    n_per_prompt = settings.num_images_per_prompt if n_per_prompt is None else n_per_prompt
    seed = settings.seed if seed is None else seed
    settings = dataclasses.replace(settings, num_images_per_prompt=n_per_prompt, seed=seed)  # checks n >= 1
    prompts = check_prompts(prompts)
    out_dir = check_writable(out_dir)  # before any sampling
    remove_stale_temp_files(out_dir)  # of a killed run
    rank, world = _shard(process_index, num_processes)
    mine = [b for i, b in enumerate(plan_batches(len(prompts), n_per_prompt, batch_size)) if i % world == rank]

    todo: list[tuple[Batch, list[Path], list[dict[str, str]]]] = []
    paths: list[Path] = []
    for batch in mine:
        batch_paths = [out_dir / output_name(batch.prompt_index, k, fmt) for k in batch.ks]
        metas = [image_metadata(prompts[batch.prompt_index], seed + batch.prompt_index * n_per_prompt + k,
                                settings, model_name, sample_filter.name if sample_filter else "")
                 for k in batch.ks]  # seed + global image index
        for path, meta in zip(batch_paths, metas, strict=True):
            if path.exists() and not _readable(path, fmt):
                log.warning("%s is empty or truncated (cut short outside cxrgen?): sampling it again", path)
                path.unlink()
            if path.exists():
                _check_existing(path, fmt, meta)
        paths += batch_paths
        if not all(p.exists() for p in batch_paths):
            todo.append((batch, batch_paths, metas))
    n_todo = sum(len(b.ks) for b, _, _ in todo)
    log.info("process %d/%d: %d images to sample, %d already in %s", rank, world, n_todo, len(paths) - n_todo,
             out_dir)

    with tqdm(total=n_todo, desc="generating", unit="img", disable=not progress) as bar:
        for batch, batch_paths, metas in todo:
            if sample_filter is None:
                _sample_batch(pipe, prompts[batch.prompt_index], settings, batch_paths, metas, fmt)
            else:
                _sample_filtered(pipe, prompts[batch.prompt_index], settings, batch_paths, metas, fmt,
                                 sample_filter, max_tries)
            bar.update(len(batch.ks))
    files = GeneratedFiles(paths)
    if sample_filter is not None:
        files.filter_summary = _filter_summary(paths, fmt, out_dir, rank, world)
    return files


def _sample_batch(pipe: CXRPipeline, prompt: str, settings: SamplingConfig, paths: list[Path],
                  metas: list[dict[str, str]], fmt: str) -> None:
    """Sample one batch of a prompt, each image from its own seed, and write the missing files."""
    generators = [torch.Generator().manual_seed(int(m["seed"])) for m in metas]
    batch_settings = dataclasses.replace(settings, num_images_per_prompt=len(paths))
    out = pipe.sample([prompt], batch_settings, generators, progress=False)
    for image, path, meta in zip(out.images, paths, metas, strict=True):
        if not path.exists():  # a batch cut short by a kill is re-sampled whole: same bytes
            _write(image, path, fmt, pipe, meta)


def _sample_filtered(pipe: CXRPipeline, prompt: str, settings: SamplingConfig, paths: list[Path],
                     metas: list[dict[str, str]], fmt: str, sample_filter: SampleFilter, max_tries: int) -> None:
    """Sample, judge, and draw the rejected images again (retry_seed) until accepted or ``max_tries`` draws.

    An image no draw passes keeps its least contradicting draw, marked ``filter_accepted: false``.
    """
    best: list[tuple[float, torch.Tensor, int] | None] = [None] * len(paths)
    tries = [0] * len(paths)
    pending = [i for i, p in enumerate(paths) if not p.exists()]
    for attempt in range(max_tries):
        if not pending:
            break
        seeds = [retry_seed(int(metas[i]["seed"]), attempt) for i in pending]
        out = pipe.sample([prompt], dataclasses.replace(settings, num_images_per_prompt=len(pending)),
                          [torch.Generator().manual_seed(s) for s in seeds], progress=False)
        scores = sample_filter.judge(prompt, out.images).tolist()  # (B,): accepted when <= 0
        for i, image, score, used in zip(pending, out.images, scores, seeds, strict=True):
            tries[i] += 1
            if best[i] is None or score < best[i][0]:
                best[i] = (score, image, used)
        pending = [i for i in pending if best[i][0] > 0]
    for i, path in enumerate(paths):
        if best[i] is None or path.exists():
            continue
        score, image, used = best[i]
        meta = {**metas[i], "seed": str(used), "filter_tries": str(tries[i]),
                "filter_accepted": "true" if score <= 0 else "false", "filter_score": f"{score:.4f}"}
        _write(image, path, fmt, pipe, meta)


def _filter_summary(paths: list[Path], fmt: str, out_dir: Path, rank: int, world: int) -> dict:
    """Acceptance counts read back from the files' metadata (so a resumed run counts every image), logged + saved."""
    metas = [_read_metadata(p, fmt) for p in paths if p.exists()]
    draws = sum(int(m.get("filter_tries", 0)) for m in metas)
    accepted = sum(m.get("filter_accepted") == "true" for m in metas)
    summary = {"filter": metas[0].get("filter", "") if metas else "", "images": len(metas), "draws": draws,
               "accepted": accepted, "not_accepted": len(metas) - accepted,
               "acceptance_rate": accepted / draws if draws else None}
    name = FILTER_SUMMARY_NAME if world == 1 else f"filter_summary_{rank}.json"
    (out_dir / name).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("quality filter: %d of %d draws accepted (acceptance rate %s); %d image(s) kept without passing",
             accepted, draws, f"{summary['acceptance_rate']:.3f}" if draws else "n/a", len(metas) - accepted)
    return summary


def run_generate(
    prompts: list[str] | None,
    out: str | Path,
    model: str | None = None,
    prompts_file: str | Path | None = None,
    n: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    negative_prompt: str | None = None,
    fmt: str = "png",
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool = True,
    sample_filter: SampleFilter | None = None,
    max_tries: int = 4,
) -> GeneratedFiles:
    """``cxrgen generate``: load the model, apply the given settings over its defaults, write the files."""
    if bool(prompts) == (prompts_file is not None):
        raise ConfigError("give report text(s) or --prompts FILE.csv (not both)")
    prompts = list(prompts) if prompts else read_prompts(prompts_file)
    check_prompts(check_utf8(prompts))
    check_writable(out)  # before loading anything big
    if device == "auto":
        device = str(_process_state().device)
    pipe = load_pipeline(model, device, steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                         negative_prompt=negative_prompt)
    return generate_images(pipe, prompts, out, n_per_prompt=n, seed=seed, fmt=fmt, model_name=model_label(model),
                           batch_size=batch_size or DEFAULT_BATCH_SIZE, progress=progress,
                           sample_filter=sample_filter, max_tries=max_tries)
