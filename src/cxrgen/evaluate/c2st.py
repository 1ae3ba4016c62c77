"""Classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017, "Revisiting classifier two-sample tests").

A classifier learns to tell generated from real images; its k-fold cross-validated accuracy is the
metric: 0.5 means the sets cannot be told apart, 1.0 that every image is recognised. Two classifiers:
a small CNN (texture and anatomy) and logistic regression on 64 x 64 pixels (a floor any realistic
model must pass). Both take images, never a generative model; the accuracy comes with a Wilson
confidence interval over all out-of-fold predictions and a one-sided binomial p-value against 0.5
(Lopez-Paz & Oquab, sec. 2: under the null the test accuracy is Binomial(n, 1/2) / n).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from cxrgen.errors import ConfigError
from cxrgen.evaluate.image_pairs import balanced, comparable
from cxrgen.evaluate.networks import init_densenet

log = logging.getLogger(__name__)

GENERATED, REAL = 1, 0  # class labels of the two-sample problem


@dataclass(frozen=True)
class C2STSettings:
    """Both classifiers see gray images of ``size`` px; ``folds``-fold stratified cross-validation."""

    folds: int = 5
    size: int = 64
    epochs: int = 20  # CNN epochs per fold
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    linear_c: float = 0.01  # inverse L2 strength of the logistic regression (4,096 pixels, few images)
    confidence: float = 0.95  # Wilson interval level
    top: int = 8  # generated images reported as the most "generated"

    def __post_init__(self) -> None:
        if self.folds < 2 or self.size < 16 or self.size % 16 or min(self.epochs, self.batch_size, self.top) < 1:
            raise ConfigError(f"C2ST settings {self}: need folds >= 2, size a multiple of 16, positive counts")

    @property
    def min_per_set(self) -> int:
        """Each test fold needs at least two images of each set."""
        return 2 * self.folds


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927); robust near 0 and 1."""
    if n == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _folds(labels: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
    """Fold index (N,) per sample, stratified: each class spread evenly over k folds in random order."""
    fold = np.empty(labels.shape[0], dtype=np.int64)
    for value in (REAL, GENERATED):
        idx = np.flatnonzero(labels == value)
        order = idx[torch.randperm(idx.shape[0], generator=generator).numpy()]
        fold[order] = np.arange(order.shape[0]) % k
    return fold


class C2STNet(nn.Module):
    """Four stride-2 convs (64 -> 4 px), flattened so that layout counts, then one logit; ~25 k parameters."""

    def __init__(self, size: int, width: int = 8) -> None:
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1] * (size // 16) ** 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of "generated" (B,) for images (B, 1, S, S)."""
        return self.head(torch.flatten(self.body(x), 1)).squeeze(1)  # (B, C, S/16, S/16) -> (B,)


def _train_cnn(x: torch.Tensor, y: torch.Tensor, s: C2STSettings, generator: torch.Generator) -> C2STNet:
    """Adam on BCE for ``s.epochs`` epochs, batches shuffled by ``generator``."""
    net = init_densenet(C2STNet(s.size), generator).train()
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    for _ in range(s.epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], s.batch_size):
            batch = order[start : start + s.batch_size]
            if batch.shape[0] < 2:  # BatchNorm needs two samples
                continue
            loss = F.binary_cross_entropy_with_logits(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def _cnn_scores(x: torch.Tensor, labels: np.ndarray, fold: np.ndarray, s: C2STSettings,
                generator: torch.Generator) -> np.ndarray:
    """Out-of-fold P(generated) (N,) of the CNN."""
    scores = np.empty(labels.shape[0])
    y = torch.from_numpy(labels).float()
    for k in range(s.folds):
        test = fold == k
        net = _train_cnn(x[~test], y[~test], s, generator)
        with torch.no_grad():
            scores[test] = torch.sigmoid(net(x[test])).numpy()
    return scores


def _linear_scores(x: torch.Tensor, labels: np.ndarray, fold: np.ndarray, s: C2STSettings) -> np.ndarray:
    """Out-of-fold P(generated) (N,) of standardised-pixel logistic regression (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pixels = x.flatten(1).double().numpy()  # (N, S * S)
    scores = np.empty(labels.shape[0])
    for k in range(s.folds):
        test = fold == k
        model = make_pipeline(StandardScaler(), LogisticRegression(C=s.linear_c, max_iter=2000))
        model.fit(pixels[~test], labels[~test])
        scores[test] = model.predict_proba(pixels[test])[:, list(model.classes_).index(GENERATED)]
    return scores


def _summary(scores: np.ndarray, labels: np.ndarray, s: C2STSettings) -> dict:
    correct = int(((scores > 0.5).astype(np.int64) == labels).sum())
    n = labels.shape[0]
    low, high = wilson_interval(correct, n, s.confidence)
    p_value = float(stats.binomtest(correct, n, 0.5, alternative="greater").pvalue)
    return {"accuracy": correct / n, "ci": [low, high], "p_value": p_value}


def c2st(real: torch.Tensor, generated: torch.Tensor, settings: C2STSettings = C2STSettings(),
         generator: torch.Generator | None = None) -> dict:
    """Cross-validated C2ST accuracy of a CNN and of linear-on-pixels, real (N, 1, H, W) vs generated (M, ...).

    Returns ``cnn``, ``linear`` (accuracies), ``cnn_ci`` / ``linear_ci``, p-values, ``n`` (images per set),
    ``most_generated`` (indices into ``generated`` with the CNN's P(generated), highest first) and ``notes``.
    Raises NotEnoughImagesError below ``settings.min_per_set`` images per set.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    real, gen, notes = comparable(real, generated, settings.min_per_set, "C2ST", settings.size)
    real, gen, kept = balanced(real, gen, generator, notes, "C2ST")
    x = torch.cat([real, gen])  # (2n, 1, S, S)
    labels = np.array([REAL] * real.shape[0] + [GENERATED] * gen.shape[0])
    fold = _folds(labels, settings.folds, generator)
    cnn = _summary(cnn_p := _cnn_scores(x, labels, fold, settings, generator), labels, settings)
    linear = _summary(_linear_scores(x, labels, fold, settings), labels, settings)
    gen_p = cnn_p[labels == GENERATED]
    top = np.argsort(-gen_p, kind="stable")[: settings.top]
    log.info("C2ST on %d + %d images: CNN %.3f [%.3f, %.3f], linear %.3f", real.shape[0], gen.shape[0],
             cnn["accuracy"], *cnn["ci"], linear["accuracy"])
    return {"cnn": cnn["accuracy"], "linear": linear["accuracy"], "n": int(real.shape[0]),
            "cnn_ci": cnn["ci"], "linear_ci": linear["ci"], "cnn_p_value": cnn["p_value"],
            "linear_p_value": linear["p_value"], "confidence": settings.confidence, "folds": settings.folds,
            "image_size": settings.size,
            "most_generated": [{"index": int(kept[i]), "p_generated": float(gen_p[i])} for i in top],
            "notes": notes}
