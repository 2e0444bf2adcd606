"""Token fusion (TokenFusion; Wang et al., "Multimodal Token Fusion for Vision Transformers", CVPR 2022).

A fusion strategy (:mod:`cen.core.fusions`, name ``"token"``) that decides per *token*
rather than per channel. On the ``(B, K, C, *S)`` view a token is one sample, modality
and position of ``*S`` (a ViT token, a Swin / ConvNeXt position, a pixel of a CNN map),
with its ``C`` features ``y[b, m, :, s]`` (the norm's output). The paper's steps, as
this module computes them (equation numbers of arXiv 2204.08721 as recalled: the paper's
full text was not at hand when this module was written, so check them against it):

* **score** (Sec. 3.2): ``s[m] = sigmoid(w2 . gelu(W1 y[m] + b1) + b2)`` in (0, 1), one per
  token, from each modality's normalised token ``y[m]``; one small MLP shared by the
  modalities (``W1``: ``(max(1, C // reduction), C)``), like every other shared layer
  of the stacked network (the token it reads is already normalised by the modality's
  private norm);
* **sparsity** (Eq. 3): ``lambda * sum_m |s[m]|_1`` is added to the task loss. Here
  :meth:`TokenFusion.sparsity_term` is ``sum_m mean_{b, s} s[b, m, s]`` (``s > 0``, so
  ``|s| = s``) of the latest call: the paper's sum divided by the number of tokens
  per modality, so that ``lambda`` does not depend on the batch size or the image
  size. :func:`cen.sparsity_loss` adds it; ``gamma`` of a token fusion point is not
  penalised (``penalised = False``);
* **substitution** (Eq. 4 for two modalities):
  ``out[m] = y[m] * 1[s[m] >= theta] + Proj_m(others(y)[m]) * 1[s[m] < theta]``,
  ``others(y)[m]`` the other present modality's token at the same position (with more
  than two, their mean: ``Proj_m`` is linear, so this is the mean of the projected
  others), ``Proj_m(v) = P_m v + p_m`` a learnt ``C x C`` projection per receiving
  modality, initialised to the identity (so a replaced token starts as the other
  modality's token, as a CEN channel exchange would), ``theta`` the norm's threshold;
* **the score's gradient** (Eq. 2): the indicator has no gradient, so the paper
  multiplies the kept tokens by their score while training,
  ``y[m] * s[m] * 1[s[m] >= theta]``. That is ``score_scaling="train"`` (the default);
  at inference the kept token is ``y[m]`` as in Eq. 4. ``score_scaling="straight_through"``
  instead keeps the value ``y[m]`` in training too and passes the gradient
  ``d out / d s = y[m]`` (the product's gradient at ``s = 1``), with no change of scale
  between training and inference.

The selection is a ``torch.where`` over all tokens (the projection runs on every
token, which gives the projection a gradient, zero where nothing is replaced): no
data-dependent indexing, no host sync, no graph break. With one present modality
nothing is replaced and the output is ``y``.

``replaced_tokens``, a non-persistent buffer ``(M,)``, holds the share of each
modality's tokens with ``s < theta`` in the latest call (over the batch and the
positions; untouched rows for absent modalities); :func:`cen.exchange_stats` reports
it through :meth:`TokenFusion.replaced_share`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.fusions import Fusion, others_mean, register_fusion

SCORE_SCALINGS = ("train", "straight_through")


@register_fusion("token")
class TokenFusion(Fusion):
    """Per-token scores and substitution by the projected other modalities (see the module docstring).

    Args:
        num_features: ``C``.
        num_modalities: ``M``.
        reduction: the score MLP's hidden width is ``max(1, C // reduction)``.
        score_scaling: how the score gets its gradient: ``"train"`` (the paper: kept
            tokens times their score in training) or ``"straight_through"``.
    """

    penalised = False

    def __init__(
        self, num_features: int, num_modalities: int, *, reduction: int = 4, score_scaling: str = "train"
    ) -> None:
        super().__init__(num_features, num_modalities)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"fusion 'token': reduction must be an int >= 1, got {reduction!r}")
        if score_scaling not in SCORE_SCALINGS:
            raise ValueError(f"fusion 'token': score_scaling must be one of {SCORE_SCALINGS}, got {score_scaling!r}")
        self.reduction = reduction
        self.score_scaling = score_scaling
        hidden = max(1, num_features // reduction)
        self.score_hidden = nn.Linear(num_features, hidden)
        self.score_out = nn.Linear(hidden, 1)
        self.proj_weight = nn.Parameter(torch.eye(num_features).repeat(num_modalities, 1, 1))  # (M, C_out, C_in)
        self.proj_bias = nn.Parameter(torch.zeros(num_modalities, num_features))
        self.register_buffer("replaced_tokens", torch.zeros(num_modalities), persistent=False)
        #: whether forward writes ``replaced_tokens`` (an export switches it off: a frozen graph has no state)
        self.record_stats = True
        self._term: Tensor | None = None

    def scores(self, tokens: Tensor) -> Tensor:
        """``Tensor(..., C)`` tokens -> ``Tensor(...)`` scores in (0, 1)."""
        return torch.sigmoid(self.score_out(F.gelu(self.score_hidden(tokens)))).squeeze(-1)

    def project(self, tokens: Tensor, present: tuple[int, ...] | None) -> Tensor:
        """``Proj_k`` of ``Tensor(B, K, *S, C)`` tokens, modality ``k`` (of the present ones) by its own projection."""
        weight, bias = self._rows(self.proj_weight, present), self._rows(self.proj_bias, present)
        flat = tokens.reshape(tokens.shape[0], tokens.shape[1], -1, tokens.shape[-1])  # (B, K, T, C)
        out = torch.einsum("bktc,kdc->bktd", flat, weight) + bias.unsqueeze(1)
        return out.view(tokens.shape)

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        num = y.shape[1]
        if num == 1:
            self._term = None
            return y
        tokens = y.movedim(2, -1)  # (B, K, *S, C); the contiguous tensor again for channels-last norms
        score = self.scores(tokens)  # (B, K, *S)
        self._term = score.mean(dim=(0, *range(2, score.dim()))).sum()
        replace = score < threshold
        kept = tokens
        if self.training:
            factor = score if self.score_scaling == "train" else 1 + score - score.detach()
            kept = tokens * factor.unsqueeze(-1)
        out = torch.where(replace.unsqueeze(-1), self.project(others_mean(tokens), present), kept)
        if self.record_stats:
            self._record(replace, present)
        return out.movedim(-1, 2)

    @torch.no_grad()
    def _record(self, replace: Tensor, present: tuple[int, ...] | None) -> None:
        share = replace.float().mean(dim=(0, *range(2, replace.dim())))  # (K,)
        if present is None:
            self.replaced_tokens.copy_(share)
        else:
            for k, m in enumerate(present):
                self.replaced_tokens[m] = share[k]

    def sparsity_term(self) -> Tensor | None:
        """``sum_m mean(s[:, m])`` of the latest call (with its graph), or None before any call with 2+ modalities."""
        return self._term

    def replaced_share(self, gamma: Tensor, threshold: float) -> Tensor:
        """The share of each modality's tokens replaced in the latest call, ``(M,)``."""
        return self.replaced_tokens.detach().clone()

    def __getstate__(self) -> dict:
        # The latest term belongs to one forward's graph: copies (deepcopy, pickling) start without it.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_term": None}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction}, score_scaling={self.score_scaling!r}"
