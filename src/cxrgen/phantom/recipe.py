"""A small pixel-space model trained on phantoms in minutes on CPU: the end-to-end test's and docs/phantom.md's recipe.

``train_phantom_model`` composes named steps: :func:`phantom_training_set` (write a phantom set with
``write_phantom_set`` and hold it in memory with the frozen MiniLM text features computed once up
front, or with a BPE tokenizer learned on the reports for a scratch encoder trained jointly), then
:func:`phantom_train_config` (identity codec, a U-ViT on 4x4 pixel patches) and train. A training
set can be shared by runs of one recipe (the end-to-end test's clean and flipped fine-tunes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrgen.config import ImageConfig, PhantomConfig, TextEncoderConfig, TrainConfig, from_dict
from cxrgen.data.images import load_image
from cxrgen.errors import ConfigError, DataError
from cxrgen.phantom.dataset import MANIFEST_NAME, write_phantom_set
from cxrgen.phantom.findings import FINDINGS, PhantomFindings
from cxrgen.phantom.reports import report_for
from cxrgen.text import build_text_encoder, train_tokenizer

log = logging.getLogger(__name__)

DATA_DIR = "data"
TOKENIZER_DIR = "tokenizer"
RUN_DIR = "run"
TEXT_BATCH = 256  # prompts encoded at a time when precomputing frozen text features


@dataclass(frozen=True)
class PhantomRecipe:
    """Sizes of the small phantom model and its training run (defaults: ~5 minutes on 2 CPU cores).

    The defaults are the end-to-end test's recipe (docs/phantom.md): a
    3-block, 128-wide U-ViT with fixed sine-cosine patch positions on 3,000 phantoms (canonical
    anatomy, at most 2 findings each), 4 reports per image, frozen MiniLM read one mean-pooled
    vector per sentence, 2,400 steps of 16.
    """

    n_images: int = 3000
    image_size: int = 32
    anatomy_jitter: float = 0.0  # PhantomConfig.anatomy_jitter of the training set (less nuisance variation)
    max_findings: int | None = 2  # PhantomConfig.max_findings of the training set (None: no limit)
    findings: tuple[str, ...] = FINDINGS  # kinds of finding the training set draws (the others never occur)
    prompts_per_image: int = 4  # reports drawn per image (training wordings); each step picks one at random
    text_backend: str = "minilm"  # minilm (frozen, real weights) | scratch (trained jointly)
    vocab_size: int = 600
    max_length: int = 48  # tokens per report (phantom reports are short)
    text_pooling: str = "sentences"  # TextEncoderConfig.pooling: a context vector per sentence | token | both
    max_sentences: int = 8  # sentences per report with text_pooling=sentences (phantom reports have <= 6)
    text_width: int = 64
    text_depth: int = 2
    denoiser: str = "uvit-mini"
    hidden_size: int = 128
    depth: int = 3  # U-ViT blocks in all (odd: in + mid + out)
    patch_size: int = 4
    pos_embed: str = "sincos"  # U-ViT patch positions: learned | sincos (fixed 2-D sine-cosine)
    prediction_type: str = "sample"
    steps: int = 2400
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 50
    ema_decay: float = 0.99
    cfg_dropout: float = 0.1
    sampler: str = "ddim"
    sampling_steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0
    pretrained: str | None = None  # start the denoiser from a saved phantom model (CXRPipeline folder)


class PhantomImages(Dataset):
    """A phantom set (``phantoms.csv`` + PNGs) in memory: item i is {"image" (1, H, W), "prompt", "index"}.

    ``prompts_per_image`` K > 1 draws K - 1 more reports per image from its ground truth in the
    training wordings (seeded by ``seed`` and the row), and each item picks one of the K at random
    (prompt augmentation: the same image under several phrasings). With a frozen ``text_encoder``
    the items also carry its "context" (L, D) and "mask" (L,), computed once here for every report,
    which the trainer then uses instead of encoding every batch.
    """

    def __init__(self, table: str | Path, image_cfg: ImageConfig, text_encoder: Any | None = None,
                 prompts_per_image: int = 1, seed: int = 0, phantom_cfg: PhantomConfig | None = None) -> None:
        table = Path(table)
        if not table.is_file():
            raise DataError(f"no phantom table at {table}: write one with `cxrgen phantom --out DIR`")
        if prompts_per_image < 1:
            raise ConfigError(f"prompts_per_image={prompts_per_image}: give 1 or more")
        rows = pd.read_csv(table)
        self.variants = prompts_per_image
        self.prompts = [str(p) for p in rows["prompt"]]  # the table's report: variant 0
        self.alternatives = [[report_for(PhantomFindings.from_row(row), np.random.default_rng([seed, i, k]),
                                         wording="train", cfg=phantom_cfg) for k in range(1, prompts_per_image)]
                             for i, row in enumerate(rows.to_dict("records"))]  # variants 1 .. K-1 per image
        self.images = torch.stack([load_image(table.parent / p, image_cfg) for p in rows["image_path"]])  # (N, 1, H, W)
        self.context: tuple[torch.Tensor, torch.Tensor] | None = None  # (U, L, D), (U, L): one per distinct report
        if text_encoder is not None:
            flat = self.all_prompts()
            distinct = list(dict.fromkeys(flat))  # template reports repeat: encode each text once
            row = {text: j for j, text in enumerate(distinct)}
            self.context = text_encoder.encode_all(distinct, TEXT_BATCH)
            self.context_row = torch.tensor([row[text] for text in flat]).view(len(self), self.variants)  # (N, K)

    def _variants(self, index: int) -> list[str]:
        return [self.prompts[index], *self.alternatives[index]]

    def all_prompts(self) -> list[str]:
        """Every report of the set, image-major (N * K): the text a tokenizer for it should learn."""
        return [p for i in range(len(self)) for p in self._variants(i)]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = int(torch.randint(self.variants, ())) if self.variants > 1 else 0
        item = {"image": self.images[index], "prompt": self._variants(index)[k], "index": index}
        if self.context is not None:
            j = self.context_row[index, k]
            item.update(context=self.context[0][j], mask=self.context[1][j])
        return item


def phantom_config(recipe: PhantomRecipe) -> PhantomConfig:
    """The PhantomConfig of the recipe's training set: its size, jitter and kinds of finding."""
    unknown = set(recipe.findings) - set(FINDINGS)
    if unknown or not recipe.findings:
        raise ConfigError(f"recipe findings={recipe.findings!r}: give some of {list(FINDINGS)}")
    off = {f"{name}_prob": 0.0 for name in FINDINGS if name not in recipe.findings}
    return PhantomConfig(size=recipe.image_size, anatomy_jitter=recipe.anatomy_jitter,
                         max_findings=recipe.max_findings, **off)


