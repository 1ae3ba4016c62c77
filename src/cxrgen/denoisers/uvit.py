"""U-ViT: a ViT denoiser where time, text and latent patches are all tokens, with long skips.

Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models", CVPR 2023 (Sec. 3, Fig. 1);
used for chest X-rays by Chest-Diffusion. Differences from the reference code: ``depth`` counts all
blocks (the paper's 13 for U-ViT-S; the reference's ``depth=12`` builds the same 13), padded text
tokens are masked out of attention (the reference attends to all 77 CLIP tokens), and the patch
positions can be fixed 2-D sine-cosine ones (``pos_embed: sincos``, as DiT) instead of learned.

Saved like any diffusers model: ``config.json`` (the constructor's keyword arguments) and
``diffusion_pytorch_model.safetensors``; ``UViT.from_pretrained(folder)`` reads them back.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from cxrgen.denoisers.base import DenoiserSpec, check_inputs, prepare_timesteps
from cxrgen.errors import ConfigError

logger = logging.getLogger(__name__)

TIME_EMBEDS = ("identity", "mlp")
POS_EMBEDS = ("learned", "sincos")
MAX_PERIOD = 10_000  # sinusoid periods span 1 .. MAX_PERIOD timesteps (Vaswani et al. 2017, Sec. 3.5)
TIME_MLP_RATIO = 4  # hidden width of the optional time MLP, as in the reference code
INIT_STD = 0.02  # truncated-normal std of linear weights and position embeddings (reference init)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (grid * grid, dim) of a row-major patch grid: half the channels
    encode the row, half the column (MAE / DiT; ``dim`` divisible by 4)."""
    quarter = dim // 4
    freqs = 1.0 / MAX_PERIOD ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    pos = torch.arange(grid, dtype=torch.float64)
    args = pos[:, None] * freqs[None]  # (grid, dim/4)
    axis = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (grid, dim/2)
    rows = axis[:, None].expand(grid, grid, -1)  # (row, col, dim/2): row position
    cols = axis[None, :].expand(grid, grid, -1)  # column position
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim).float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) in float32: [cos(t f_i), sin(t f_i)], f_i = P^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


