"""Freeze a :class:`cen.MultiModal` model for inference: every modality norm becomes constants.

At inference the modality norms of :mod:`cen.core.norms` compute from their
running statistics, and the channels a fusion point exchanges depend only on
``|gamma|`` (or on a stored selection). :func:`freeze` evaluates all of that
once, on a deep copy of the model, and replaces each norm by a
:class:`FrozenNorm` holding constants:

* the normalisation folded into one per-channel scale and shift,
  ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``;
  norms whose statistics come from each sample, which cannot fold (instance norms
  without running statistics, group norms, layer norms), keep their normalisation op
  without affine (``instance_norm``, ``group_norm`` over the ``K*G`` groups of the
  free view, ``layer_norm`` over ``C``) followed by the per-modality ``gamma``,
  ``beta`` as constants; the channels-last layer norm (:class:`FrozenTokenNorm`) keeps
  its ``(B*K, ..., C)`` layout and moves channels first only around a fusion that
  mixes modalities;
* timm's norm + activation twins keep their ``drop`` and ``act`` after the fusion;
* the fusion, for the strategies whose output is a fixed linear mix of the
  modalities' normalised channels (``exchange``, ``fixed``, ``discard``, ``sum``,
  ``none``), as the constant mix ``w[m, k, c]``, ``out[m, c] = sum_k w[m, k, c] y[k, c]``,
  read off the strategy's own ``forward`` (it is applied to one-hot probes), then
  lowered to the cheapest op: nothing (``none``), a constant channel gather
  (``exchange`` and ``fixed`` with two modalities), a constant 0/1 channel mask
  (``discard``), or a weighted sum over the modalities (more modalities, ``sum``);
* ``gated_sum``, ``conditional_norm`` and ``token``, which depend on the input, run as
  they are, with ``gamma`` and ``beta`` as constants (``token`` without its statistics);
* ``random`` is refused: its channel selection is not a function of the weights.

Nothing reads :func:`cen.present_modalities` any more: a frozen graph is built
for one fixed set of present modalities (all by default).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.fusions import Fusion
from cen.core.layer_norms import ModalityGroupNorm, ModalityLayerNorm, ModalityLayerNorm2d
from cen.core.multimodal import MultiModal
from cen.core.norms import ModalityInstanceNorm2d, _ModalityNorm
from cen.core.twins import _NormAct
from cen.core.unshared import ModalityConv2d, ModalityLinear
from cen.errors import UserError


class FreezeError(ValueError, UserError):
    """A model that cannot be frozen for export; the message names the module and the reason."""


def _split(flat: Tensor, num: int) -> Tensor:
    """``Tensor(B, K*C, *S)`` -> the view ``Tensor(B, K, C, *S)``."""
    return flat.unflatten(1, (num, -1))


def _channel_view(t: Tensor, like: Tensor) -> Tensor:
    """A ``(K*C,)`` constant viewed to broadcast against ``like``, ``Tensor(B, K*C, *S)``."""
    return t.view(-1, *([1] * (like.dim() - 2)))


class Identity(nn.Module):
    """The fusion ``none`` (or any strategy with one present modality): ``y``."""

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        return y


class ChannelGather(nn.Module):
    """``out[:, j] = y[:, index[j]] * mask[j]`` on ``Tensor(B, K*C, *S)``: a constant gather and/or 0/1 mask.

    ``index`` None skips the gather (``discard``), ``mask`` None the mask (``exchange``, ``fixed``).
    """

    def __init__(self, index: Tensor | None, mask: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        if self.index is not None:
            y = y.index_select(1, self.index)
        if self.mask is not None:
            y = y * _channel_view(self.mask, y)
        return y


class ChannelMix(nn.Module):
    """``out[:, m, c] = sum_k weight[m, k, c] * y[:, k, c]`` on the ``(B, K, C, *S)`` view of ``Tensor(B, K*C, *S)``."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)  # (K, K, C)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        num = self.weight.shape[0]
        split = _split(y, num)
        trail = [1] * (split.dim() - 3)
        out = None
        for k in range(num):  # K is small; K products avoid a (B, K, K, C, *S) intermediate
            term = self.weight[:, k].view(1, num, -1, *trail) * split[:, k : k + 1]
            out = term if out is None else out + term
        return out.flatten(1, 2)


