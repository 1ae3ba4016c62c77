"""The report autoencoder of CoDi XR (after Optimus, Li et al. 2020): report text <-> fixed-size latent.

The interface the report diffusion models use (``ReportCodec``; shapes with the default sizes):

* ``codec.encode(reports: list[str], sample=False, generator=None) -> Tensor (B, L_r, D_r)``:
  the posterior mean (or a sample) times ``latent_scale``, so the training reports' latents have
  unit standard deviation (measured after training, as Stable Diffusion's VAE scale factor).
  L_r = ``latent_tokens`` (8), D_r = ``latent_dim`` (16).
* ``codec.decode(latent: Tensor (B, L_r, D_r), beams=1) -> list[str]``: greedy (beams=1) or beam
  search; lower-case text (the BPE tokenizer lower-cases).
* ``codec.latent_shape -> (L_r, D_r)``; ``ReportCodec.from_pretrained(dir)`` / ``save_pretrained(dir)``:
  the network (``config.json`` + safetensors, diffusers format) and the tokenizer files in one folder.

Network: a pre-norm transformer encoder (``ScratchTransformer``) over the BPE tokens, L_r learned
queries cross-attending to its token features (``pool_depth`` > 0: that many Q-former-style layers of
query self-attention, cross-attention and MLP instead of one cross-attention), a linear map to the mean and log-variance of a
diagonal Gaussian (KL-regularised towards N(0, I) with a small beta); a pre-norm causal transformer
decoder that cross-attends to the latent (projected to its width) and predicts the next token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.nn import functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.text.scratch import ScratchTransformer

log = logging.getLogger(__name__)

INIT_LOGVAR = -6.0  # initial log-variance of the posterior (see ReportAutoencoder.reset_parameters)


@torch.no_grad()
def seeded_init_(module: nn.Module, generator: torch.Generator, std: float | None = None) -> None:
    """Initialise in place from ``generator``: weights (dim >= 2) Normal(0, std), or Normal(0, 1/sqrt(fan_in))
    when ``std`` is None; biases 0, norm gains 1; scalar parameters are left as they are."""
    for name, param in module.named_parameters():
        if param.dim() >= 2:
            param.normal_(0.0, std if std is not None else param[0].numel() ** -0.5, generator=generator)
        elif param.dim() == 1:
            param.fill_(0.0 if name.endswith("bias") else 1.0)


def save_with_tokenizer(model: ModelMixin, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """A network (config.json + safetensors, diffusers format) and its tokenizer's files in one folder."""
    directory = Path(directory)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def load_with_tokenizer(model_cls: type[ModelMixin], directory: str | Path, what: str, stage: str
                        ) -> tuple[ModelMixin, PreTrainedTokenizerBase]:
    """The network (eval mode) and tokenizer of a folder written by ``save_with_tokenizer``."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{directory} holds no {what} (config.json); train one with "
                          f"`cxrgen train-multiview CONFIG` (stage: {stage})")
    return model_cls.from_pretrained(str(directory)).eval(), AutoTokenizer.from_pretrained(str(directory))


def tokenize_reports(tokenizer: PreTrainedTokenizerBase, reports: list[str], max_length: int,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) = [CLS] text [SEP] padded to the longest (at most ``max_length``) and mask (B, L)."""
    if isinstance(reports, str):
        raise DataError("give a list of reports, not one string")
    empty = [i for i, r in enumerate(reports) if not isinstance(r, str) or not r.strip()]
    if empty:
        raise DataError(f"reports {empty[:5]} are empty; give report text (findings and/or impression)")
    batch = tokenizer(list(reports), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].bool().to(device)


