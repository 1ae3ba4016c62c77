"""CodiXR: one latent diffusion model per modality, bridged by environment encoders and cross-attention.

CoDi XR (arXiv 2505.01091) after Composable Diffusion (Tang et al., NeurIPS 2023, Sec. 3.2-3.3):

1. **One denoiser per modality** (``trunks``): a U-ViT trunk each (the project's blocks and long skips,
   :func:`cxrgen.denoisers.uvit.long_skip_blocks`) for the frontal latent, the lateral latent and the
   report latent. The image trunks are conditioned on the report the U-ViT way (the report latent's
   tokens are in the sequence; a learned null report replaces it when it is not given, for
   classifier-free guidance); the report trunk is unconditional. Trained first, each on its own
   (stage ``codi_single``).
2. **Cross-modal bridges** (``env`` and ``bridges``): an environment encoder per modality projects its
   (noisy or clean) latent and its timestep into a shared space of ``env_dim`` (a few tokens), and each
   trunk cross-attends to the other modalities' environment tokens at its input and before its output.
   The bridges' output projections start at zero, so a freshly bridged model is the stage-1 models;
   they are trained in a second stage (``codi_bridge``) with the trunks frozen or lightly tuned.

The interface is :class:`cxrgen.denoisers.joint_uvit.JointUViT`'s (``model(latents, timesteps)`` with
dicts keyed by modality; model time 0 = given, ``s + 1`` = noised at step s, T = absent), so the same
loss, roles and sampler drive both arms. An absent modality's environment tokens are masked out of
the bridges and an absent report is the null report: dropping a condition is exactly the null
condition of classifier-free guidance. ``outputs`` restricts which trunks run (sampling runs only the
generated modalities' trunks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.nn import functional as F

from cxrgen.denoisers.base import prepare_timesteps
from cxrgen.denoisers.joint_uvit import GIVEN_TIME, MODALITIES, JointUViT, check_modalities
from cxrgen.denoisers.uvit import (
    INIT_STD,
    POS_EMBEDS,
    UViT,
    long_skip_blocks,
    run_long_skips,
    sincos_2d,
    timestep_embedding,
    unpatchify,
)
from cxrgen.errors import ConfigError
from cxrgen.multiview.aligned import AlignedEncoders, ImageTower

#: Size presets (kwargs of CodiXR) by name.
CODI_DENOISERS: dict[str, dict] = {
    "codi-tiny": dict(hidden_size=32, depth=3, num_heads=2, patch_size=2, env_dim=16, env_patch=4),  # tests
    "codi-xs": dict(hidden_size=128, depth=7, num_heads=4, patch_size=4, env_dim=64, env_patch=8),  # CPU twin
    # pixel space at 64 px (identity codec), the twin-pixel64 trunk (uvit-mini, 128 x 3, patch 8: 64 tokens)
    "codi-pixel64": dict(hidden_size=128, depth=3, num_heads=4, patch_size=8, env_dim=64, env_patch=8),
    # the same with the single-view recipe's fixed sin-cos patch positions (uvit-mini pos_embed_type: sincos)
    "codi-pixel64-sincos": dict(hidden_size=128, depth=3, num_heads=4, patch_size=8, env_dim=64, env_patch=8,
                                pos_embed_type="sincos"),
}
BRIDGE_PREFIXES = ("env.", "bridges.", "null_env")
#: Key of the latents dict holding the given report's text-encoder context (B, S, context_dim), when the model
#: has ``context_dim``: the image denoisers read it (the report latent still feeds the report denoiser and bridges).
CONTEXT = "report_context"  # parameter names of stage 2 (the rest: the per-modality LDMs)
#: With ``view_prompt_grid``: which given views each trunk reads through the views' prompt encoders.
PROMPTED_BY: dict[str, tuple[str, ...]] = {"frontal": ("lateral",), "lateral": ("frontal",),
                                           "report": ("frontal", "lateral")}
#: ``view_prompt_encoder``: "cnn", a small CNN trained from scratch by the diffusion loss; "aligned", a frozen copy of
#: the aligned encoders' tower of that view (CoDi's prompt encoders are its aligned CLIP-style encoders)
VIEW_PROMPT_ENCODERS = ("cnn", "aligned")
#: The frozen part of an aligned view prompt encoder (parameter names contain it): never trained, never clipped.
FROZEN_TOWER = ".tower."


class _Trunk(nn.Module):
    """One modality's U-ViT: [time, (report context), own tokens] -> blocks with long skips -> own tokens."""

    def __init__(self, modality: str, cfg: Mapping, report_context: bool, n_prompt: int = 0) -> None:
        super().__init__()
        dim, patch, c = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
        self.modality, self.report_context = modality, report_context
        self.grid = cfg["sample_size"] // patch
        if modality == "report":
            self.embed, self.head, n_own = nn.Linear(cfg["report_dim"], dim), nn.Linear(dim, cfg["report_dim"]), \
                cfg["report_tokens"]
        else:
            self.embed, self.head, n_own = nn.Conv2d(c, dim, patch, stride=patch), nn.Linear(dim, patch * patch * c), \
                self.grid ** 2
            self.final_layer = nn.Conv2d(c, c, 3, padding=1)
        # the report as this trunk reads it: the report latent's tokens, or the sentence vectors of a frozen
        # text encoder (``context_dim``: CoDi's prompt encoders); the generated report stays the latent
        self.text_context = report_context and cfg.get("context_dim") is not None
        # context_mask: padded sentence slots (all-zero vectors) are masked out of attention, and the null
        # report is its first token alone, as the single-view U-ViT reads a report and its null prompt ""
        # (True: every image trunk; a list: the trunks of those modalities)
        mask = cfg.get("context_mask", False)
        self.context_mask = self.text_context and (mask is True or (not isinstance(mask, bool) and modality in mask))
        n_ctx = 0 if not report_context else cfg["context_tokens"] if self.text_context else cfg["report_tokens"]
        if report_context:
            self.context_embed = nn.Linear(cfg["context_dim"] if self.text_context else cfg["report_dim"], dim)
            self.null_report = nn.Parameter(torch.zeros(1, n_ctx, dim))  # the "no report" condition (CFG)
        # time token + report context + the given views' prompt tokens (``view_prompt_grid``) before the own tokens
        self.n_ctx, self.n_lead = n_ctx, 1 + n_ctx + n_prompt
        # an image trunk with pos_embed_type=sincos: fixed 2-D sine-cosine patch positions (a buffer, recomputed)
        sincos = cfg.get("pos_embed_type", "learned") == "sincos" and modality != "report"
        self.pos_embed = nn.Parameter(torch.zeros(1, self.n_lead + (0 if sincos else n_own), dim))
        self.register_buffer("patch_pos", sincos_2d(self.grid, dim)[None] if sincos else None, persistent=False)
        self.in_blocks, self.mid_block, self.out_blocks = long_skip_blocks(
            cfg["depth"], dim, cfg["num_heads"], cfg["mlp_ratio"], cfg["qkv_bias"])
        self.norm = nn.LayerNorm(dim)

    def tokens(self, x: torch.Tensor, t: torch.Tensor, report: torch.Tensor | None,
               report_given: torch.Tensor | None, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_lead + N, D): time token, the report (or the null report), view prompts, own latent tokens.

        ``report``: the report latent (B, L_r, D_r), or for a text-context trunk the sentence vectors
        (B, S, context_dim), None when no report text was given (then the null report everywhere).
        """
        dim = self.pos_embed.shape[-1]
        parts = [timestep_embedding(t, dim).to(self.pos_embed.dtype)[:, None]]  # (B, 1, D)
        if self.report_context:
            null = self.null_report.expand(x.shape[0], -1, -1)  # (B, L_ctx, D)
            if report is None:
                parts.append(null)
            else:
                ctx = self.context_embed(report.to(self.pos_embed.dtype))  # (B, L_ctx, D)
                parts.append(torch.where(report_given.view(-1, 1, 1), ctx, null))
        if prompts is not None:
            parts.append(prompts.to(self.pos_embed.dtype))  # (B, n_prompt, D)
        own = self.embed(x.to(self.pos_embed.dtype))
        parts.append(own if self.modality == "report" else own.flatten(2).transpose(1, 2))  # (B, N, D)
        pos = self.pos_embed if self.patch_pos is None else torch.cat([self.pos_embed, self.patch_pos.to(own.dtype)], 1)
        return torch.cat(parts, dim=1) + pos

    def attention_mask(self, report: torch.Tensor | None, report_given: torch.Tensor | None,
                       n_tokens: int, b: int) -> torch.Tensor | None:
        """Key mask (B, 1, 1, n_tokens), True = attended, with ``context_mask``; else None (all attended).

        A given report keeps its real sentences (non-zero vectors); the null report keeps its first token; view
        prompt tokens after the report are always attended (an absent view is its learned null tokens).
        """
        if not self.context_mask:
            return None
        n_ctx = self.n_ctx
        device = self.pos_embed.device
        null = torch.zeros(b, n_ctx, dtype=torch.bool, device=device)
        null[:, 0] = True
        ctx = null if report is None else torch.where(
            report_given.view(-1, 1), report.abs().sum(-1) > 0, null)  # (B, L_ctx)
        keep = torch.ones(b, n_tokens, dtype=torch.bool, device=device)
        keep[:, 1:1 + n_ctx] = ctx
        return keep[:, None, None, :]

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Own tokens (B, N, D) -> the predicted noise in this modality's latent shape."""
        out = self.head(h)
        if self.modality == "report":
            return out  # (B, L_r, D_r)
        c = self.final_layer.in_channels
        return self.final_layer(unpatchify(out, c, self.embed.stride[0], self.grid))  # (B, C, h, w)