class LiveFusion(nn.Module):
    """A strategy that depends on the input (``gated_sum``, ``conditional_norm``, ``token``), run as it is.

    ``gamma`` and ``beta`` are the present modalities' constants, ``(K, C)``. A strategy that
    records statistics (``token``) stops recording: a frozen graph holds no state.
    """

    def __init__(self, fusion: Fusion, gamma: Tensor, beta: Tensor, threshold: float, present) -> None:
        super().__init__()
        if hasattr(fusion, "record_stats"):
            fusion.record_stats = False
        self.fusion = fusion
        self.register_buffer("gamma", gamma)
        self.register_buffer("beta", beta)
        self.threshold = threshold
        self.present = present

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        num = self.gamma.shape[0]
        out = self.fusion(_split(y, num), _split(x, num), self.gamma, self.beta, self.threshold, self.present)
        return out.flatten(1, 2)


class InstanceNormalize(nn.Module):
    """``instance_norm`` without affine on the free view ``Tensor(B, K*C, *S)``."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, flat: Tensor) -> Tensor:
        return F.instance_norm(flat, eps=self.eps)


class GroupNormalize(nn.Module):
    """``group_norm`` without affine over ``groups = K*G`` groups of the free view ``Tensor(B, K*C, *S)``."""

    def __init__(self, groups: int, eps: float) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps

    def forward(self, flat: Tensor) -> Tensor:
        return F.group_norm(flat, self.groups, eps=self.eps)


class LayerNormalize2d(nn.Module):
    """``layer_norm`` over the ``C`` channels of each modality at each position of ``Tensor(B, K*C, *S)``."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps

    def forward(self, flat: Tensor) -> Tensor:
        tokens = flat.unflatten(1, (-1, self.channels)).movedim(2, -1)  # (B, K, *S, C)
        y = F.layer_norm(tokens, (self.channels,), eps=self.eps)
        return y.movedim(-1, 2).flatten(1, 2)


def _post(norm: _ModalityNorm) -> nn.Module | None:
    """``drop`` then ``act`` of a norm + activation twin (eval mode), None for a plain modality norm."""
    return nn.Sequential(norm.drop, norm.act).eval() if isinstance(norm, _NormAct) else None