def _text_config(recipe: PhantomRecipe, tokenizer_dir: str | Path | None) -> dict[str, Any]:
    pooling = {"pooling": recipe.text_pooling, "max_sentences": recipe.max_sentences}
    if recipe.text_backend == "scratch":
        return {"backend": "scratch", "name_or_path": str(tokenizer_dir), "trainable": True,
                "max_length": recipe.max_length, "width": recipe.text_width, "depth": recipe.text_depth,
                "heads": 4, "seed": recipe.seed, **pooling}
    return {"backend": recipe.text_backend, "trainable": False, "max_length": recipe.max_length, **pooling}


def phantom_train_config(recipe: PhantomRecipe, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
                         context_dim: int | None = None) -> TrainConfig:
    """The TrainConfig of ``recipe``: pixel space (identity codec), its text encoder, a small U-ViT.

    ``context_dim``: the frozen text encoder's width (None: the scratch encoder's ``text_width``).
    """
    text = _text_config(recipe, tokenizer_dir)
    return from_dict(TrainConfig, {
        "model": {
            "image_size": recipe.image_size,
            "text_encoder": text,
            "autoencoder": {"kind": "identity"},
            "denoiser": {"name": recipe.denoiser, "in_channels": 1, "sample_size": recipe.image_size,
                         "context_dim": context_dim or recipe.text_width, "context_len": TextEncoderConfig(**text).context_length,
                         "prediction_type": recipe.prediction_type, "pretrained": recipe.pretrained,
                         "kwargs": {"hidden_size": recipe.hidden_size, "depth": recipe.depth,
                                    "patch_size": recipe.patch_size, "pos_embed_type": recipe.pos_embed}},
        },
        "schedule": {"beta_schedule": "squaredcos_cap_v2"},  # cosine (Nichol & Dhariwal 2021): suits small images
        "image": {"size": recipe.image_size},
        "steps": recipe.steps, "batch_size": recipe.batch_size, "lr": recipe.lr,
        "warmup_steps": recipe.warmup_steps, "lr_schedule": "cosine", "ema_decay": recipe.ema_decay,
        "cfg_dropout": recipe.cfg_dropout, "seed": recipe.seed, "out_dir": str(out_dir),
        "checkpoint_every": recipe.steps, "log_every": 50, "progress": False,
        "sampling": {"sampler": recipe.sampler, "steps": recipe.sampling_steps,
                     "guidance_scale": recipe.guidance_scale},
    })  # fmt: skip