class _ViewPrompt(nn.Module):
    """CoDi's prompt encoder for a given view: the clean view (B, C, H, W) -> g x g tokens (B, g^2, D) with
    positions; samples where the view is absent get the learned null tokens (and cost no convolution)."""

    def __init__(self, cfg: Mapping) -> None:
        super().__init__()
        c, dim, g = cfg["in_channels"], cfg["hidden_size"], cfg["view_prompt_grid"]
        w = max(dim // 4, 8)
        self.net = nn.Sequential(nn.Conv2d(c, w, 3, 2, 1), nn.GELU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.GELU(),
                                 nn.Conv2d(2 * w, dim, 3, 2, 1), nn.GELU(), nn.AdaptiveAvgPool2d(g))
        self.proj = nn.Linear(dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g, dim))
        self.null = nn.Parameter(torch.zeros(1, g * g, dim))  # the "view not given" condition (CFG)

    def forward(self, x: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Prompt tokens (B, g^2, D): the view's where ``given`` (B,) is True, the null tokens elsewhere."""
        out = self.null.expand(x.shape[0], -1, -1)
        if not bool(given.any()):
            return out
        z = self.net(x[given].to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # (B_given, g^2, D)
        out = out.clone()
        out[given] = self.proj(z) + self.pos_embed
        return out


class _AlignedViewPrompt(nn.Module):
    """CoDi's prompt encoder as published: the aligned encoders' tower of the view, FROZEN (weights copied in with
    :meth:`CodiXR.copy_aligned_towers`), read as its last feature map pooled to g x g tokens (+ with
    ``view_prompt_global`` its normalised global embedding as one more token), then a trainable LayerNorm + linear
    map to the trunk width, learned positions, and learned null tokens where the view is not given."""

    def __init__(self, cfg: Mapping) -> None:
        super().__init__()
        dim, g = cfg["hidden_size"], cfg["view_prompt_grid"]
        self.grid, self.global_token = g, bool(cfg["view_prompt_global"])
        # the given view is a latent z = (pixels - shift) * scale; the tower reads pixels in [-1, 1]
        self.scale, self.shift = float(cfg["view_prompt_scale"]), float(cfg["view_prompt_shift"])
        self.tower = ImageTower(cfg["view_prompt_width"], cfg["view_prompt_embed_dim"]).requires_grad_(False).eval()
        channels = self.tower.head.in_features  # 8 x width: the last stage's feature map
        self.proj = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, dim))
        self.global_proj = nn.Linear(cfg["view_prompt_embed_dim"], dim) if self.global_token else None
        n = g * g + int(self.global_token)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
        self.null = nn.Parameter(torch.zeros(1, n, dim))  # the "view not given" condition (CFG)

    def train(self, mode: bool = True) -> _AlignedViewPrompt:
        """As nn.Module.train, but the frozen tower stays in eval mode."""
        super().train(mode)
        self.tower.eval()
        return self

    def forward(self, x: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Prompt tokens (B, n, D): the view's where ``given`` (B,) is True, the null tokens elsewhere."""
        out = self.null.expand(x.shape[0], -1, -1)
        if not bool(given.any()):
            return out
        dtype = self.pos_embed.dtype
        with torch.no_grad():  # frozen: no graph through the tower
            pixels = x[given].to(dtype) / self.scale + self.shift  # (B_given, 1, S, S) in [-1, 1]
            fmap = self.tower.body(pixels)  # (B_given, 8w, S/16, S/16)
            tokens = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)  # (B_given, g^2, 8w)
            emb = F.normalize(self.tower.head(fmap.mean(dim=(2, 3))), dim=-1) if self.global_token else None
        z = self.proj(tokens)
        if emb is not None:
            z = torch.cat([z, self.global_proj(emb)[:, None]], dim=1)  # (B_given, g^2 + 1, D)
        out = out.clone()
        out[given] = z + self.pos_embed
        return out