class FrozenNorm(nn.Module):
    """An inference-only modality norm with constants: ``Tensor(B*K, C, *S)`` -> same.

    On the free view ``(B, K*C, *S)``: ``y = normalize(x)`` (nothing for folded batch
    norms), ``y = y * scale + shift`` (where given), then ``fuse(y, x)``, then ``post``
    (a timm norm's activation) if any.
    """

    def __init__(
        self, num: int, scale: Tensor | None, shift: Tensor | None, fuse: nn.Module, *,
        normalize: nn.Module | None = None, post: nn.Module | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num = num
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.fuse = fuse
        self.normalize = normalize
        self.post = post

    def forward(self, x: Tensor) -> Tensor:
        flat = x.unflatten(0, (-1, self.num)).flatten(1, 2)
        y = flat if self.normalize is None else self.normalize(flat)
        if self.scale is not None:
            y = y * _channel_view(self.scale, y)
        if self.shift is not None:
            y = y + _channel_view(self.shift, y)
        out = self.fuse(y, flat).unflatten(1, (self.num, -1)).flatten(0, 1)
        return out if self.post is None else self.post(out)


class FrozenTokenNorm(nn.Module):
    """A frozen channels-last :class:`cen.nn.ModalityLayerNorm`: ``Tensor(B*K, ..., C)`` -> same.

    ``layer_norm`` over ``C`` without affine, ``scale`` and ``shift`` (``(K*C,)`` constants)
    on the ``(B, K, ..., C)`` view, then the fusion on the channels-first ``(B, K*C, ...)``
    view (skipped, with its two transposes, when it is the identity), then ``post``.
    """

    def __init__(
        self, num: int, channels: int, eps: float, scale: Tensor | None, shift: Tensor | None, fuse: nn.Module,
        post: nn.Module | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num, self.channels, self.eps = num, channels, eps
        self.register_buffer("scale", None if scale is None else scale.view(num, channels))
        self.register_buffer("shift", None if shift is None else shift.view(num, channels))
        self.fuse = fuse
        self.post = post

    def forward(self, x: Tensor) -> Tensor:
        split = F.layer_norm(x, (self.channels,), eps=self.eps).unflatten(0, (-1, self.num))  # (B, K, *S, C)
        shape = (1, self.num) + (1,) * (split.dim() - 3) + (self.channels,)
        if self.scale is not None:
            split = split * self.scale.view(shape)
        if self.shift is not None:
            split = split + self.shift.view(shape)
        if not isinstance(self.fuse, Identity):
            flat = split.movedim(-1, 2).flatten(1, 2)  # (B, K*C, *S)
            inputs = x.unflatten(0, (-1, self.num)).movedim(-1, 2).flatten(1, 2) if isinstance(self.fuse, LiveFusion) \
                else flat  # fmt: skip
            split = self.fuse(flat, inputs).unflatten(1, (self.num, -1)).movedim(2, -1)
        out = split.flatten(0, 1)
        return out if self.post is None else self.post(out)


def _fusion_mix(fusion: Fusion, gamma: Tensor, beta: Tensor, threshold: float, present) -> Tensor:
    """``w``, ``(K, K, C)`` float64, of a linear strategy: its output on one-hot probes.

    Probe ``b`` holds ones in modality ``b`` and zeros elsewhere, so the strategy's
    output for probe ``b``, modality ``m``, channel ``c`` is ``w[m, b, c]``.
    """
    num, channels = gamma.shape
    probe = torch.eye(num, dtype=torch.float64).unsqueeze(-1).expand(num, num, channels).contiguous()
    out = fusion(probe, torch.zeros_like(probe), gamma.double(), beta.double(), threshold, present)
    return out.permute(1, 0, 2).contiguous()


def _lower_mix(mix: Tensor) -> nn.Module:
    """The cheapest module computing the constant mix ``(K, K, C)`` (see the module docstring)."""
    num, _, channels = mix.shape
    own = torch.eye(num, dtype=torch.bool).unsqueeze(-1).expand_as(mix)
    if torch.equal(mix, own.to(mix.dtype)):
        return Identity()
    nonzero = mix != 0
    one_source = nonzero.sum(dim=1) <= 1  # (K, C): each output channel reads at most one input channel
    if bool(one_source.all()) and bool(((mix == 0) | (mix == 1)).all()):
        mask = nonzero.any(dim=1)  # (K, C): False where the output is zero (discard)
        own_index = torch.arange(num).unsqueeze(1).expand(num, channels)
        source = torch.where(mask, nonzero.to(torch.int64).argmax(dim=1), own_index)  # (K, C): the modality read
        index = (source * channels + torch.arange(channels)).reshape(-1)
        gather = None if torch.equal(source, own_index) else index
        keep = None if bool(mask.all()) else mask.reshape(-1).float()
        return ChannelGather(gather, keep)
    return ChannelMix(mix.float())


def _rows(t: Tensor | None, num_modalities: int, present) -> Tensor | None:
    """The present modalities' rows of a ``(M*C,)`` tensor, as ``(K*C,)`` float64."""
    if t is None:
        return None
    t = t.detach().double().view(num_modalities, -1)
    return (t if present is None else t[list(present)]).reshape(-1)


def freeze_norm(norm: _ModalityNorm, name: str, present: tuple[int, ...] | None) -> FrozenNorm:
    """The :class:`FrozenNorm` computing what ``norm.eval()`` computes for the modalities ``present`` (None: all)."""
    fusion = norm.fusion
    if fusion is not None and not fusion.deterministic:
        raise FreezeError(
            f"cannot export: norm {name!r} uses fusion {fusion.name!r}, whose exchanged channels are drawn at random, "
            "not computed from the weights; only fusions fixed by the weights can be frozen"
        )
    if fusion is not None and fusion.needs_all and present is not None:
        raise FreezeError(
            f"cannot export for a subset of modalities: norm {name!r} uses fusion {fusion.name!r}, which reads every "
            "modality"
        )
    num = norm.num_modalities if present is None else len(present)
    weight, bias = _rows(norm.weight, norm.num_modalities, present), _rows(norm.bias, norm.num_modalities, present)
    channels = norm.num_features
    live = fusion is not None and not fusion.linear  # the strategy's own flag (cen.core.fusions.Fusion)
    affine_in_fusion = fusion is not None and fusion.takes_affine
    beta = None if weight is None else torch.zeros_like(weight) if bias is None else bias  # a strategy's shift
    if fusion is None:
        fuse: nn.Module = Identity()
    elif live:
        fuse = LiveFusion(fusion, weight.float().view(num, channels), beta.float().view(num, channels),
                          norm.threshold, present)  # fmt: skip
    else:
        fuse = _lower_mix(
            _fusion_mix(fusion, weight.view(num, channels), beta.view(num, channels), norm.threshold, present)
        )
    norm_weight, norm_bias = (None, None) if affine_in_fusion else (weight, bias)
    scale, shift = (None if t is None else t.float() for t in (norm_weight, norm_bias))
    post = _post(norm)
    if isinstance(norm, ModalityLayerNorm2d):
        return FrozenNorm(num, scale, shift, fuse, normalize=LayerNormalize2d(channels, norm.eps), post=post)
    if isinstance(norm, ModalityLayerNorm):
        return FrozenTokenNorm(num, channels, norm.eps, scale, shift, fuse, post)
    if isinstance(norm, ModalityGroupNorm):
        normalize = GroupNormalize(num * norm.num_groups, norm.eps)
        return FrozenNorm(num, scale, shift, fuse, normalize=normalize, post=post)
    if norm.running_mean is None:
        if not isinstance(norm, ModalityInstanceNorm2d):
            raise FreezeError(
                f"cannot export: norm {name!r} has no running statistics (track_running_stats=False), so it would "
                "normalise with the statistics of each inference batch; train it with running statistics"
            )
        return FrozenNorm(num, scale, shift, fuse, normalize=InstanceNormalize(norm.eps), post=post)
    mean, var = (
        _rows(norm.running_mean, norm.num_modalities, present),
        _rows(norm.running_var, norm.num_modalities, present),
    )
    scale = torch.rsqrt(var + norm.eps)
    if norm_weight is not None:
        scale = scale * norm_weight
    shift = -mean * scale
    if norm_bias is not None:
        shift = shift + norm_bias
    return FrozenNorm(num, scale.float(), shift.float(), fuse, post=post)


class FrozenModel(nn.Module):
    """A frozen :class:`cen.MultiModal`: one tensor per present modality in, a tuple of outputs out.

    ``forward(*inputs)``, each ``Tensor(B, ...)`` in the order of :attr:`inputs`,
    returns one ``Tensor(B, ...)`` per present modality (in that order) and, with an
    ensemble or a concat-fusion head, the fused output last (:attr:`outputs` names
    them). The ensemble weights are ``softmax(alpha)`` over the present modalities,
    as constants; a concat head (``model.concat_head``, every modality present)
    runs on ``model.features`` as it is, its plain norm in eval mode.
    """

    def __init__(
        self, model: nn.Module, inputs: Sequence[str], outputs: Sequence[str], ensemble: Tensor | None,
        concat_head: nn.Module | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.register_buffer("ensemble_weights", ensemble)
        self.concat_head = concat_head

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        num = len(self.inputs)
        x = torch.stack(inputs, dim=1).flatten(0, 1)  # sample-major (B*K, ...), as cen.stack
        if self.concat_head is not None:
            features = self.model.features(x)
            out, fused = self.model.predict(features), self.concat_head(features)
        else:
            out, fused = self.model(x), None
        split = out.unflatten(0, (-1, num))
        preds = [split[:, k] for k in range(num)]
        if fused is not None:
            return (*preds, fused)
        if self.ensemble_weights is None:
            return tuple(preds)
        fused = None
        for k, pred in enumerate(preds):  # the order of cen.Ensemble's sum
            term = self.ensemble_weights[k] * pred
            fused = term if fused is None else fused + term
        return (*preds, fused)


def present_indices(model: MultiModal, present: Sequence[str] | None) -> tuple[int, ...] | None:
    """Model-order indices of ``present`` (None: every modality), after checking the names."""
    if present is None:
        return None
    if isinstance(present, str) or not present:
        raise FreezeError(
            f"present must be a non-empty sequence of modality names from {list(model.names)}, got {present!r}"
        )
    unknown = [n for n in present if n not in model.names]
    if unknown:
        raise FreezeError(f"present modalities {unknown} are not the model's; it takes {list(model.names)}")
    idx = tuple(i for i, n in enumerate(model.names) if n in present)
    return None if len(idx) == len(model.names) else idx


def freeze(model: MultiModal, present: Sequence[str] | None = None) -> FrozenModel:
    """A frozen, inference-only copy of ``model`` for the modalities ``present`` (default all).

    The copy is in fp32 and eval mode; ``model`` is not changed. Raises :class:`FreezeError` (one line, naming the
    module) for what cannot be frozen: the ``random`` fusion, ``gated_sum`` with
    modalities missing, unshared convolutions with modalities missing, batch norms
    without running statistics.
    """
    from cen.core.defaults import ENSEMBLE_KEY

    if not isinstance(model, MultiModal):
        raise FreezeError(f"expected a cen.MultiModal model (e.g. cen.models.RefineNetCEN), got {type(model).__name__}")
    idx = present_indices(model, present)
    names = model.names if idx is None else tuple(model.names[i] for i in idx)
    head = getattr(model, "concat_head", None)  # cen.models.heads: a concat-fusion block instead of the ensemble
    if head is not None and idx is not None:
        raise FreezeError(f"cannot export for a subset of modalities: the concat-fusion head reads every modality "
                          f"of {list(model.names)}")  # fmt: skip
    net, head = copy.deepcopy((model.model, head))
    net.float().eval().requires_grad_(False)  # inference in fp32, whatever the training precision
    if head is not None:
        head.float().eval().requires_grad_(False)
    for name, module in list(net.named_modules()):
        if isinstance(module, _ModalityNorm):
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent), attr, freeze_norm(module, f"model.{name}", idx))
        elif idx is not None and isinstance(module, (ModalityConv2d, ModalityLinear)):
            raise FreezeError(
                f"cannot export for a subset of modalities: {name!r} is an unshared (private per modality) layer, "
                "which needs every modality"
            )
    outputs = list(names)
    weights = None
    if head is not None:
        outputs.append(ENSEMBLE_KEY)
    elif model.ensemble is not None:
        with torch.no_grad():
            soft = model.ensemble.weights(names)
        weights = torch.stack([soft[n] for n in names]).detach().float()
        outputs.append(ENSEMBLE_KEY)
    return FrozenModel(net, names, outputs, weights, head).eval()