def trim_padding(context: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing text positions that are padding in every row: (B, L, D), (B, L) -> (B, L', ...).

    Exact for the U-ViT (padded tokens are never attended to and are not decoded) and cheaper: reports
    padded to ``max_length`` often carry half as many real tokens. Skipped where the length cannot be
    read from the data: meta tensors (parameter/FLOP counting), tracing and torch.compile.
    """
    if mask.device.type == "meta" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return context, mask
    real = mask.any(dim=0).nonzero()  # (R, 1) indices of positions real in some row
    n = int(real[-1, 0]) + 1 if real.numel() else 0
    return context[:, :n], mask[:, :n]


def unpatchify(x: torch.Tensor, channels: int, patch: int, grid: int) -> torch.Tensor:
    """Patch tokens (B, grid*grid, patch*patch*C) -> latents (B, C, grid*patch, grid*patch)."""
    b = x.shape[0]
    x = x.reshape(b, grid, grid, patch, patch, channels)  # (B, gh, gw, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
    return x.reshape(b, channels, grid * patch, grid * patch)  # (B, C, H, W)


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``, with a key padding mask."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, Dh)
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block; an out-block first fuses its long skip: Linear(concat(x, skip))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool) -> None:
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, 2D) -> (B, N, D)
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")


def validate_uvit_config(cfg: Any) -> None:
    """Raise ConfigError for a U-ViT config (attributes as UViT's arguments) that could not run."""
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"denoiser.prediction_type={cfg.prediction_type!r}: use one of {list(PREDICTION_TYPES)}")
    if cfg.depth < 1 or cfg.depth % 2 == 0:
        raise ConfigError(f"denoiser.kwargs.depth={cfg.depth}: give an odd block count (in + mid + out), e.g. 13")
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(
            f"denoiser.kwargs.num_heads={cfg.num_heads} does not divide hidden_size={cfg.hidden_size}"
        )
    if cfg.patch_size < 1 or cfg.sample_size % cfg.patch_size:
        raise ConfigError(
            f"denoiser.kwargs.patch_size={cfg.patch_size} does not divide the latent size {cfg.sample_size}"
        )
    if cfg.time_embed_type not in TIME_EMBEDS:
        raise ConfigError(f"denoiser.kwargs.time_embed_type={cfg.time_embed_type!r}: use one of {list(TIME_EMBEDS)}")
    if cfg.pos_embed_type not in POS_EMBEDS:
        raise ConfigError(f"denoiser.kwargs.pos_embed_type={cfg.pos_embed_type!r}: use one of {list(POS_EMBEDS)}")
    if cfg.pos_embed_type == "sincos" and cfg.hidden_size % 4:
        raise ConfigError(
            f"denoiser.kwargs.pos_embed_type=sincos needs hidden_size divisible by 4, got {cfg.hidden_size}"
        )
    if not cfg.project_context and cfg.context_dim != cfg.hidden_size:
        raise ConfigError(
            f"denoiser.context_dim={cfg.context_dim} != hidden_size={cfg.hidden_size} with "
            "kwargs.project_context=false: set it true or make the widths equal"
        )


def long_skip_blocks(depth: int, dim: int, num_heads: int, mlp_ratio: float,
                     qkv_bias: bool) -> tuple[nn.ModuleList, Block, nn.ModuleList]:
    """The U-ViT trunk: depth // 2 in-blocks, one mid block, depth // 2 out-blocks that take a long skip."""
    block = dict(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
    half = depth // 2
    return (nn.ModuleList([Block(**block, skip=False) for _ in range(half)]), Block(**block, skip=False),
            nn.ModuleList([Block(**block, skip=True) for _ in range(half)]))


def run_long_skips(net: nn.Module, tokens: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """Tokens (B, N, D) through ``net``'s in-blocks, mid block and out-blocks; skips pop in reverse order."""
    skips = []
    for blk in net.in_blocks:
        tokens = blk(tokens, attn_mask)
        skips.append(tokens)
    tokens = net.mid_block(tokens, attn_mask)
    for blk in net.out_blocks:
        tokens = blk(tokens, attn_mask, skip=skips.pop())  # deepest in-block pairs with the first out-block
    return tokens


class UViT(ModelMixin, ConfigMixin):
    """U-ViT denoiser: ``uvit(z_t, t, context, mask) -> prediction`` of shape (B, C, h, w).

    ``generator`` draws the reference init (not part of the config); weights loaded afterwards replace it.
    """

    ignore_for_config = ["generator"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        sample_size: int = 32,
        context_dim: int = 768,
        context_len: int = 77,
        prediction_type: str = "epsilon",
        hidden_size: int = 512,
        depth: int = 13,
        num_heads: int = 8,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        time_embed_type: str = "identity",
        project_context: bool = True,
        final_conv: bool = True,
        pos_embed_type: str = "learned",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        cfg = self.config
        validate_uvit_config(cfg)
        self.prediction_type = prediction_type
        dim, patch = hidden_size, patch_size
        self.grid = sample_size // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        if time_embed_type == "mlp":
            self.time_embed = nn.Sequential(
                nn.Linear(dim, TIME_MLP_RATIO * dim), nn.SiLU(), nn.Linear(TIME_MLP_RATIO * dim, dim)
            )
        else:
            self.time_embed = nn.Identity()
        self.context_embed = nn.Linear(context_dim, dim) if project_context else nn.Identity()
        # one learned position per token of [time, text_1..text_Lmax, patch_1..patch_N]; with
        # pos_embed=sincos the patches' positions are a fixed buffer instead (not saved: recomputed)
        learned_patches = self.grid**2 if pos_embed_type == "learned" else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + context_len + learned_patches, dim))
        self.register_buffer("patch_pos", sincos_2d(self.grid, dim)[None] if not learned_patches else None,
                             persistent=False)
        self.in_blocks, self.mid_block, self.out_blocks = long_skip_blocks(depth, dim, num_heads, mlp_ratio, qkv_bias)
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch * patch * in_channels)
        self.final_layer = nn.Conv2d(in_channels, in_channels, 3, padding=1) if final_conv else nn.Identity()
        self.reset_parameters(generator)

    @property
    def spec(self) -> DenoiserSpec:
        """Latent shape, text width and length, and target: what the other parts must match."""
        c = self.config
        return DenoiserSpec(c.in_channels, c.sample_size, c.context_dim, c.context_len, c.prediction_type)


    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Reference init: truncated normal (std 0.02) linears and positions, zero biases, unit norms."""
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD, generator=generator)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):  # PyTorch's default conv init, drawn from the generator
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor | int | float,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict (B, C, h, w) from latents (B, C, h, w), t (B,), context (B, L, D_text), mask (B, L).

        ``keep`` (B, N_keep) (training only, MaskDiT): indices of the patch tokens to process; the
        dropped ones are left out of every block and predicted as 0. None (inference): all of them.
        """
        cfg = self.config
        mask = check_inputs(self.spec, z_t, context, mask)
        if mask is not None:
            context, mask = trim_padding(context, mask)
        b, _, h, w = z_t.shape
        n_text = context.shape[1]
        if h != cfg.sample_size or w != cfg.sample_size:
            raise ConfigError(f"latents are {h}x{w}, U-ViT was built for denoiser.sample_size={cfg.sample_size}")
        if n_text > cfg.context_len:
            raise ConfigError(f"{n_text} text tokens exceed denoiser.context_len={cfg.context_len}; truncate")
        if mask is not None:  # zero padded embeddings so even NaN/inf there cannot leak through 0 * v
            context = context.masked_fill(~mask[..., None], 0.0)

        x = self.patch_embed(z_t).flatten(2).transpose(1, 2)  # (B, D, h/p, w/p) -> (B, N_img, D)
        t_emb = timestep_embedding(prepare_timesteps(t, b, z_t.device), cfg.hidden_size)  # (B, D)
        time_token = self.time_embed(t_emb.to(x.dtype))[:, None]  # (B, 1, D)
        text = self.context_embed(context)  # (B, L, D)
        pos = self.pos_embed
        patch_pos = pos[:, 1 + cfg.context_len :] if self.patch_pos is None else self.patch_pos.to(x.dtype)
        x = x + patch_pos  # (B, N_img, D): positions before any token is dropped
        if keep is not None:  # the same kept set passes every block, so the long skips stay aligned
            x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, N_keep, D)
        tokens = torch.cat([time_token + pos[:, :1], text + pos[:, 1 : 1 + n_text], x], dim=1)
        # (B, N, D), N = 1 + L + N_img (or N_keep)
        attn_mask = self._attention_mask(mask, tokens.shape[1])  # (B, 1, 1, N) or None

        tokens = run_long_skips(self, tokens, attn_mask)  # (B, N, D)

        tokens = self.decoder_pred(self.norm(tokens))  # (B, N, p*p*C)
        patches = tokens[:, 1 + n_text :]  # (B, N_img, p*p*C)
        if keep is not None:  # dropped patches predict 0 (the loss leaves them out)
            full = patches.new_zeros(b, self.grid**2, patches.shape[-1])  # (B, N_img, p*p*C)
            patches = full.scatter(1, keep[..., None].expand(-1, -1, patches.shape[-1]), patches)
        out = unpatchify(patches, cfg.in_channels, cfg.patch_size, self.grid)  # (B, C, h, w)
        return self.final_layer(out)

    @staticmethod
    def _attention_mask(mask: torch.Tensor | None, n_tokens: int) -> torch.Tensor | None:
        """Key mask (B, 1, 1, N), True = may be attended: time and patches always, text where real."""
        if mask is None:
            return None
        b, n_text = mask.shape
        keep = torch.ones(b, n_tokens, dtype=torch.bool, device=mask.device)  # (B, N)
        keep[:, 1 : 1 + n_text] = mask
        return keep[:, None, None, :]  # (B, 1, 1, N): broadcast over heads and queries

    def load_weights_from(self, source: str | Path) -> None:
        """Start from the weights of a saved U-ViT: its folder, or a CXRPipeline folder (its ``denoiser/``).

        The saved config must equal this one (fine-tuning, not conversion); a mismatch names the fields.
        """
        directory = Path(source)
        if (directory / "denoiser" / self.config_name).is_file():
            directory = directory / "denoiser"
        if not (directory / self.config_name).is_file():
            raise ConfigError(f"denoiser.pretrained={str(source)!r}: a U-ViT starts only from a local folder "
                              f"holding {self.config_name} and its weights (a save_pretrained folder or a "
                              "CXRPipeline folder); train one or fix the path")
        saved = UViT.from_pretrained(directory)
        ours = {k: v for k, v in self.config.items() if not k.startswith("_")}
        differ = {k: (saved.config.get(k), v) for k, v in ours.items() if saved.config.get(k) != v}
        if differ:
            raise ConfigError(f"denoiser.pretrained={str(source)!r} has another architecture (saved, asked): "
                              f"{differ}; set these in denoiser.kwargs (or the shared fields) to the saved values")
        self.load_state_dict(saved.state_dict())
        logger.info("U-ViT starts from the weights in %s", directory)
