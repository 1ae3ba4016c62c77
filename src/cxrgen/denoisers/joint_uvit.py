"""JointUViT: one U-ViT over the frontal view, the lateral view and the report, each with its own timestep.

The UniDiffuser recipe (Bao et al., "One Transformer Fits All Distributions in Multi-Modal Diffusion at
Scale", ICML 2023, Sec. 3-4) on cxrgen's U-ViT blocks: the tokens are one timestep token per modality,
the frontal latent's patches, the lateral latent's patches and the report latent's tokens; long skips
as in :mod:`cxrgen.denoisers.uvit`. Training draws each modality's timestep independently, so one network
learns every marginal, conditional and joint: a given modality enters clean at model time 0, an absent
one as pure noise at model time T, and the rest are denoised.

Model time: ``0`` = clean (given), ``s + 1`` = noised to the training scheduler's step ``s``
(``0 <= s < T``), ``T`` = absent (pure noise). ``time_of`` maps scheduler steps to model time.

>>> model = JointUViT(sample_size=8, hidden_size=32, depth=3, num_heads=2)
>>> pred = model({"frontal": zf, "lateral": zl, "report": zr}, {"frontal": 0, "lateral": t, "report": 1000})
>>> pred["lateral"].shape  # (B, C, h, w): the noise predicted in the lateral latent
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from cxrgen.denoisers.base import prepare_timesteps
from cxrgen.denoisers.uvit import UViT, long_skip_blocks, run_long_skips, timestep_embedding, unpatchify
from cxrgen.errors import ConfigError

MODALITIES = ("frontal", "lateral", "report")
IMAGE_MODALITIES = ("frontal", "lateral")
GIVEN_TIME = 0  # model time of a clean, given modality


def check_modalities(names: Sequence[str], allowed: Sequence[str] = MODALITIES) -> tuple[str, ...]:
    """The names in canonical order; ConfigError for an unknown or repeated one."""
    names = tuple(names)
    unknown = [n for n in names if n not in allowed]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"modalities {list(names)}: give distinct names among {list(allowed)}")
    return tuple(m for m in MODALITIES if m in names)


class JointUViT(ModelMixin, ConfigMixin):
    """``model(latents, timesteps) -> predictions``, dicts keyed by modality; one network for every mode.

    latents: frontal / lateral (B, C, h, w) and report (B, L_r, D_r); timesteps: model times (B,) or
    scalars in [0, T]. Every modality the model was built with must be passed (absent ones as noise at T).
    """

    ignore_for_config = ["generator"]

    @register_to_config
    def __init__(
        self,
        modalities: Sequence[str] = MODALITIES,
        in_channels: int = 4,
        sample_size: int = 8,
        report_tokens: int = 4,
        report_dim: int = 64,
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        hidden_size: int = 256,
        depth: int = 9,
        num_heads: int = 4,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.modalities = check_modalities(modalities)
        self._validate()
        self.prediction_type = prediction_type
        dim, patch = hidden_size, patch_size
        self.grid = sample_size // patch
        images = [m for m in self.modalities if m in IMAGE_MODALITIES]
        self.patch_embed = nn.ModuleDict({m: nn.Conv2d(in_channels, dim, patch, stride=patch) for m in images})
        self.decoder_pred = nn.ModuleDict({m: nn.Linear(dim, patch * patch * in_channels) for m in images})
        self.final_layer = nn.ModuleDict({m: nn.Conv2d(in_channels, in_channels, 3, padding=1) for m in images})
        if "report" in self.modalities:
            self.report_embed = nn.Linear(report_dim, dim)
            self.report_out = nn.Linear(dim, report_dim)
        # learned positions of [time_1..time_M, tokens of modality 1, ..., tokens of modality M]
        self.pos_embed = nn.Parameter(torch.zeros(1, len(self.modalities) + sum(self.token_counts().values()), dim))
        self.in_blocks, self.mid_block, self.out_blocks = long_skip_blocks(depth, dim, num_heads, mlp_ratio, qkv_bias)
        self.norm = nn.LayerNorm(dim)
        UViT.reset_parameters(self, generator)  # the U-ViT reference init (truncated normal, zero biases)

    def _validate(self, predictions: tuple[str, ...] = ("epsilon",)) -> None:
        cfg = self.config
        if cfg.prediction_type not in predictions:
            raise ConfigError(f"prediction_type={cfg.prediction_type!r}: this denoiser predicts one of "
                              f"{list(predictions)} (the joint U-ViT the noise of every modality, as UniDiffuser)")
        if cfg.depth < 1 or cfg.depth % 2 == 0:
            raise ConfigError(f"depth={cfg.depth}: give an odd block count (in + mid + out), e.g. 9")
        if cfg.hidden_size % cfg.num_heads:
            raise ConfigError(f"num_heads={cfg.num_heads} does not divide hidden_size={cfg.hidden_size}")
        if cfg.patch_size < 1 or cfg.sample_size % cfg.patch_size:
            raise ConfigError(f"patch_size={cfg.patch_size} does not divide the latent size {cfg.sample_size}")
        if cfg.report_tokens < 1 or cfg.report_dim < 1 or cfg.num_train_timesteps < 2:
            raise ConfigError("report_tokens, report_dim must be >= 1 and num_train_timesteps >= 2")

    def token_counts(self) -> dict[str, int]:
        """Tokens per modality (timestep tokens not counted), in token order."""
        per_image = (self.config.sample_size // self.config.patch_size) ** 2
        return {m: self.config.report_tokens if m == "report" else per_image for m in self.modalities}

    def latent_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one sample's latent: (C, h, w) for a view, (L_r, D_r) for the report."""
        c = self.config
        if modality not in self.modalities:
            raise ConfigError(f"this joint model has no {modality!r} modality; it has {list(self.modalities)}")
        if modality == "report":
            return (c.report_tokens, c.report_dim)
        return (c.in_channels, c.sample_size, c.sample_size)

    @property
    def absent_time(self) -> int:
        """Model time of an absent modality (pure noise): T."""
        return int(self.config.num_train_timesteps)

    @staticmethod
    def time_of(scheduler_t: torch.Tensor | int) -> torch.Tensor | int:
        """Model time of the training scheduler's step ``s``: ``s + 1`` (0 is kept for clean inputs)."""
        return scheduler_t + 1

    def _check(self, latents: Mapping[str, torch.Tensor]) -> int:
        missing = [m for m in self.modalities if m not in latents]
        if missing:
            raise ConfigError(f"latents lack {missing}: pass every modality of the model ({list(self.modalities)}); "
                              "an absent one as Gaussian noise at model time T")
        batch = latents[self.modalities[0]].shape[0]
        for m in self.modalities:
            want = (batch, *self.latent_shape(m))
            if tuple(latents[m].shape) != want:
                raise ConfigError(f"{m} latent of shape {tuple(latents[m].shape)}: expected {want} "
                                  "(check the image size, channels and the report latent's size)")
        return batch

    def forward(self, latents: Mapping[str, torch.Tensor],
                timesteps: Mapping[str, torch.Tensor | int | float]) -> dict[str, torch.Tensor]:
        """Predict the noise of every modality from the noisy latents and their model times."""
        cfg = self.config
        b = self._check(latents)
        device = latents[self.modalities[0]].device
        dtype = self.pos_embed.dtype
        times, tokens = [], []
        for m in self.modalities:
            t = prepare_timesteps(timesteps[m], b, device)  # (B,)
            times.append(timestep_embedding(t, cfg.hidden_size).to(dtype)[:, None])  # (B, 1, D)
            if m == "report":
                tokens.append(self.report_embed(latents[m].to(dtype)))  # (B, L_r, D)
            else:
                tokens.append(self.patch_embed[m](latents[m].to(dtype)).flatten(2).transpose(1, 2))  # (B, N, D)
        x = torch.cat(times + tokens, dim=1) + self.pos_embed  # (B, M + sum(N_m), D)

        x = run_long_skips(self, x, None)  # (B, M + sum(N_m), D)
        x = self.norm(x)
        return self._split(x[:, len(self.modalities):])

    def _split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-modality predictions from the non-time tokens (B, sum(N_m), D)."""
        cfg, out, start = self.config, {}, 0
        for m, n in self.token_counts().items():
            part = x[:, start:start + n]  # (B, N_m, D)
            start += n
            if m == "report":
                out[m] = self.report_out(part)  # (B, L_r, D_r)
            else:
                patches = self.decoder_pred[m](part)  # (B, N, p*p*C)
                out[m] = self.final_layer[m](unpatchify(patches, cfg.in_channels, cfg.patch_size, self.grid))
        return out
