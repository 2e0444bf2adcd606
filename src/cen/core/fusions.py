"""Fusion strategies: what happens where the modalities meet, one plug-in chosen by name.

A *fusion point* is a modality norm (see :mod:`cen.core.norms`) that, after its
private normalisation, hands its output to a :class:`Fusion`. Every strategy acts
on the ``(B, K, C, *S)`` view of the stacked batch (``K`` present modalities,
modality ``k`` at ``[:, k]``) and returns a tensor of the same shape.

Notation: ``y[m]`` is modality ``m``'s normalised, scaled and shifted output
(``gamma[m] * x_hat[m] + beta[m]``), ``x[m]`` the norm's input, ``pool(.)`` the
global average over the spatial dimensions (per sample, modality and channel),
``others(v)[m] = mean over the present m' != m of v[m']`` (zero interaction when
only one modality is present), ``theta`` the norm's threshold.

=================== ===============================================================
``exchange``        Eq. 6: ``out[m, c] = y[m, c]`` if ``|gamma[m, c]| >= theta`` else
                    ``others(y)[m, c]`` (``aggregate="weighted"``: the ``|gamma|``-weighted mean)
``sum``             ``out[m] = y[m] + others(y)[m]``
``gated_sum``       ``out[m] = y[m] + g[m] * others(y)[m]``, ``g = sigmoid(MLP(pool(x)))``
``conditional_norm`` ``out[m] = (gamma[m] + dgamma[m]) x_hat[m] + beta[m] + dbeta[m]``,
                    ``(dgamma, dbeta)[m] = MLP_m(others(pool(x))[m])``
``fixed``           Eq. 6 with a fixed replaced set (a share ``fraction`` per modality)
``random``          Eq. 6 with a replaced set drawn at random every training step
``discard``         ``out[m, c] = y[m, c]`` if ``|gamma[m, c]| >= theta`` else ``0``
``none``            ``out = y``
``token``           TokenFusion (:mod:`cen.core.token_fusion`): per token (position), a learnt
                    score ``s``; where ``s[m] < theta`` the token becomes ``Proj_m(others(y))``
=================== ===============================================================

Register a new strategy with ``@register_fusion("name")`` on a :class:`Fusion`
subclass whose ``__init__(num_features, num_modalities, *, options...)`` takes its
options as keyword-only arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.exchange import exchange as exchange_flat
from cen.core.exchange import exchange_split
from cen.core.groups import disjoint_groups
from cen.core.registry import Registry

FUSIONS: Registry[type[Fusion]] = Registry("fusion")
register_fusion = FUSIONS.register


def fusion_names() -> tuple[str, ...]:
    """The registered strategies, e.g. ``("exchange", "sum", ...)``."""
    return FUSIONS.names()


def others_mean(split: Tensor) -> Tensor:
    """``others(v)``: for each ``k`` of ``split``, ``Tensor(B, K, ...)``, the mean over the other ``k' != k``.

    Needs ``K >= 2``. For ``K = 2`` that is the other modality itself (a flip).
    """
    num = split.shape[1]
    if num == 2:
        return split.flip(1)
    return (split.sum(dim=1, keepdim=True) - split) / (num - 1)


def _pool(x: Tensor) -> Tensor:
    """``Tensor(B, K, C, *S)`` -> ``Tensor(B, K, C)``: mean over the spatial dimensions (none for ``(B, K, C)``)."""
    return x.mean(dim=tuple(range(3, x.dim()))) if x.dim() > 3 else x


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """View a ``(..., K, C)`` tensor so it broadcasts against ``like``, ``Tensor(B, K, C, *S)``."""
    lead = (1,) * (3 - t.dim())
    return t.view(*lead, *t.shape, *([1] * (like.dim() - 3)))


def _check_fraction(name: str, fraction: float, num_features: int, num_modalities: int) -> int:
    """The number of channels each modality replaces for a share ``fraction``; checks that the sets can be disjoint."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"fusion {name!r}: fraction must be a number in (0, 1), got {fraction!r}")
    if num_modalities < 2:
        raise ValueError(f"fusion {name!r} exchanges between modalities and needs at least 2, got {num_modalities}")
    count = round(fraction * num_features)
    room = num_features // num_modalities
    if count > room:
        raise ValueError(
            f"fusion {name!r}: fraction={fraction} of {num_features} channels is {count} per modality, but "
            f"{num_modalities} disjoint sets leave at most {room} each; use fraction <= {room / num_features:.3g}"
        )
    return count