class _Environment(nn.Module):
    """CoDi's environment encoder: a modality's latent at its time -> K tokens (B, K, E) in the shared space."""

    def __init__(self, modality: str, cfg: Mapping) -> None:
        super().__init__()
        e = cfg["env_dim"]
        self.modality = modality
        if modality == "report":
            self.proj = nn.Linear(cfg["report_dim"], e)
        else:
            self.proj = nn.Conv2d(cfg["in_channels"], e, cfg["env_patch"], stride=cfg["env_patch"])
        self.time = nn.Linear(e, e)
        self.mlp = nn.Sequential(nn.LayerNorm(e), nn.Linear(e, 2 * e), nn.GELU(), nn.Linear(2 * e, e))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = self.proj(x.to(self.time.weight.dtype))
        z = z if self.modality == "report" else z.flatten(2).transpose(1, 2)  # (B, K, E)
        z = z + self.time(timestep_embedding(t, z.shape[-1]).to(z.dtype))[:, None]
        return z + self.mlp(z)


class _Bridge(nn.Module):
    """Cross-attention from a trunk's tokens to the others' environment tokens; zero-initialised output."""

    def __init__(self, dim: int, env_dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, kdim=env_dim, vdim=env_dim, batch_first=True)
        self.gate = nn.Linear(dim, dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, h: torch.Tensor, env: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(self.norm(h), env, env, key_padding_mask=pad, need_weights=False)  # (B, N, D)
        return h + self.gate(out)


class CodiXR(ModelMixin, ConfigMixin):
    """``model(latents, timesteps, outputs=None) -> predictions``: three bridged per-modality denoisers.

    Same inputs as :class:`~cxrgen.denoisers.joint_uvit.JointUViT`; ``outputs`` names the modalities whose
    trunks run (default: all). ``bridge=False`` skips the bridges (the stage-1 models alone).
    """

    ignore_for_config = ["generator"]

    @register_to_config
    def __init__(
        self,
        modalities: Sequence[str] = MODALITIES,
        in_channels: int = 4,
        sample_size: int = 16,
        report_tokens: int = 4,
        report_dim: int = 64,
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        hidden_size: int = 128,
        depth: int = 7,
        num_heads: int = 4,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        env_dim: int = 64,
        env_patch: int = 8,
        context_dim: int | None = None,
        context_tokens: int = 8,
        pos_embed_type: str = "learned",
        context_mask: bool | Sequence[str] = False,
        view_prompt_grid: int = 0,
        view_prompt_encoder: str = "cnn",
        view_prompt_width: int = 16,
        view_prompt_embed_dim: int = 128,
        view_prompt_global: bool = False,
        view_prompt_scale: float = 1.0,
        view_prompt_shift: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.modalities = check_modalities(modalities)
        JointUViT._validate(self, ("epsilon", "sample"))  # x0 too: guidance is linear in either output
        if env_patch < 1 or sample_size % env_patch or env_dim % 2:
            raise ConfigError(f"env_patch={env_patch} must divide sample_size={sample_size}; env_dim even")
        if context_dim is not None and (context_dim < 1 or context_tokens < 1):
            raise ConfigError(f"context_dim={context_dim}, context_tokens={context_tokens}: give positive sizes "
                              "(the text encoder's width and its max_sentences), or context_dim=None")
        if pos_embed_type not in POS_EMBEDS or (pos_embed_type == "sincos" and hidden_size % 4):
            raise ConfigError(f"pos_embed_type={pos_embed_type!r}: use one of {list(POS_EMBEDS)} (sincos needs "
                              f"hidden_size divisible by 4, got {hidden_size})")
        if view_prompt_grid < 0 or view_prompt_grid > sample_size:
            raise ConfigError(f"view_prompt_grid={view_prompt_grid}: give 0 (no view prompts) or a grid side of at "
                              f"most sample_size={sample_size} (e.g. 4: 16 prompt tokens per given view)")
        aligned = view_prompt_encoder == "aligned"
        if view_prompt_encoder not in VIEW_PROMPT_ENCODERS or (aligned and not view_prompt_grid):
            raise ConfigError(f"view_prompt_encoder={view_prompt_encoder!r}: use one of {list(VIEW_PROMPT_ENCODERS)} "
                              "('aligned' needs view prompts: view_prompt_grid > 0)")
        if aligned and in_channels != 1:
            raise ConfigError(f"view_prompt_encoder='aligned': the aligned towers read grayscale pixels (B, 1, S, S), "
                              f"but this model's views have {in_channels} channels (a latent-space model); use a "
                              "pixel-space model (autoencoder: identity) or view_prompt_encoder='cnn'")
        if aligned and (view_prompt_grid > sample_size // 16 or view_prompt_scale <= 0):
            raise ConfigError(f"view_prompt_grid={view_prompt_grid}: the aligned tower's last feature map is "
                              f"{sample_size // 16} x {sample_size // 16} at {sample_size} px; give a grid of at most "
                              f"that (and view_prompt_scale > 0, got {view_prompt_scale})")
        cfg = dict(self.config)
        with_report = "report" in self.modalities
        # CoDi's prompt encoders for the views: a given view reaches the other trunks as tokens in their sequence
        self.prompted_by = {m: tuple(v for v in PROMPTED_BY[m] if v in self.modalities) if view_prompt_grid else ()
                            for m in self.modalities}
        prompt_cls = _AlignedViewPrompt if aligned else _ViewPrompt
        self.prompts = nn.ModuleDict({v: prompt_cls(cfg) for v in sorted({v for vs in self.prompted_by.values()
                                                                          for v in vs})})
        per_view = view_prompt_grid ** 2 + int(aligned and view_prompt_global)  # prompt tokens of one given view
        self.trunks = nn.ModuleDict({m: _Trunk(m, cfg, with_report and m != "report",
                                               len(self.prompted_by[m]) * per_view)
                                     for m in self.modalities})
        self.env = nn.ModuleDict({m: _Environment(m, cfg) for m in self.modalities})
        self.null_env = nn.Parameter(torch.zeros(1, 1, env_dim))  # always attendable: no NaN when all are absent
        self.bridges = nn.ModuleDict({f"{m}_{where}": _Bridge(hidden_size, env_dim, num_heads)
                                      for m in self.modalities for where in ("in", "out")})
        self._reset(generator)

    @torch.no_grad()
    def _reset(self, generator: torch.Generator | None) -> None:
        """The U-ViT reference init (truncated normal, zero biases) everywhere; bridge outputs at zero."""
        for trunk in self.trunks.values():
            UViT.reset_parameters(trunk, generator)
        for prompt in self.prompts.values():
            UViT.reset_parameters(prompt, generator)
        for part in (self.env, self.bridges):  # no positions of their own: the null token takes their place
            UViT.reset_parameters(SimpleNamespace(pos_embed=self.null_env, modules=part.modules), generator)
        for name, p in self.bridges.named_parameters():
            if name.endswith("proj_weight"):  # MultiheadAttention's q / k / v projections
                nn.init.trunc_normal_(p, std=INIT_STD, generator=generator)
        for bridge in self.bridges.values():  # the bridges start as the identity: stage 2 begins at stage 1
            nn.init.zeros_(bridge.gate.weight)
            nn.init.zeros_(bridge.gate.bias)

    latent_shape = JointUViT.latent_shape
    absent_time = JointUViT.absent_time
    time_of = staticmethod(JointUViT.time_of)
    _check = JointUViT._check

    def bridge_parameters(self) -> list[nn.Parameter]:
        """The stage-2 parameters: environment encoders, bridges and the null environment token."""
        return [p for n, p in self.named_parameters() if n.startswith(BRIDGE_PREFIXES)]

    def trunk_parameters(self) -> list[nn.Parameter]:
        """The per-modality denoisers' trainable parameters (stage 1; not the frozen aligned towers)."""
        return [p for n, p in self.named_parameters() if not n.startswith(BRIDGE_PREFIXES) and FROZEN_TOWER not in n]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The aligned view prompt towers' parameters (``view_prompt_encoder='aligned'``): never trained."""
        return [p for n, p in self.named_parameters() if FROZEN_TOWER in n]

    @torch.no_grad()
    def copy_aligned_towers(self, encoders: AlignedEncoders) -> None:
        """Copy the aligned encoders' frontal / lateral towers into the frontal / lateral view prompt encoders."""
        cfg, theirs = self.config, encoders.config
        if cfg.view_prompt_encoder != "aligned":
            raise ConfigError("this CoDi model's view prompt encoders are not aligned towers: build it with "
                              "view_prompt_encoder='aligned' (and view_prompt_grid > 0)")
        mine = (cfg.sample_size, cfg.view_prompt_width, cfg.view_prompt_embed_dim)
        if mine != (theirs.image_size, theirs.image_width, theirs.embed_dim):
            raise ConfigError(f"the aligned encoders read {theirs.image_size} px with image_width {theirs.image_width} "
                              f"and embed_dim {theirs.embed_dim}; this CoDi model's views are {cfg.sample_size} px "
                              f"and its towers width {cfg.view_prompt_width}, embed_dim {cfg.view_prompt_embed_dim}: "
                              "train at the aligned model's image size and build the towers with its widths")
        for view, prompt in self.prompts.items():
            prompt.tower.load_state_dict(getattr(encoders, view).state_dict())
            prompt.tower.requires_grad_(False).eval()

    def forward(self, latents: Mapping[str, torch.Tensor], timesteps: Mapping[str, torch.Tensor | int | float],
                outputs: Sequence[str] | None = None, bridge: bool = True) -> dict[str, torch.Tensor]:
        """Predict the noise of the ``outputs`` modalities from every modality's latent and model time."""
        b = self._check(latents)
        device = latents[self.modalities[0]].device
        times = {m: prepare_timesteps(timesteps[m], b, device) for m in self.modalities}  # (B,) each
        outputs = self.modalities if outputs is None else check_modalities(outputs, self.modalities)
        report = latents.get(CONTEXT) if self.config.context_dim is not None else latents.get("report")
        report_given = times["report"] == GIVEN_TIME if "report" in times else None  # (B,)
        env = self._environments(latents, times) if bridge else None
        prompts = self._prompts(latents, times, outputs)
        out = {}
        for m in outputs:
            trunk = self.trunks[m]
            given_views = [prompts[v] for v in self.prompted_by[m]]
            h = trunk.tokens(latents[m], times[m], report, report_given,
                             torch.cat(given_views, 1) if given_views else None)  # (B, n_lead + N, D)
            if env is not None:
                keys, pad = self._others(env, m, b)
                h = self.bridges[f"{m}_in"](h, keys, pad)
            h = run_long_skips(trunk, h, trunk.attention_mask(report, report_given, h.shape[1], b))
            if env is not None:
                h = self.bridges[f"{m}_out"](h, keys, pad)
            out[m] = trunk.output(trunk.norm(h)[:, trunk.n_lead:])
        return out

    def _prompts(self, latents: Mapping[str, torch.Tensor], times: Mapping[str, torch.Tensor],
                 outputs: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prompt tokens (B, g^2, D) of each view read by an ``outputs`` trunk: its encoding where it is given
        (model time 0), the null tokens where it is noised or absent."""
        views = {v for m in outputs for v in self.prompted_by[m]}
        return {v: self.prompts[v](latents[v], times[v] == GIVEN_TIME) for v in sorted(views)}

    def _environments(self, latents: Mapping[str, torch.Tensor],
                      times: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality: environment tokens (B, K, E) and a padding mask (B, K), True where absent (t = T)."""
        out = {}
        for m in self.modalities:
            z = self.env[m](latents[m], times[m])  # (B, K, E)
            out[m] = (z, (times[m] >= self.absent_time)[:, None].expand(-1, z.shape[1]))
        return out

    def _others(self, env: Mapping[str, tuple[torch.Tensor, torch.Tensor]], m: str,
                b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, 1 + sum K, E) and padding (B, 1 + sum K) of every modality but ``m``, after the null token."""
        null = self.null_env.expand(b, -1, -1)
        others = [env[o] for o in self.modalities if o != m]
        keys = torch.cat([null] + [z for z, _ in others], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=keys.device)] + [p for _, p in others], dim=1)
        return keys, pad


def build_codi_denoiser(name: str, generator: torch.Generator | None = None, **overrides) -> CodiXR:
    """A CodiXR from a preset name in :data:`CODI_DENOISERS` and keyword overrides (data sizes)."""
    if name not in CODI_DENOISERS:
        raise ConfigError(f"unknown CoDi denoiser {name!r}; valid names: {sorted(CODI_DENOISERS)}")
    return CodiXR(**{**CODI_DENOISERS[name], **overrides}, generator=generator)
