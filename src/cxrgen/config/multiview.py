"""Configs of CoDi XR's multi-view training (``cxrgen train-multiview CONFIG``), one stage per run.

``stage`` picks what is trained: ``report_ae`` (the Optimus-style report autoencoder) or ``aligned``
(frontal, lateral and report encoders in one contrastive space) or ``joint`` (the UniDiffuser-style
joint U-ViT over frontal, lateral and report latents) or ``codi_single`` / ``codi_bridge`` (CoDi XR's
per-modality denoisers, then their cross-modal bridges). Each stage has its own dataclass and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrgen.config.models import TextEncoderConfig
from cxrgen.config.sampling import SamplingConfig
from cxrgen.config.training import ScheduleConfig, check_rates
from cxrgen.errors import ConfigError

#: Targets a CoDi denoiser can be trained to predict (diffusers' ``prediction_type``).
CODI_PREDICTIONS: tuple[str, ...] = ("epsilon", "sample")
#: What of a given report the CoDi image trunks read through the sentence encoder (``codi.report_text``).
CODI_REPORT_TEXTS: tuple[str, ...] = ("full", "impression")
#: Stages this module knows how to configure; ``cxrgen.train.multiview.STAGES`` runs them.
#: The parts of the aligned encoders ``aligned.freeze`` can keep fixed.
ALIGNED_PARTS: tuple[str, ...] = ("frontal", "lateral", "report", "view")
MULTIVIEW_STAGES: tuple[str, ...] = ("report_ae", "aligned", "joint", "codi_single", "codi_bridge")


@dataclass(frozen=True)
class MultiviewDataConfig:
    """Where the (frontal, lateral, report, truth) triplets and the report corpora come from."""

    twin_dirs: tuple[str, ...] = ()  # folders written by `cxrgen twin` (twin.csv + images/)
    adult_root: str | None = None  # the adult set (covid-cxr-256): its same-day frontal + lateral pairs
    report_manifests: tuple[str, ...] = ()  # prepared manifests (IU, adult notes): extra report text
    image_size: int = 64  # side of the square images given to the encoders (resized + center-cropped)
    max_report_chars: int = 400  # longer reports (the adult notes) are cut at a sentence end before this

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"data.image_size={self.image_size}: give a side between 16 and 1024 pixels")
        if self.max_report_chars < 20:
            raise ConfigError(f"data.max_report_chars={self.max_report_chars}: give at least 20")


@dataclass(frozen=True)
class ReportAEStageConfig:
    """The report autoencoder: its size (saved in the model's config.json) and its training."""

    tokenizer: str | None = None  # a `cxrgen tokenizer` folder; None: learn one on the training reports
    init_from: str | None = None  # a saved report autoencoder to continue training (its sizes and tokenizer win)
    vocab_size: int = 1024  # when a tokenizer is learned
    max_length: int = 80  # tokens per report, [CLS] and [SEP] included; longer reports are cut
    width: int = 96
    encoder_depth: int = 2
    decoder_depth: int = 2
    heads: int = 4
    latent_tokens: int = 8  # L_r: the latent is (B, L_r, D_r)
    latent_dim: int = 16  # D_r
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-3  # beta of the KL term (per latent element, against N(0, 1))
    word_dropout: float = 0.25  # share of decoder input tokens replaced by [MASK]: makes the decoder read the latent
    bow_weight: float = 0.0  # > 0: add this x the latent's bag-of-words loss (Zhao et al. 2017): the latent must hold the words
    eval_reports: int = 200  # held-out reports decoded for the reconstruction metrics (per corpus)
    beams: int = 1  # 1: greedy decoding in the evaluation
    eval_splits: tuple[str, ...] = ("test",)  # metrics.json eval: CORPUS for test, CORPUS/SPLIT for the others
    warmup_steps: int = 100  # linear lr warm-up, then cosine decay to min_lr_ratio x lr
    min_lr_ratio: float = 0.1
    label_smoothing: float = 0.0  # of the decoder's next-token cross-entropy
    encoder_word_dropout: float = 0.0  # share of encoder input tokens replaced by [MASK] (robust to unseen words)
    length_groups: int = 0  # > 1: batches drawn this many at a time and grouped by length (less padding, faster)
    no_repeat_ngram: int = 0  # > 0: decoding never repeats an n-gram within a section (saved in the model's config)
    rerank: bool = False  # with beams > 1: decode to the beam whose re-encoded latent is nearest (saved in the config)
    pool_depth: int = 0  # > 0: the latent queries pass this many Q-former layers (self-attn, cross-attn, MLP); 0: one cross-attn
    word_dropout_final: float | None = None  # set: word_dropout falls linearly to this over the last third of the steps
    eval_truth: bool = False  # twin corpora: also score the reconstructions against the cases' truth (metrics.json vs_truth)

    def __post_init__(self) -> None:
        if min(self.width, self.encoder_depth, self.decoder_depth, self.heads, self.latent_tokens,
               self.latent_dim, self.steps, self.batch_size, self.beams) <= 0:
            raise ConfigError("report_ae sizes, steps, batch_size and beams must be positive")
        if self.width % self.heads:
            raise ConfigError(f"report_ae.width={self.width} must be divisible by report_ae.heads={self.heads}")
        if not (0.0 <= self.word_dropout < 1.0 and 0.0 <= self.dropout < 1.0 and self.kl_weight >= 0.0):
            raise ConfigError("report_ae.word_dropout and dropout must be in [0, 1), kl_weight >= 0")
        if not (0.0 <= self.encoder_word_dropout < 1.0 and 0.0 <= self.label_smoothing < 1.0
                and 0.0 <= self.min_lr_ratio <= 1.0 and self.warmup_steps >= 0 and self.no_repeat_ngram >= 0
                and self.pool_depth >= 0 and (self.word_dropout_final is None or 0.0 <= self.word_dropout_final < 1.0)):
            raise ConfigError("report_ae.encoder_word_dropout and label_smoothing must be in [0, 1), min_lr_ratio "
                              "in [0, 1], warmup_steps, no_repeat_ngram and pool_depth >= 0, word_dropout_final "
                              "None or in [0, 1)")


@dataclass(frozen=True)
class AlignedStageConfig:
    """The aligned encoders (CLIP-style symmetric InfoNCE) and the view check: sizes and training."""

    tokenizer: str | None = None  # None: learn one on the training reports (or reuse report_ae's out dir)
    vocab_size: int = 1024
    max_length: int = 80
    embed_dim: int = 128  # the shared space
    image_width: int = 16  # channels of the first conv stage (doubled at each of the 4 stages)
    text_width: int = 96
    text_depth: int = 2
    heads: int = 4
    temperature: float = 0.07  # initial tau of logits = z_a @ z_b.T / tau (learned, as in CLIP)
    view_weight: float = 0.5  # weight of the view-check loss (frontal vs lateral)
    # weight of the report-label loss: each image tower also predicts, by a linear head used in training only, the
    # labeler's observations of its report with their sides (cxrgen.multiview.report_labels); 0: off
    label_weight: float = 0.0
    # weight of the nodule-site loss: the frontal tower's last feature map (S/16 x S/16 cells, the grid CoDi's view
    # prompts read) learns which cells hold a nodule from the twin's recorded sites (cxrgen.multiview.sites), by a
    # 1 x 1 convolution used in training only; studies without site truth are skipped; 0: off
    site_weight: float = 0.0
    # start from these trained aligned encoders (folder of AlignedModel.save_pretrained; their sizes and tokenizer
    # are kept and the size fields above are ignored); None: new encoders
    init_from: str | None = None
    # parts kept as they are (of ALIGNED_PARTS): e.g. [lateral, report, view] tunes the frontal tower alone, in
    # the space the others already define
    freeze: tuple[str, ...] = ()
    steps: int = 600
    batch_size: int = 48
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if min(self.embed_dim, self.image_width, self.text_width, self.text_depth, self.heads,
               self.steps, self.batch_size) <= 0:
            raise ConfigError("aligned sizes, steps and batch_size must be positive")
        if self.text_width % self.heads:
            raise ConfigError(f"aligned.text_width={self.text_width} must be divisible by aligned.heads")
        if self.batch_size < 2:
            raise ConfigError("aligned.batch_size must be at least 2: InfoNCE needs negatives in the batch")
        if not 0.0 < self.temperature < 1.0:
            raise ConfigError(f"aligned.temperature={self.temperature}: give a value in (0, 1)")
        if self.label_weight < 0 or self.view_weight < 0 or self.site_weight < 0:
            raise ConfigError(f"aligned.label_weight={self.label_weight}, aligned.view_weight={self.view_weight} and "
                              f"aligned.site_weight={self.site_weight} must be >= 0 (0: that loss is off)")
        unknown = sorted(set(self.freeze) - set(ALIGNED_PARTS))
        if unknown or set(self.freeze) >= set(ALIGNED_PARTS):
            raise ConfigError(f"aligned.freeze={list(self.freeze)}: name some (not all) of {list(ALIGNED_PARTS)}")
        if self.freeze and self.init_from is None:
            raise ConfigError("aligned.freeze keeps trained parts as they are: set aligned.init_from to the trained "
                              "aligned encoders")


@dataclass(frozen=True)
class JointStageConfig:
    """The joint U-ViT over frontal, lateral and report latents: parts, per-modality roles, optimiser."""

    denoiser: str = "joint-uvit-xs"  # a cxrgen.denoisers.registry.JOINT_DENOISERS preset
    autoencoder: str | None = None  # image codec folder (None: the packaged default model's; "identity": pixel space)
    model_image_size: int = 128  # views are resized to this side for the codec (64 px twin -> 128: 16x16 latents)
    init_from: str | None = None  # start from a saved joint model (its folder or its denoiser/ folder): fine-tuning
    report_codec: str | None = None  # report codec folder (report AE); None: the hashed stand-in below
    report_tokens: int = 4  # the stand-in's latent (L_r, D_r)
    report_dim: int = 64
    given_prob: float = 0.25  # share of (sample, modality) pairs given clean at model time 0
    absent_prob: float = 0.15  # share held at pure noise, model time T (the marginal that guidance uses)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_train_studies: int | None = None  # use only the first N training studies (encoding costs CPU time)
    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.03
    warmup_steps: int = 100
    ema_decay: float = 0.999  # None-like 0 switches EMA off
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(sampler="ddim", steps=25,
                                                                            guidance_scale=1.5))
    log_every: int = 100

    def __post_init__(self) -> None:
        check_rates(**{"joint.lr": self.lr})
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            raise ConfigError("joint.steps and joint.batch_size must be >= 1, joint.warmup_steps >= 0")
        if not (0 <= self.given_prob and 0 <= self.absent_prob and self.given_prob + self.absent_prob < 1):
            raise ConfigError(f"joint.given_prob={self.given_prob}, joint.absent_prob={self.absent_prob}: "
                              "give shares >= 0 summing below 1 (something must be noised)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"joint.ema_decay={self.ema_decay}: give a value in [0, 1) (0: no EMA)")


@dataclass(frozen=True)
class CodiStageConfig(JointStageConfig):
    """CoDi XR's three-model arm (``cxrgen.denoisers.codi``): the joint stage's fields, plus its two stages'.

    ``codi_single`` trains the per-modality denoisers (image ones on the report, dropped with
    ``cond_drop_prob`` for guidance); ``codi_bridge`` starts from that model (``init_from``) and trains the
    environment encoders and bridges with ``given_prob`` / ``absent_prob`` roles, the per-modality
    denoisers frozen (``trunk_lr_scale: 0``) or lightly tuned (their lr = lr x trunk_lr_scale).
    """

    denoiser: str = "codi-xs"  # a cxrgen.denoisers.codi.CODI_DENOISERS preset
    cond_drop_prob: float = 0.1  # stage codi_single: share of image samples trained with the null report
    trunk_lr_scale: float = 0.0  # stage codi_bridge: 0 freezes the per-modality denoisers (> 0 allows no init_from)
    prediction_type: str = "epsilon"  # what the denoisers predict: epsilon (noise) | sample (x0)
    lr_schedule: str = "constant"  # after the linear warm-up: constant | cosine (to 0 at `steps`)
    # clip each per-modality denoiser's gradient (and the bridges') to norm 1 on its own, as `cxrgen train` clips
    # its one U-ViT; off: one norm over all of them, so a large report-trunk gradient shrinks the frontal's step
    clip_per_trunk: bool = False
    # How the image denoisers read a given report: "latent" (the report codec's latent tokens) or "text"
    # (the frozen sentence encoder `text`, one vector per sentence, as CoDi's prompt encoders)
    report_condition: str = "latent"
    # CoDi's prompt encoders for the views: 0 = off; g > 0 = each given view reaches the other trunks as g x g
    # tokens of a small CNN (the lateral trunk reads the frontal, the frontal the lateral, the report both)
    view_prompt_grid: int = 0
    view_given_prob: float = 0.5  # stage codi_single with view prompts: share of samples each other view is given
    # the same for the frontal trunk alone (None: view_given_prob): lower, the frontal trunk learns more of its
    # samples from the report alone (the lateral, when given, tells it the findings too)
    frontal_view_given_prob: float | None = None
    # the view prompt encoders: "cnn" (trained from scratch by the diffusion loss) or "aligned": a FROZEN copy of the
    # aligned encoders' tower of that view (`view_prompt_from`: an aligned model folder; pixel space at its image
    # size), its last feature map pooled to view_prompt_grid^2 tokens (+ its global embedding with view_prompt_global)
    view_prompt_encoder: str = "cnn"
    view_prompt_from: str | None = None
    view_prompt_global: bool = False
    # report_condition text: what of a report the image trunks read, in training and in CodiPipeline: "full" (the
    # whole report, FINDINGS then IMPRESSION) or "impression" (its IMPRESSION section, the whole text when it has
    # none: what `cxrgen train` reads as the manifest's prompt). The report trunk and codec keep the whole report
    report_text: str = "full"
    text: TextEncoderConfig = field(default_factory=lambda: TextEncoderConfig(
        backend="minilm", pooling="sentences", max_sentences=8, max_length=48))
    # report_condition text: mask padded sentence slots out of the image trunks' attention and make the null
    # report one token, as the single-view U-ViT reads a report (new models only; off keeps older ones)
    context_mask: bool = False
    # report_condition text, stage codi_single: Gaussian noise (std, in units of the sentence vectors' per-feature
    # scale, which is 1) added to each given sentence vector the image trunks read in training: the trunks must
    # read what survives it (paraphrases land close in the sentence space), not one wording's exact vector
    context_noise: float = 0.0
    # stage codi_single: start the frontal trunk from a trained single-view U-ViT (a `cxrgen train` model folder,
    # e.g. twin-pixel64): CoDi XR's stage 1, one LDM per modality trained on its own. That trunk reads the report
    # as the U-ViT (context_mask for it alone unless codi.context_mask); with codi.init_from it replaces the
    # loaded model's frontal trunk (the other trunks are kept)
    frontal_init_from: str | None = None
    freeze_frontal: bool = False  # with frontal_init_from: keep that trunk as trained (only the others learn)

    def view_given_probs(self) -> dict[str, float]:
        """Per trunk, the share of samples each other view is given in stage codi_single with view prompts."""
        frontal = self.view_given_prob if self.frontal_view_given_prob is None else self.frontal_view_given_prob
        return {"frontal": frontal, "lateral": self.view_given_prob, "report": self.view_given_prob}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frontal_init_from is not None and self.report_condition != "text":
            raise ConfigError("codi.frontal_init_from reads the report as the single-view U-ViT does: set "
                              "codi.report_condition: text")
        if self.freeze_frontal and self.frontal_init_from is None:
            raise ConfigError("codi.freeze_frontal keeps a frontal trunk trained elsewhere: set codi.frontal_init_from")
        if self.report_text != "full" and self.report_condition != "text":
            raise ConfigError(f"codi.report_text={self.report_text!r} chooses what the image trunks read through the "
                              "sentence encoder: set codi.report_condition: text (or codi.report_text: full)")
        if self.context_mask and self.report_condition != "text":
            raise ConfigError("codi.context_mask masks padded sentence vectors: it needs codi.report_condition: text")
        if self.context_noise < 0 or (self.context_noise > 0 and self.report_condition != "text"):
            raise ConfigError(f"codi.context_noise={self.context_noise}: give a std >= 0; noise on the sentence "
                              "vectors needs codi.report_condition: text")
        if not 0 <= self.cond_drop_prob < 1 or self.trunk_lr_scale < 0:
            raise ConfigError(f"codi.cond_drop_prob={self.cond_drop_prob} must be in [0, 1) and "
                              f"codi.trunk_lr_scale={self.trunk_lr_scale} >= 0")
        if self.frontal_view_given_prob is not None and not 0 <= self.frontal_view_given_prob <= 1:
            raise ConfigError(f"codi.frontal_view_given_prob={self.frontal_view_given_prob}: give a share in [0, 1] "
                              "or null (the frontal trunk as the others: codi.view_given_prob)")
        if self.view_prompt_grid < 0 or not 0 <= self.view_given_prob <= 1:
            raise ConfigError(f"codi.view_prompt_grid={self.view_prompt_grid} must be >= 0 (0: no view prompts) and "
                              f"codi.view_given_prob={self.view_given_prob} in [0, 1]")
        if self.view_prompt_encoder not in ("cnn", "aligned"):
            raise ConfigError(f"codi.view_prompt_encoder={self.view_prompt_encoder!r}: use one of ['cnn', 'aligned']")
        aligned = self.view_prompt_encoder == "aligned"
        if aligned and (not self.view_prompt_grid or (self.view_prompt_from is None and self.init_from is None)):
            raise ConfigError("codi.view_prompt_encoder: aligned copies the aligned encoders' towers into the view "
                              "prompts: set codi.view_prompt_grid > 0 (e.g. 4) and codi.view_prompt_from to the aligned "
                              "model folder (stage aligned's OUT/aligned)")
        if not aligned and (self.view_prompt_from is not None or self.view_prompt_global):
            raise ConfigError("codi.view_prompt_from / codi.view_prompt_global are for aligned view prompts: set "
                              "codi.view_prompt_encoder: aligned")
        for name, value, valid in (("prediction_type", self.prediction_type, CODI_PREDICTIONS),
                                   ("lr_schedule", self.lr_schedule, ("constant", "cosine")),
                                   ("report_condition", self.report_condition, ("latent", "text")),
                                   ("report_text", self.report_text, CODI_REPORT_TEXTS)):
            if value not in valid:
                raise ConfigError(f"codi.{name}={value!r}: use one of {list(valid)}")
        if self.report_condition == "text" and (self.text.pooling != "sentences" or self.text.trainable):
            raise ConfigError("codi.report_condition=text reads a frozen sentence encoder: set codi.text.pooling to "
                              "'sentences' and codi.text.trainable to false")


@dataclass(frozen=True)
class MultiviewTrainConfig:
    """One `cxrgen train-multiview` run: which stage, on which data, written where."""

    stage: str = "report_ae"  # report_ae | aligned | joint | codi_single | codi_bridge
    data: MultiviewDataConfig = field(default_factory=MultiviewDataConfig)
    report_ae: ReportAEStageConfig = field(default_factory=ReportAEStageConfig)
    aligned: AlignedStageConfig = field(default_factory=AlignedStageConfig)
    joint: JointStageConfig = field(default_factory=JointStageConfig)
    codi: CodiStageConfig = field(default_factory=CodiStageConfig)
    out_dir: str = "out/multiview"
    seed: int = 0
    threads: int = 1  # torch CPU threads while training
    max_minutes: float = 0.0  # > 0: stop the training loop after this wall-clock time (shared machines); 0: no limit
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in MULTIVIEW_STAGES:
            raise ConfigError(f"stage={self.stage!r}: use one of {list(MULTIVIEW_STAGES)}")
        if self.threads < 1:
            raise ConfigError(f"threads={self.threads}: give at least 1")
