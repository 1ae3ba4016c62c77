"""Patient re-identification (privacy): a Siamese CNN scoring how likely two CXRs show one patient.

The set-up of Packhäuser et al. 2022 ("Deep learning-based patient re-identification is able to
exploit the biometric nature of medical chest X-ray data", Sci. Rep. 12) as used by CheXGenBench:
one network with shared weights embeds both images; a similarity head turns the pair into the
probability "same patient". Here the embedding is L2-normalised and the head is a learned affine
map of the cosine similarity, ``p = sigmoid(exp(log_scale) * cos + bias)``, so the most similar
training image of a generated one is found by a matrix product (memorization.nearest_neighbours)
and its probability is monotone in the cosine. Trained by ``cxrgen train-reid`` (train_reid.py).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from cxrgen.errors import ConfigError
from cxrgen.evaluate.evaluator import as_evaluator_input
from cxrgen.evaluate.extractors import FeatureExtractor
from cxrgen.evaluate.memorization import nearest_neighbours

log = logging.getLogger(__name__)

REID_NAME = "cxrgen-reid"
STAGES = 4  # stride-2 conv stages: image_size / 16 is the side of the last feature map
INIT_SCALE = 10.0  # cosine -> logit slope at initialisation (a temperature of 0.1)


class ReidNet(ModelMixin, ConfigMixin):
    """Siamese re-identification CNN: ``embed`` (B, D) unit vectors; ``pair_logits`` of two embedding sets."""

    @register_to_config
    def __init__(self, image_size: int = 64, width: int = 16, embed_dim: int = 64) -> None:
        super().__init__()
        if image_size < 16 or image_size % 16:
            raise ConfigError(f"image_size={image_size}: give a multiple of 16, e.g. 64")
        chans = [1] + [width * 2**i for i in range(STAGES)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        side = image_size // 16
        self.proj = nn.Linear(chans[-1] * side * side, embed_dim)  # flattened: where a structure is counts
        self.log_scale = nn.Parameter(torch.tensor(math.log(INIT_SCALE)))
        self.bias = nn.Parameter(torch.tensor(-INIT_SCALE / 2))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, D) of images (B, 1, H, W) in [-1, 1] (other sizes resized, said once)."""
        x = as_evaluator_input(images, self.config.image_size).to(self.device)  # (B, 1, S, S)
        maps = self.body(x)  # (B, 8w, S/16, S/16)
        return F.normalize(self.proj(torch.flatten(maps, 1)), dim=1)  # (B, D)

    def logits_from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        """The similarity head: same-patient logit of a cosine similarity (any shape)."""
        return torch.exp(self.log_scale) * cosine + self.bias

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Same-patient logits (N, M) of every pair of embeddings a (N, D), b (M, D)."""
        return self.logits_from_cosine(a @ b.T)

    @torch.no_grad()
    def probability(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        """P(same patient) (B,) of image pairs given as two (B, 1, H, W) batches; call ``.eval()`` first."""
        cos = (self.embed(images_a) * self.embed(images_b)).sum(dim=1)  # (B,)
        return torch.sigmoid(self.logits_from_cosine(cos))


def load_reid(folder: str | Path, device: str | torch.device = "cpu") -> ReidNet:
    """A ``ReidNet`` saved by ``cxrgen train-reid`` (``save_pretrained``), in eval mode."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a saved {REID_NAME} (no config.json): train one with "
                          "`cxrgen train-reid CONFIG` and give its output folder as --reid-model")
    return ReidNet.from_pretrained(folder).to(device).eval()


class ReidExtractor(FeatureExtractor):
    """The re-identification embedding as a feature extractor, so evaluation's feature cache reads the images."""

    name = REID_NAME

    def __init__(self, model: ReidNet) -> None:
        self.model = model.eval()
        self.feature_dim = int(model.config.embed_dim)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, D)."""
        return self.model.embed(images)


DEFAULT_REID = Path(__file__).resolve().parents[1] / "models" / "reid"  # the shipped model (when present)


def heldout_auroc(folder: Path) -> float | None:
    """The held-out pair AUROC that ``cxrgen train-reid`` recorded beside the weights (None when absent)."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    return (((json.loads(path.read_text(encoding="utf-8")).get("heldout") or {}).get("reid")) or {}).get("auroc")


@torch.no_grad()
def reid_scores(model: ReidNet, gen_emb: torch.Tensor, train_emb: torch.Tensor, heldout_emb: torch.Tensor | None,
                quantile: float = 0.99) -> dict:
    """Each generated image's highest P(same patient) against the training images; held-out real as reference.

    Real held-out images are other patients than the training ones (patient-level split), so their
    highest score is what "a different patient" looks like; its ``quantile`` is the threshold above
    which a generated image is more alike to a training patient than real other patients are. The
    probabilities themselves are those of one balanced pair: the highest of thousands sits near the
    ceiling sigmoid(exp(s) + b) for any image, so read them against the held-out level, not against 0.5.
    """
    idx, cos = nearest_neighbours(gen_emb, train_emb, metric="cosine")
    prob = torch.sigmoid(model.logits_from_cosine(torch.from_numpy(cos).to(model.device))).cpu().numpy()
    ceiling = torch.sigmoid(model.logits_from_cosine(torch.tensor(1.0, device=model.device))).item()
    out = {"mean": float(prob.mean()), "max": float(prob.max()), "copy_score": ceiling, "n_generated": int(len(prob)), "n_train": int(train_emb.shape[0]), "threshold": None,
           "above_threshold": None, "quantile": quantile, "heldout": None}
    if heldout_emb is not None and len(heldout_emb):
        _, cos_h = nearest_neighbours(heldout_emb, train_emb, metric="cosine")
        prob_h = torch.sigmoid(model.logits_from_cosine(torch.from_numpy(cos_h).to(model.device))).cpu().numpy()
        threshold = float(np.quantile(prob_h, quantile))
        out.update(threshold=threshold, above_threshold=float((prob > threshold).mean()),
                   heldout={"mean": float(prob_h.mean()), "max": float(prob_h.max()), "n": int(len(prob_h))})
    order = np.argsort(-prob, kind="stable")
    out["top"] = [{"generated": int(g), "train": int(idx[g]), "score": float(prob[g])} for g in order[:8]]
    return out