class ReportAutoencoder(ModelMixin, ConfigMixin):
    """Report tokens (B, L) <-> latent (B, L_r, D_r): transformer encoder, Gaussian latent, causal decoder."""

    @register_to_config
    def __init__(self, vocab_size: int, max_length: int = 96, width: int = 128, encoder_depth: int = 2,
                 decoder_depth: int = 2, heads: int = 4, latent_tokens: int = 8, latent_dim: int = 16,
                 mlp_ratio: float = 2.0, dropout: float = 0.0, pad_token_id: int = 0, bos_token_id: int = 2, eos_token_id: int = 3,
                 mask_token_id: int = 4, latent_scale: float = 1.0, bag_of_words: bool = False,
                 no_repeat_ngram: int = 0, rerank: bool = False, pool_depth: int = 0) -> None:
        super().__init__()
        text_cfg = TextEncoderConfig(backend="scratch", max_length=max_length, width=width, depth=encoder_depth,
                                     heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
        self.encoder = ScratchTransformer(vocab_size, text_cfg)
        self.queries = nn.Parameter(torch.randn(latent_tokens, width) * 0.02)
        if pool_depth > 0:  # Q-former-style: the queries attend to each other and the tokens, with MLPs, per layer
            pool_layer = nn.TransformerDecoderLayer(width, heads, int(mlp_ratio * width), dropout, activation="gelu",
                                                    batch_first=True, norm_first=True)
            self.pool_layers = nn.TransformerDecoder(pool_layer, pool_depth, norm=nn.LayerNorm(width))
        else:  # one cross-attention of the queries to the tokens (the original network)
            self.pool = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.to_moments = nn.Linear(width, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, width)
        self.latent_position = nn.Parameter(torch.randn(latent_tokens, width) * 0.02)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, heads, int(mlp_ratio * width), dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, decoder_depth)
        self.final_norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size)
        # Zhao et al. 2017's bag-of-words loss: the latent alone must predict the report's words (sides included)
        self.bow_head = nn.Linear(latent_tokens * latent_dim, vocab_size) if bag_of_words else None

    def reset_parameters(self, generator: torch.Generator, std: float | None = None) -> None:
        """Seeded init: Normal(0, std) weight matrices and embeddings (None: 1/sqrt(fan_in)), zero biases, unit
        norm gains. At GPT's std 0.02 this small network's attention started uniform and every report's latent
        near the same tiny vector; the decoder learnt the corpus without it and the latent never came to hold
        the sides (twin side accuracy 0.25). At 1/sqrt(fan_in) a linear probe reads the effusion side from the
        latent after 200 steps (0.82 against 0.61; docs/multiview.md).

        The log-variance starts at INIT_LOGVAR: a near-deterministic posterior, so the decoder sees the
        encoder's signal rather than N(0, 1) noise at first and learns to read the latent (against collapse).
        """
        seeded_init_(self, generator, std)
        with torch.no_grad():
            self.to_moments.bias[self.config.latent_dim:] = INIT_LOGVAR

    def posterior(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (B, L_r, D_r) each of the latent of tokens (B, L); ``mask`` True = token."""
        tokens = self.encoder(input_ids, mask)  # (B, L, W)
        queries = self.queries.unsqueeze(0).expand(input_ids.shape[0], -1, -1)  # (B, L_r, W)
        if self.config.pool_depth > 0:
            pooled = self.pool_layers(queries, tokens, memory_key_padding_mask=~mask)  # (B, L_r, W)
        else:
            pooled, _ = self.pool(queries, tokens, tokens, key_padding_mask=~mask, need_weights=False)  # (B, L_r, W)
        mean, logvar = self.to_moments(pooled).chunk(2, dim=-1)  # (B, L_r, D_r) x 2
        return mean, logvar.clamp(-12.0, 6.0)

    def logits(self, latent: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, V) of decoder inputs (B, L) given a raw (unscaled) latent (B, L_r, D_r)."""
        length = input_ids.shape[1]
        memory = self.from_latent(latent) + self.latent_position  # (B, L_r, W)
        x = self.token_embedding(input_ids) + self.position_embedding[:length]  # (B, L, W)
        x = x + memory.mean(dim=1, keepdim=True)  # Optimus' "embedding" injection: the latent in every input
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
        x = self.decoder(x, memory, tgt_mask=causal)  # (B, L, W)
        return self.lm_head(self.final_norm(x))

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                word_dropout: float = 0.0, encoder_word_dropout: float = 0.0,
                label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
        """Training losses of token ids (B, L) = [CLS] report [SEP] [PAD]...: ``loss``, ``ce``, ``kl``.

        ``ce``: mean next-token cross-entropy over real tokens (``label_smoothing`` as in torch);
        ``kl``: KL(q(z|x) || N(0, I)) per latent element (Kingma & Welling 2014, appendix B);
        ``loss = ce + kl_weight * kl`` is formed by the caller. ``word_dropout`` hides decoder inputs,
        ``encoder_word_dropout`` encoder inputs (a latent that reads findings from partly unseen words).
        """
        mean, logvar = self.posterior(self.mask_tokens(input_ids, mask, encoder_word_dropout, generator), mask)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        latent = mean + torch.exp(0.5 * logvar) * eps  # reparameterisation
        targets = input_ids[:, 1:]  # (B, L-1)
        # Bowman et al. 2016: hide some decoder inputs so the decoder must read the latent
        inputs = self.mask_tokens(input_ids[:, :-1], mask[:, :-1], word_dropout, generator)  # (B, L-1)
        logits = self.logits(latent, inputs)  # (B, L-1, V)
        ce = F.cross_entropy(logits.transpose(1, 2), targets.masked_fill(~mask[:, 1:], -100), ignore_index=-100,
                             label_smoothing=label_smoothing)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        out = {"ce": ce, "kl": kl}
        if self.bow_head is not None:
            out["bow"] = self.bag_of_words_loss(latent, input_ids, mask)
        return out

    def mask_tokens(self, ids: torch.Tensor, mask: torch.Tensor, share: float,
                    generator: torch.Generator | None) -> torch.Tensor:
        """``ids`` (B, L) with a random ``share`` of the real tokens after [CLS] replaced by [MASK]."""
        if share <= 0.0:
            return ids
        drop = torch.rand(ids.shape, generator=generator, device=ids.device) < share
        drop[:, 0] = False  # keep [CLS]
        return ids.masked_fill(drop & mask, self.config.mask_token_id)

    def bag_of_words_loss(self, latent: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of every real token of (B, L) under one word distribution of the latent
        (B, L_r, D_r), order ignored (Zhao et al. 2017): a decoder that reads no latent cannot lower it."""
        logp = self.bow_head(latent.flatten(1)).log_softmax(-1)  # (B, V)
        token_logp = logp.gather(1, input_ids)  # (B, L)
        real = mask.clone()
        real[:, 0] = False  # [CLS] says nothing about the report
        return -(token_logp * real).sum() / real.sum().clamp(min=1)

    @torch.no_grad()
    def generate(self, latent: torch.Tensor, beams: int = 1, max_length: int | None = None,
                 no_repeat_ngram: int | None = None, section_token_id: int | None = None,
                 all_beams: bool = False) -> torch.Tensor:
        """Token ids (B, L) decoded from a raw latent (B, L_r, D_r), starting at [CLS], up to [SEP].

        Greedy for ``beams == 1``; otherwise beam search with length-normalised log-probabilities.
        ``no_repeat_ngram`` = n > 0 (None: the config's): no n-gram twice within one section, the sections
        starting at ``section_token_id`` ("impression", whose sentences may repeat the findings').
        ``all_beams``: every beam (B, beams, L), best first, instead of the best (B, L).
        """
        if beams < 1:
            raise ConfigError(f"beams={beams}: give 1 (greedy) or more")
        max_length = min(max_length or self.config.max_length, self.config.max_length)  # learned positions end there
        guard = NgramGuard(self.config.no_repeat_ngram if no_repeat_ngram is None else no_repeat_ngram,
                           section_token_id)
        if beams == 1:
            return self._greedy(latent, max_length, guard)
        return self._beam(latent, beams, max_length, guard, all_beams)

    def _greedy(self, latent: torch.Tensor, max_length: int, guard: NgramGuard | None = None) -> torch.Tensor:
        ids = torch.full((latent.shape[0], 1), self.config.bos_token_id, dtype=torch.long, device=latent.device)
        done = torch.zeros(latent.shape[0], dtype=torch.bool, device=latent.device)
        for _ in range(max_length - 1):
            logits = self.logits(latent, ids)[:, -1]  # (B, V)
            nxt = (guard.apply(ids, logits) if guard else logits).argmax(-1)  # (B,)
            nxt = nxt.masked_fill(done, self.config.pad_token_id)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == self.config.eos_token_id
            if bool(done.all()):
                break
        return ids

    def _beam(self, latent: torch.Tensor, beams: int, max_length: int, guard: NgramGuard | None = None,
              all_beams: bool = False) -> torch.Tensor:
        batch = latent.shape[0]
        memory = latent.repeat_interleave(beams, dim=0)  # (B*k, L_r, D_r)
        ids = torch.full((batch * beams, 1), self.config.bos_token_id, dtype=torch.long, device=latent.device)
        score = torch.full((batch, beams), -1e9, device=latent.device)
        score[:, 0] = 0.0  # all beams start equal: keep one so the first step does not pick duplicates
        length = torch.ones(batch * beams, device=latent.device)
        done = torch.zeros(batch * beams, dtype=torch.bool, device=latent.device)
        for _ in range(max_length - 1):
            logits = self.logits(memory, ids)[:, -1]  # (B*k, V)
            logp = (guard.apply(ids, logits) if guard else logits).log_softmax(-1)
            vocab = logp.shape[-1]
            logp[done] = -1e9
            logp[done, self.config.pad_token_id] = 0.0  # a finished beam only extends with [PAD], at no cost
            total = (score.view(-1, 1) + logp).view(batch, beams * vocab)
            score, flat = total.topk(beams, dim=-1)  # (B, k)
            origin = (flat // vocab + torch.arange(batch, device=latent.device)[:, None] * beams).view(-1)
            token = (flat % vocab).view(-1)
            ids = torch.cat([ids[origin], token[:, None]], dim=1)
            done, length = done[origin], length[origin] + (~done[origin]).float()
            done = done | (token == self.config.eos_token_id)
            if bool(done.all()):
                break
        order = (score.view(-1) / length).view(batch, beams).argsort(-1, descending=True)  # length-normalised
        ranked = ids.view(batch, beams, -1).gather(1, order[:, :, None].expand(-1, -1, ids.shape[1]))
        return ranked if all_beams else ranked[:, 0]


class NgramGuard:
    """Decoding-time repetition guard: forbids the token that would repeat an n-gram of the current section.

    The small decoder tends to write a sentence it has just written again ("heart size and pulmonary
    vascularity are within normal limits." three times); a report's impression may repeat its findings, so
    the n-grams seen are forgotten at ``section_token_id``. ``n`` <= 0: no guard (``apply`` returns the logits).
    """

    def __init__(self, n: int, section_token_id: int | None = None) -> None:
        self.n, self.section = n, section_token_id

    def banned(self, row: list[int]) -> list[int]:
        """Tokens that would complete an n-gram already in ``row``'s current section."""
        if self.section is not None and self.section in row:
            row = row[len(row) - row[::-1].index(self.section) - 1:]
        prefix = tuple(row[len(row) - self.n + 1:]) if self.n > 1 else ()
        if len(row) < self.n:
            return []
        return [row[i + self.n - 1] for i in range(len(row) - self.n + 1) if tuple(row[i:i + self.n - 1]) == prefix]

    def apply(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, V) of the next token after ``ids`` (B, L) with the banned tokens at -inf."""
        if self.n <= 0:
            return logits
        logits = logits.clone()
        for b, row in enumerate(ids.tolist()):
            ban = self.banned(row)
            if ban:
                logits[b, ban] = float("-inf")
        return logits


class ReportCodec(ModelMixin):
    """A ``ReportAutoencoder`` with its tokenizer: ``encode(reports) -> (B, L_r, D_r)``, ``decode(latent) -> reports``.

    A diffusers ``ModelMixin`` (the autoencoder is its submodule), so a pipeline holds it as a part and
    saves / loads it in its own folder (network + tokenizer) through ``save_pretrained`` / ``from_pretrained``.
    """

    def __init__(self, model: ReportAutoencoder, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        if tokenizer.pad_token_id != model.config.pad_token_id or tokenizer.cls_token_id != model.config.bos_token_id:
            raise ConfigError("the tokenizer's [PAD]/[CLS] ids differ from the report autoencoder's; "
                              "save and load them together with ReportCodec.save_pretrained / from_pretrained")
        self.model = model
        self.tokenizer = tokenizer

    @property
    def config(self) -> Any:
        """The autoencoder's config (sizes, latent scale)."""
        return self.model.config

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(L_r, D_r) of one report's latent."""
        return self.model.config.latent_tokens, self.model.config.latent_dim

    @property
    def latent_scale(self) -> float:
        """Factor from the posterior mean to the unit-variance latent that ``encode`` returns."""
        return float(self.model.config.latent_scale)

    def tokenize(self, reports: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) = [CLS] text [SEP] padded, and the mask (B, L), True = real token."""
        return tokenize_reports(self.tokenizer, reports, self.model.config.max_length, self.model.device)

    @torch.no_grad()
    def encode(self, reports: list[str], sample: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Unit-scale latents (B, L_r, D_r) of reports: the posterior mean (or a sample) x ``latent_scale``."""
        ids, mask = self.tokenize(reports)
        mean, logvar = self.model.posterior(ids, mask)
        if sample:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
            mean = mean + torch.exp(0.5 * logvar) * eps
        return mean * self.latent_scale

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, beams: int = 1, max_length: int | None = None,
               no_repeat_ngram: int | None = None, rerank: bool | None = None) -> list[str]:
        """Report texts of unit-scale latents (B, L_r, D_r) (as ``encode`` returns them); ``no_repeat_ngram``:
        the repetition guard's n (None: the model's ``config.no_repeat_ngram``, 0: none; ``NgramGuard``);
        ``rerank`` (None: the model's ``config.rerank``) with ``beams`` > 1: of the beams, the text whose own
        latent (re-encoded) is nearest the given one, instead of the likeliest."""
        if latent.dim() != 3 or tuple(latent.shape[1:]) != self.latent_shape:
            raise DataError(f"latent of shape {tuple(latent.shape)}: expected (B, {self.latent_shape[0]}, "
                            f"{self.latent_shape[1]}), as ReportCodec.encode returns")
        rerank = bool(self.model.config.rerank if rerank is None else rerank) and beams > 1
        section = self.tokenizer(" impression", add_special_tokens=False)["input_ids"]
        ids = self.model.generate(latent.to(self.model.device) / self.latent_scale, beams, max_length,
                                  no_repeat_ngram, section[-1] if len(section) == 1 else None, all_beams=rerank)
        texts = [t.strip() for t in self.tokenizer.batch_decode(ids.flatten(0, -2), skip_special_tokens=True)]
        return self._nearest(texts, latent, beams) if rerank else texts

    def _nearest(self, texts: list[str], latent: torch.Tensor, beams: int) -> list[str]:
        """Per latent (B, L_r, D_r), the one of its ``beams`` candidate texts (B * beams, in order) whose
        posterior mean is nearest it (round-trip reranking); empty candidates never win."""
        again = self.encode([t or "." for t in texts]).view(latent.shape[0], beams, -1)  # (B, k, L_r * D_r)
        dist = (again - latent.to(again.device).flatten(1)[:, None]).pow(2).sum(-1)  # (B, k)
        dist = dist.masked_fill(torch.tensor([not t for t in texts], device=dist.device).view_as(dist), float("inf"))
        return [texts[b * beams + int(k)] for b, k in enumerate(dist.argmin(-1))]

    def save_pretrained(self, directory: str | Path, **kwargs: object) -> Path:
        """Network (config.json + safetensors) and tokenizer files into one folder (diffusers' saving
        keyword arguments are accepted and not needed)."""
        return save_with_tokenizer(self.model, self.tokenizer, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: object) -> ReportCodec:
        """Load a folder written by ``save_pretrained`` (eval mode); diffusers' loading keywords are ignored."""
        return cls(*load_with_tokenizer(ReportAutoencoder, directory, "report autoencoder", "report_ae")).eval()

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, generator: torch.Generator | None = None,
              **sizes) -> ReportCodec:
        """A fresh codec over ``tokenizer``, initialised from ``generator`` (default: seed 0).

        ``sizes``: ReportAutoencoder keyword arguments (width, latent_tokens, ...).
        """
        model = ReportAutoencoder(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                  mask_token_id=tokenizer.mask_token_id, **sizes)
        model.reset_parameters(generator if generator is not None else torch.Generator().manual_seed(0))
        return cls(model, tokenizer).eval()  # as from_pretrained gives it; training sets train mode
