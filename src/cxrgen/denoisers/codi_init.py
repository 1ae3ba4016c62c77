"""Start a CoDi image trunk from a trained single-view U-ViT (CoDi XR's stage 1: one LDM per modality).

CoDi XR trains one latent diffusion model per modality on its own before bridging them; a single-view
report -> frontal :class:`~cxrgen.denoisers.uvit.UViT` (``cxrgen train``, e.g. twin-pixel64) is such a model.
:func:`load_uvit_trunk` copies its weights onto a :class:`~cxrgen.denoisers.codi.CodiXR` image trunk of the
same architecture. The two then compute the same function: the trunk reads the report as the U-ViT does
when the CodiXR has ``context_mask`` (padded sentences masked), and its null report is the U-ViT's null
prompt (one sentence vector, ``null_context``) embedded. The one difference is the time token: CoDi's model
time of scheduler step ``s`` is ``s + 1`` (0 marks a clean input), a shift of 1 in 1,000.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxrgen.denoisers.codi import CodiXR
from cxrgen.denoisers.uvit import UViT
from cxrgen.errors import ConfigError

#: U-ViT parameter name prefix -> CoDi trunk prefix (the blocks, positions and final norm keep their names).
RENAMES = {"patch_embed.": "embed.", "decoder_pred.": "head.", "time_embed.": None}


def _uvit(source: str | Path) -> UViT:
    """The U-ViT of a saved folder: a UViT save_pretrained folder, or a CXRPipeline folder (its denoiser/)."""
    directory = Path(source)
    if (directory / "denoiser" / UViT.config_name).is_file():
        directory = directory / "denoiser"
    if not (directory / UViT.config_name).is_file():
        raise ConfigError(f"codi.frontal_init_from={str(source)!r}: give a CXRPipeline folder (cxrgen train's "
                          "OUT/model) or its denoiser/ folder holding a U-ViT")
    return UViT.from_pretrained(directory)


def load_uvit_trunk(model: CodiXR, modality: str, source: str | Path | UViT, null_context: torch.Tensor) -> None:
    """Copy a single-view U-ViT (folder or model) onto ``model.trunks[modality]``; in place.

    ``null_context`` (S0, context_dim): the U-ViT's null prompt as its text encoder encodes it (its real
    sentence vectors); S0 must be 1 (the "" prompt is one sentence). Raises ConfigError, naming the
    fields or tensors, when the architectures differ.
    """
    uvit = source if isinstance(source, UViT) else _uvit(source)
    uc, cc = uvit.config, model.config
    if modality not in model.trunks or modality == "report":
        raise ConfigError(f"{modality!r} is not an image trunk of this CoDi model ({list(model.trunks)})")
    trunk = model.trunks[modality]
    if not trunk.context_mask:
        raise ConfigError("a trunk started from a single-view U-ViT must read the report as it does: set "
                          "codi.context_mask: true and codi.report_condition: text")
    wanted = dict(in_channels=cc.in_channels, sample_size=cc.sample_size, context_dim=cc.context_dim,
                  context_len=cc.context_tokens, prediction_type=cc.prediction_type, hidden_size=cc.hidden_size,
                  depth=cc.depth, num_heads=cc.num_heads, patch_size=cc.patch_size, mlp_ratio=cc.mlp_ratio,
                  qkv_bias=cc.qkv_bias, time_embed_type="identity", project_context=True, final_conv=True,
                  pos_embed_type=cc.pos_embed_type)
    differ = {k: (uc.get(k), v) for k, v in wanted.items() if uc.get(k) != v}
    if differ:
        raise ConfigError(f"the U-ViT in {source!r} does not map onto the CoDi {modality} trunk; differing fields "
                          f"(U-ViT, CoDi): {differ}; train the U-ViT with the CoDi preset's sizes or pick the "
                          "preset that matches it")
    if null_context.ndim != 2 or null_context.shape[0] != 1:
        raise ConfigError(f"null_context has shape {tuple(null_context.shape)}; give the null prompt's one "
                          "sentence vector (1, context_dim)")
    state = {}
    for name, value in uvit.state_dict().items():
        for old, new in RENAMES.items():
            if name.startswith(old):
                name = None if new is None else new + name[len(old):]
                break
        if name is not None:
            state[name] = value
    own = trunk.state_dict()
    missing = sorted(set(own) - set(state) - {"null_report"})
    extra = sorted(set(state) - set(own))
    shapes = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and v.shape != own[k].shape}
    if missing or extra or shapes:
        raise ConfigError(f"the U-ViT's weights do not map onto the CoDi {modality} trunk: missing {missing}, "
                          f"unexpected {extra}, shapes (U-ViT, CoDi) {shapes}")
    with torch.no_grad():
        null = torch.zeros_like(trunk.null_report)
        null[0, 0] = uvit.context_embed(null_context.to(null.dtype))[0]  # the only attended null token
        state["null_report"] = null
    trunk.load_state_dict(state)