#: PhantomRecipe fields that decide the training set (images, reports, text features); the others
#: only change the model or its training, so runs that differ there can share one training set.
DATA_FIELDS = ("n_images", "image_size", "anatomy_jitter", "max_findings", "findings", "prompts_per_image",
               "text_backend", "vocab_size", "max_length", "text_pooling", "max_sentences", "seed")


@dataclass(frozen=True)
class PhantomTrainingSet:
    """A recipe's phantom training set in memory, with what its TrainConfig needs to read it."""

    data: PhantomImages
    recipe: PhantomRecipe  # the recipe it was made for (its DATA_FIELDS must match a run's)
    tokenizer_dir: Path | None = None  # scratch backend: the BPE tokenizer learned on the reports
    context_dim: int | None = None  # frozen backend: the encoder's width (features precomputed in data)


def phantom_training_set(out_dir: str | Path, recipe: PhantomRecipe | None = None) -> PhantomTrainingSet:
    """Render the recipe's phantoms into ``out_dir/data`` (kept if already there) and load them with their
    reports: frozen text features computed once, or a tokenizer learned for the scratch encoder."""
    recipe = recipe or PhantomRecipe()
    out_dir = Path(out_dir)
    table = out_dir / DATA_DIR / MANIFEST_NAME
    phantom_cfg = phantom_config(recipe)
    if not table.is_file():
        write_phantom_set(recipe.n_images, recipe.image_size, out_dir / DATA_DIR, seed=recipe.seed,
                          cfg=phantom_cfg, progress=False)
    image_cfg = ImageConfig(size=recipe.image_size)
    variants = {"prompts_per_image": recipe.prompts_per_image, "seed": recipe.seed, "phantom_cfg": phantom_cfg}
    if recipe.text_backend == "scratch":
        images = PhantomImages(table, image_cfg, **variants)
        train_tokenizer(images.all_prompts(), recipe.vocab_size, out_dir / TOKENIZER_DIR)
        return PhantomTrainingSet(images, recipe, tokenizer_dir=out_dir / TOKENIZER_DIR)
    text = build_text_encoder(TextEncoderConfig(**_text_config(recipe, None))).eval()  # frozen: encode once
    return PhantomTrainingSet(PhantomImages(table, image_cfg, text_encoder=text, **variants), recipe,
                              context_dim=text.hidden_size)


def train_phantom_model(out_dir: str | Path, recipe: PhantomRecipe | None = None,
                        wrap_dataset: Callable[[Dataset], Dataset] | None = None,
                        training_set: PhantomTrainingSet | None = None) -> dict[str, Any]:
    """Phantoms -> text features or tokenizer -> config -> trained CXRPipeline at ``out_dir/run/model``.

    Returns train()'s summary. ``training_set`` reuses one made by :func:`phantom_training_set` for a
    recipe with the same DATA_FIELDS (else it is made here, under ``out_dir``); ``wrap_dataset`` lets a
    caller transform the training items (the tests use it to simulate a bug).
    """
    from cxrgen.train.trainer import train

    recipe = recipe or PhantomRecipe()
    if recipe.pretrained is not None and recipe.text_backend == "scratch":
        raise ConfigError("recipe.pretrained starts the denoiser only, so it needs a frozen text encoder "
                          "(text_backend=minilm); the scratch encoder's trained weights would be lost")
    if training_set is None:
        training_set = phantom_training_set(out_dir, recipe)
    differ = [k for k in DATA_FIELDS if getattr(training_set.recipe, k) != getattr(recipe, k)]
    if differ:
        raise ConfigError(f"the training set was made for another recipe (fields {differ} differ); "
                          "make one for this recipe with phantom_training_set")
    cfg = phantom_train_config(recipe, Path(out_dir) / RUN_DIR, tokenizer_dir=training_set.tokenizer_dir,
                               context_dim=training_set.context_dim)
    data: Dataset = training_set.data if wrap_dataset is None else wrap_dataset(training_set.data)
    log.info("training a phantom model: %d images, %d steps -> %s", len(data), recipe.steps, cfg.out_dir)
    return train(cfg, dataset=data)