class Fusion(nn.Module):
    """Base class of the fusion strategies.

    Class attributes a strategy may set:

    * ``penalised``: whether :func:`cen.sparsity_loss` penalises the ``gamma`` of
      the norm at this point (default True).
    * ``takes_affine``: the norm then passes its output *before* its own scale and
      shift (``x_hat``) and the strategy applies ``gamma``, ``beta`` itself.
    * ``needs_all``: the strategy is not defined with a missing modality (the norm
      raises a clear error).
    * ``linear``: at inference its output is ``sum_k w[m, k, c] y[k, c]`` with ``w`` fixed
      by the weights (independent of the input), so an export can fold it into constants
      (default False).
    * ``deterministic``: at inference its output is a function of the weights and the
      input alone (default True; ``random`` draws its channels).

    Hooks a strategy may override: :meth:`replaced` / :meth:`replaced_share` (what
    :func:`cen.exchange_stats` reports) and :meth:`sparsity_term` (what it adds to
    :func:`cen.sparsity_loss`).
    """

    name = ""
    penalised = True
    takes_affine = False
    needs_all = False
    linear = False
    deterministic = True

    def __init__(self, num_features: int, num_modalities: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_modalities = num_modalities

    def forward(
        self,
        y: Tensor,
        x: Tensor,
        gamma: Tensor,
        beta: Tensor,
        threshold: float,
        present: tuple[int, ...] | None,
        flat: bool = False,
    ) -> Tensor:
        """Fuse ``y``, ``Tensor(B, K, C, *S)``.

        Args:
            y: the norm's output (``x_hat`` for ``takes_affine`` strategies).
            x: the norm's input, same shape.
            gamma, beta: ``(K, C)`` scale and shift of the present modalities.
            threshold: the norm's ``theta``.
            present: indices of the present modalities, or None for all ``M``.
            flat: ``y`` is a view of a contiguous ``(B, K*C, *S)`` tensor (the eager
                route), so strategies may use the flat layout.

        Returns:
            ``Tensor(B, K, C, *S)``.
        """
        raise NotImplementedError

    def replaced(self, gamma: Tensor, threshold: float) -> Tensor | None:
        """Bool ``(M, C)``: the channels each modality gives up now, or None if the notion does not apply."""
        return None

    def replaced_share(self, gamma: Tensor, threshold: float) -> Tensor | None:
        """Float ``(M,)``: the share of its features each modality gives up now (:func:`cen.exchange_stats`).

        By default the share of channels of :meth:`replaced` (None where that is None);
        a strategy that replaces something other than whole channels (``token``: tokens)
        overrides it.
        """
        replaced = self.replaced(gamma, threshold)
        return None if replaced is None else replaced.float().mean(dim=1)

    def sparsity_term(self) -> Tensor | None:
        """A scalar the strategy adds to :func:`cen.sparsity_loss`, or None (the default).

        For a strategy whose sparsity is on something it computes in ``forward`` (the
        token scores of ``token``) rather than on ``gamma``: it returns the term of its
        latest call, with its graph, so that ``loss + lam * cen.sparsity_loss(model)``
        after a forward trains it. Such a strategy sets ``penalised = False`` when
        ``gamma`` is not to be penalised as well. The term is unaffected by
        ``sparsity_loss``'s ``mode`` (the disjoint split is about channels), and has no
        proximal step (:func:`cen.sparsity_shrink_` acts on parameters only).
        """
        return None

    def _rows(self, t: Tensor, present: tuple[int, ...] | None) -> Tensor:
        """Rows ``present`` of a per-modality tensor ``(M, ...)`` (all if None)."""
        return t if present is None else t[list(present)]

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_modalities={self.num_modalities}"


def check_fusion_options(name: str, options: Mapping[str, object] | None) -> type[Fusion]:
    """The strategy class of ``name``, after checking that it takes every option in ``options``.

    Raises ``ValueError`` for an unknown name (listing the known ones) or an option the strategy does not take.
    """
    cls = FUSIONS.get(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
        raise ValueError(f"fusion {name!r} has no option {', '.join(map(repr, unknown))}; {takes}")
    return cls


def build_fusion(
    name: str, num_features: int, num_modalities: int, options: Mapping[str, object] | None = None
) -> Fusion:
    """Create the strategy ``name`` for a norm of ``num_features`` channels and ``num_modalities`` modalities."""
    cls = check_fusion_options(name, options)
    fusion = cls(num_features, num_modalities, **dict(options or {}))
    fusion.name = name
    return fusion


@register_fusion("exchange")
class Exchange(Fusion):
    """Channel exchange, paper Eq. 6.

    ``out[m, c] = y[m, c]`` where ``|gamma[m, c]| >= theta``, otherwise the mean of
    the other present modalities' ``y[m', c]``. With ``aggregate="weighted"`` the
    replacing value is ``sum_{m'!=m} |gamma[m', c]| y[m', c] / sum_{m'!=m} |gamma[m', c]|``
    (the plain mean where all those ``|gamma|`` are 0); identical to the mean for
    two modalities. The test and the weights use ``gamma`` detached, recomputed at
    every call. With one present modality nothing is exchanged.
    """

    linear = True

    def __init__(self, num_features: int, num_modalities: int, *, aggregate: str = "mean") -> None:
        super().__init__(num_features, num_modalities)
        if aggregate not in ("mean", "weighted"):
            raise ValueError(f"fusion 'exchange': aggregate must be 'mean' or 'weighted', got {aggregate!r}")
        self.aggregate = aggregate

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        num = y.shape[1]
        if num == 1:
            return y
        magnitude = gamma.detach().abs()
        keep = magnitude >= threshold
        if self.aggregate == "mean" or num == 2:
            if flat:  # one channel gather for two modalities (see cen.core.exchange)
                return exchange_flat(y.flatten(1, 2), keep).view(y.shape)
            return exchange_split(y, keep)
        weight = _expand(magnitude, y)
        total = weight.sum(dim=1, keepdim=True) - weight
        weighted = ((y * weight).sum(dim=1, keepdim=True) - y * weight) / total.clamp_min(torch.finfo(y.dtype).tiny)
        replacement = torch.where(total > 0, weighted, others_mean(y))
        return torch.where(_expand(keep, y), y, replacement)

    def replaced(self, gamma, threshold):
        return gamma.detach().abs() < threshold

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, aggregate={self.aggregate!r}"


@register_fusion("sum")
class Sum(Fusion):
    """Summing activations: ``out[m] = y[m] + mean_{m' != m} y[m']`` over the present modalities."""

    linear = True

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        return y if y.shape[1] == 1 else y + others_mean(y)


@register_fusion("gated_sum")
class GatedSum(Fusion):
    """Summing through a learned soft gate (SE-style): ``out[m] = y[m] + g[m] * mean_{m' != m} y[m']``.

    ``g = sigmoid(W2 relu(W1 p + b1) + b2)`` reshaped to ``(B, M, C)``: one gate in
    (0, 1) per sample, modality and channel, where ``p``, ``(B, M*C)``, concatenates
    the spatial means of the norm's input ``x`` of all ``M`` modalities, ``W1`` is
    ``(max(1, M*C // reduction), M*C)`` and ``W2`` its transpose shape (PyTorch's
    default ``Linear`` initialisation, so ``g`` starts near 0.5). The gate reads
    every modality, so every modality must be present.
    """

    needs_all = True

    def __init__(self, num_features: int, num_modalities: int, *, reduction: int = 16) -> None:
        super().__init__(num_features, num_modalities)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"fusion 'gated_sum': reduction must be an int >= 1, got {reduction!r}")
        width = num_modalities * num_features
        hidden = max(1, width // reduction)
        self.reduction = reduction
        self.squeeze = nn.Linear(width, hidden)
        self.excite = nn.Linear(hidden, width)

    def gate(self, x: Tensor) -> Tensor:
        """``Tensor(B, M, C, *S)`` (the norm's input) -> gates ``Tensor(B, M, C)`` in (0, 1)."""
        pooled = _pool(x).flatten(1)
        return torch.sigmoid(self.excite(F.relu(self.squeeze(pooled)))).view(x.shape[:3])

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        if y.shape[1] == 1:
            return y
        return y + _expand(self.gate(x), y) * others_mean(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction}"


@register_fusion("conditional_norm")
class ConditionalNorm(Fusion):
    """Conditional normalisation (DeVries et al., 2017): each modality's scale and shift depend on the others.

    ``out[m] = (gamma[m] + dgamma[m]) * x_hat[m] + beta[m] + dbeta[m]`` with
    ``(dgamma[m], dbeta[m]) = V_m relu(U_m q[m] + a_m) + b_m``, ``(B, C)`` each, where
    ``q[m]`` is the mean over the other present modalities of the spatial mean of the
    norm's input ``x``. Each modality has its own MLP (``U_m``:
    ``(max(1, C // reduction), C)``, ``V_m``: ``(2C, hidden)``); ``V_m`` and ``b_m``
    start at zero, so the strategy starts as the plain private norm. With one
    present modality there is nothing to condition on and the plain norm applies.
    """

    takes_affine = True

    def __init__(self, num_features: int, num_modalities: int, *, reduction: int = 4) -> None:
        super().__init__(num_features, num_modalities)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"fusion 'conditional_norm': reduction must be an int >= 1, got {reduction!r}")
        hidden = max(1, num_features // reduction)
        self.reduction = reduction
        self.hidden_weight = nn.Parameter(torch.empty(num_modalities, hidden, num_features))
        self.hidden_bias = nn.Parameter(torch.empty(num_modalities, hidden))
        self.out_weight = nn.Parameter(torch.zeros(num_modalities, 2 * num_features, hidden))
        self.out_bias = nn.Parameter(torch.zeros(num_modalities, 2 * num_features))
        bound = num_features**-0.5  # as nn.Linear's default
        nn.init.uniform_(self.hidden_weight, -bound, bound)
        nn.init.uniform_(self.hidden_bias, -bound, bound)

    def modulation(self, x: Tensor, present: tuple[int, ...] | None) -> tuple[Tensor, Tensor]:
        """``(dgamma, dbeta)``, each ``Tensor(B, K, C)``, from the norm's input ``x``, ``Tensor(B, K, C, *S)``, K >= 2."""
        context = others_mean(_pool(x))
        hidden = torch.einsum("bkc,khc->bkh", context, self._rows(self.hidden_weight, present))
        hidden = F.relu(hidden + self._rows(self.hidden_bias, present))
        delta = torch.einsum("bkh,kdh->bkd", hidden, self._rows(self.out_weight, present))
        delta = delta + self._rows(self.out_bias, present)
        return delta.split(self.num_features, dim=-1)

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        scale, shift = gamma.unsqueeze(0), beta.unsqueeze(0)
        if y.shape[1] > 1:
            dgamma, dbeta = self.modulation(x, present)
            scale, shift = scale + dgamma, shift + dbeta
        return y * _expand(scale, y) + _expand(shift, y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction}"


class _MaskedExchange(Fusion):
    """Eq. 6 with a replaced set that does not come from ``gamma``: a bool ``(M, C)`` buffer named by
    ``_set_buffer`` (the set of eval mode, which :meth:`replaced` reports), or in training the set
    :meth:`_call_set` draws. Subclasses set ``fraction``."""

    penalised = False
    _set_buffer = "replace"

    def _call_set(self, y: Tensor) -> Tensor:
        """Bool ``(M, C)``: the set the call on ``y`` replaces (here: the stored one)."""
        return getattr(self, self._set_buffer)

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        return self._exchange(y, self._call_set(y), present, flat)

    def replaced(self, gamma, threshold):
        return getattr(self, self._set_buffer)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fraction={self.fraction}"

    def _exchange(self, y: Tensor, replace: Tensor, present, flat: bool) -> Tensor:
        if y.shape[1] == 1:
            return y
        keep = ~self._rows(replace, present)
        if flat:
            return exchange_flat(y.flatten(1, 2), keep).view(y.shape)
        return exchange_split(y, keep)


def _ranked_sets(scores: Tensor, num_modalities: int, count: int) -> Tensor:
    """Bool ``(M, C)``: modality ``m`` replaces the channels whose rank in ``scores`` is in ``[m*count, (m+1)*count)``."""
    rank = scores.argsort().argsort()
    start = torch.arange(num_modalities, device=scores.device).unsqueeze(1) * count
    return (rank >= start) & (rank < start + count)


@register_fusion("fixed")
class FixedExchange(_MaskedExchange):
    """Exchange a fixed share of channels, no l1: Eq. 6 with a replaced set chosen once.

    Modality ``m`` replaces the first ``round(fraction * C)`` channels of its own
    contiguous group (the channels the disjoint l1 would penalise, see
    :func:`cen.core.groups.disjoint_groups`), so the sets are disjoint across
    modalities. Stored as the buffer ``replace``, ``(M, C)``. Not penalised by
    :func:`cen.sparsity_loss`.
    """

    linear = True

    def __init__(self, num_features: int, num_modalities: int, *, fraction: float = 0.3) -> None:
        super().__init__(num_features, num_modalities)
        count = _check_fraction("fixed", fraction, num_features, num_modalities)
        self.fraction = float(fraction)
        groups = disjoint_groups(num_modalities, num_features)
        self.register_buffer("replace", groups & (groups.cumsum(dim=1) <= count))


@register_fusion("random")
class RandomExchange(_MaskedExchange):
    """Random channel exchange (ShuffleNet-style): Eq. 6 with a replaced set drawn afresh at every training call.

    A uniform random ranking of the ``C`` channels gives modality ``m`` the channels
    ranked ``[m*k, (m+1)*k)``, ``k = round(fraction * C)``: disjoint sets, one draw
    per norm and call (from torch's global generator, so ``torch.manual_seed``
    reproduces a run). In eval mode the set drawn once from ``seed`` at
    construction is used (buffer ``eval_replace``). Not penalised by
    :func:`cen.sparsity_loss`.
    """

    deterministic = False
    _set_buffer = "eval_replace"

    def __init__(self, num_features: int, num_modalities: int, *, fraction: float = 0.3, seed: int = 0) -> None:
        super().__init__(num_features, num_modalities)
        self.count = _check_fraction("random", fraction, num_features, num_modalities)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"fusion 'random': seed must be an int, got {seed!r}")
        self.fraction = float(fraction)
        self.seed = seed
        scores = torch.rand(num_features, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("eval_replace", _ranked_sets(scores, num_modalities, self.count))

    def _call_set(self, y: Tensor) -> Tensor:
        if self.training:
            return _ranked_sets(torch.rand(self.num_features, device=y.device), self.num_modalities, self.count)
        return self.eval_replace

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"


@register_fusion("discard")
class Discard(Fusion):
    """Discarding without exchanging: ``out[m, c] = y[m, c]`` if ``|gamma[m, c]| >= theta`` else 0.

    Applies with any number of present modalities (it involves no other one).
    """

    linear = True

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        keep = _expand(gamma.detach().abs() >= threshold, y)
        return torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device))

    def replaced(self, gamma, threshold):
        return gamma.detach().abs() < threshold


# Registers "token": its module imports the names above, so it comes after them ("none" stays last in
# cen.fusion_names(), the order configs list the strategies in).
from cen.core import token_fusion as _token_fusion  # noqa: E402, F401


@register_fusion("none")
class NoFusion(Fusion):
    """No interaction, ``out = y``: late fusion through the ensemble only (with l1 on: "l1 alone")."""

    linear = True

    def forward(self, y, x, gamma, beta, threshold, present, flat=False):
        return y
