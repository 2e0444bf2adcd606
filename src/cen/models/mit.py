"""SegFormer's Mix Transformer (MiT-B0 ... MiT-B5) as a multi-scale encoder.

Written from the paper (Xie et al., "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers", NeurIPS 2021, Sec. 3.1 and Appendix A):

* **Overlapping patch embeddings**: stage 1 embeds the image with a 7x7
  convolution of stride 4 (padding 3), stages 2-4 the previous stage's feature
  map with a 3x3 convolution of stride 2 (padding 1); each is followed by a
  LayerNorm over the channels. Strides 4, 8, 16, 32; no positional encoding.
* **Efficient self-attention**: multi-head attention whose keys and values come
  from a sequence shortened by a spatial-reduction ratio ``R`` (8, 4, 2, 1 in
  stages 1-4): a ``R x R`` convolution of stride ``R`` over the token grid
  (the paper's reshape of ``R x R`` tokens into one followed by a linear layer),
  then a LayerNorm. ``R = 1`` attends over all tokens.
* **Mix-FFN**: ``x + fc2(GELU(DWConv3x3(fc1(LN(x)))))``, the 3x3 depthwise
  convolution giving the positional cue, hidden width ``4 C``.
* Pre-norm blocks (``x + attn(norm1(x))``, ``x + ffn(norm2(x))``) with stochastic
  depth rising linearly from 0 to ``drop_path_rate`` (0.1 in the paper's
  training) over all blocks, and a LayerNorm at the end of every stage.

Variants (widths C, depths L; heads 1, 2, 5, 8 in every variant):

======== ====================== ==============
variant  widths                 depths
======== ====================== ==============
MiT-B0   32, 64, 160, 256       2, 2, 2, 2
MiT-B1   64, 128, 320, 512      2, 2, 2, 2
MiT-B2   64, 128, 320, 512      3, 4, 6, 3
MiT-B3   64, 128, 320, 512      3, 4, 18, 3
MiT-B4   64, 128, 320, 512      3, 8, 27, 3
MiT-B5   64, 128, 320, 512      3, 6, 40, 3
======== ====================== ==============

Parameters: 3.3 M (B0), 13.2 M, 24.2 M, 44.1 M, 60.8 M, 81.4 M (B5); the paper's
encoder sizes are 3.4, 13.1, 24.2, 44.0, 60.8 and 81.4 M
(``tests/models/test_mit.py``).

CEN: every block is a :class:`MiTBlock` registered with
:func:`cen.register_exchange_point` at its first LayerNorm ``norm1`` (the norm
whose output feeds the attention), so ``exchange="auto"`` exchanges there once
:func:`cen.convert` converts LayerNorms. Tokens travel as ``(B, N, C)``, so a
modality-stacked batch ``(B*M, N, C)`` keeps modality ``m`` of sample ``b`` in row
``b*M + m`` through the whole encoder.

State dict (our names): ``stages.{i}.embed.{proj,norm}``,
``stages.{i}.blocks.{j}.{norm1,attn.{q,kv,sr,sr_norm,proj},norm2,ffn.{fc1,dwconv,fc2}}``,
``stages.{i}.norm``. :func:`mit_state_dict` also accepts the key names of the
SegFormer release's ImageNet files (``patch_embed1.proj.weight``,
``block1.0.attn.q.weight``, ``norm1.weight``, ...), renaming them to ours.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.convert import exchange_point
from cen.models.state_dicts import describe_key_mismatch, key_mismatch

#: LayerNorm epsilon of every norm in MiT.
EPS = 1e-6


@dataclass(frozen=True)
class MiTVariant:
    """The sizes of one MiT variant (one entry per stage)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4


_WIDE = (64, 128, 320, 512)

#: The six variants of the paper, by backbone name.
MIT_VARIANTS: dict[str, MiTVariant] = {
    "mit_b0": MiTVariant((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": MiTVariant(_WIDE, (2, 2, 2, 2)),
    "mit_b2": MiTVariant(_WIDE, (3, 4, 6, 3)),
    "mit_b3": MiTVariant(_WIDE, (3, 4, 18, 3)),
    "mit_b4": MiTVariant(_WIDE, (3, 8, 27, 3)),
    "mit_b5": MiTVariant(_WIDE, (3, 6, 40, 3)),
}


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's (row's) residual branch with probability ``p``, scale the rest."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _tokens(x: Tensor) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, h*w, C)``."""
    return x.flatten(2).transpose(1, 2)


def _grid(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, h*w, C)`` -> ``(B, C, h, w)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


class OverlapPatchEmbed(nn.Module):
    """``kernel x kernel`` convolution of stride ``stride`` (padding ``kernel // 2``), then a LayerNorm.

    ``(B, C_in, H, W)`` -> tokens ``(B, h*w, C)`` and the grid size ``(h, w)``.
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(channels, eps=EPS)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        size = (x.shape[-2], x.shape[-1])
        return self.norm(_tokens(x)), size


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with keys and values from a grid reduced ``sr_ratio`` times per side.

    Tokens ``(B, N, C)`` on an ``(h, w)`` grid -> ``(B, N, C)``. Queries come from all
    ``N`` tokens; keys and values from the ``(h // R) * (w // R)`` tokens of a ``R x R``
    convolution of stride ``R`` followed by a LayerNorm (``R = 1``: all tokens, no reduction).
    """

    def __init__(self, channels: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)  # keys in the first C outputs, values in the last C
        self.proj = nn.Linear(channels, channels)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(channels, channels, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(channels, eps=EPS)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).view(b, n, self.heads, d).transpose(1, 2)
        source = self.sr_norm(_tokens(self.sr(_grid(x, size)))) if self.sr_ratio > 1 else x
        k, v = self.kv(source).view(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, per head
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, sr_ratio={self.sr_ratio}"


class MixFFN(nn.Module):
    """``fc2(GELU(dwconv3x3(fc1(x))))``: tokens ``(B, N, C)`` on an ``(h, w)`` grid -> ``(B, N, C)``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = _tokens(self.dwconv(_grid(self.fc1(x), size)))
        return self.fc2(self.act(x))


@exchange_point("norm1")
class MiTBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + ffn(norm2(x))`` (each branch under stochastic depth).

    Tokens ``(B, N, C)`` on an ``(h, w)`` grid -> ``(B, N, C)``. ``norm1`` is the
    block's exchange point for ``cen.convert(exchange="auto")``.
    """

    def __init__(self, channels: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=EPS)
        self.attn = EfficientSelfAttention(channels, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(channels, eps=EPS)
        self.ffn = MixFFN(channels, mlp_ratio * channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.ffn(self.norm2(x), size))


class MiTStage(nn.Module):
    """Patch embedding, ``len(drop_paths)`` blocks, a LayerNorm: ``(B, C_in, H, W)`` -> ``(B, C, H/s, W/s)``."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        kernel: int,
        stride: int,
        heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_paths: Sequence[float],
    ) -> None:
        super().__init__()
        self.sr_ratio = sr_ratio
        self.embed = OverlapPatchEmbed(in_channels, channels, kernel, stride)
        self.blocks = nn.ModuleList(MiTBlock(channels, heads, sr_ratio, mlp_ratio, p) for p in drop_paths)
        self.norm = nn.LayerNorm(channels, eps=EPS)

    def forward(self, x: Tensor) -> Tensor:
        tokens, size = self.embed(x)
        if min(size) < self.sr_ratio:
            raise ValueError(
                f"MiT: a {size[0]}x{size[1]} token grid is smaller than the spatial reduction {self.sr_ratio} "
                f"of its attention; the input ({x.shape[-2]}x{x.shape[-1]} here) is too small (stage 1 needs >= 29x29)"
            )
        for block in self.blocks:
            tokens = block(tokens, size)
        return _grid(self.norm(tokens), size)


class MixTransformer(nn.Module):
    """SegFormer's Mix Transformer encoder: ``Tensor(N, in_channels, H, W)`` -> one feature map per stage.

    Args:
        widths: channels of each stage (e.g. ``(32, 64, 160, 256)`` for MiT-B0).
        depths: blocks per stage.
        heads: attention heads per stage (each must divide its width).
        sr_ratios: spatial-reduction ratio of each stage's attention.
        mlp_ratio: hidden width of the Mix-FFN, in multiples of the stage width (one for all stages, or one per stage).
        in_channels: channels of the input image.
        drop_path_rate: stochastic depth of the last block (0 for the first, linear in between).

    Stage 1 embeds with a 7x7 convolution of stride 4, the others with 3x3 of stride 2,
    so stage ``i`` (from 0) has stride ``4 * 2**i``. ``forward`` returns the tuple of
    stage outputs ``(N, widths[i], ~H / strides[i], ~W / strides[i])``, shallowest
    first. Attributes: ``out_channels``, ``strides``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        heads: Sequence[int],
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: int | Sequence[int] = 4,
        *,
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        widths, depths, heads, sr_ratios = (tuple(v) for v in (widths, depths, heads, sr_ratios))
        n = len(widths)
        mlp_ratios = (mlp_ratio,) * n if isinstance(mlp_ratio, int) else tuple(mlp_ratio)
        if n < 1 or not all(len(v) == n for v in (depths, heads, sr_ratios, mlp_ratios)):
            raise ValueError(
                f"widths, depths, heads, sr_ratios (and mlp_ratio, if a sequence) must have one entry per stage "
                f"(>= 1), got {widths}, {depths}, {heads}, {sr_ratios}, {mlp_ratio}"
            )
        named = {"widths": widths, "depths": depths, "heads": heads, "sr_ratios": sr_ratios, "mlp_ratio": mlp_ratios}
        for label, values in named.items():
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"{label} must be positive ints, got {values}")
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        total = sum(depths)
        rates = [float(drop_path_rate) * i / max(total - 1, 1) for i in range(total)]
        stages, start, channels = [], 0, in_channels
        for i in range(n):
            stages.append(
                MiTStage(
                    channels,
                    widths[i],
                    kernel=7 if i == 0 else 3,
                    stride=4 if i == 0 else 2,
                    heads=heads[i],
                    sr_ratio=sr_ratios[i],
                    mlp_ratio=mlp_ratios[i],
                    drop_paths=rates[start : start + depths[i]],
                )
            )
            start += depths[i]
            channels = widths[i]
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths
        self.strides = tuple(4 * 2**i for i in range(n))
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(N, C_in, H, W)`` -> ``(f_1, ..., f_n)``, ``f_i`` of shape ``(N, out_channels[i], h_i, w_i)``."""
        if x.dim() != 4:
            raise ValueError(f"MiT expects images (N, C, H, W), got shape {tuple(x.shape)}")
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return tuple(features)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_mit(name: str, *, in_channels: int = 3, drop_path_rate: float = 0.1) -> MixTransformer:
    """MiT variant ``name`` (a key of :data:`MIT_VARIANTS`), randomly initialised."""
    if name not in MIT_VARIANTS:
        raise ValueError(f"unknown MiT variant {name!r}; known: {', '.join(MIT_VARIANTS)}")
    return MixTransformer(**asdict(MIT_VARIANTS[name]), in_channels=in_channels, drop_path_rate=drop_path_rate)


# -- weights ----------------------------------------------------------------------

_RELEASE_STAGE_KEY = re.compile(r"^(patch_embed|block|norm)(\d+)\.(.*)$")
_RELEASE_INNER = (("attn.norm.", "attn.sr_norm."), ("mlp.dwconv.dwconv.", "ffn.dwconv."), ("mlp.", "ffn."))


def _rename_release_key(key: str) -> str | None:
    """A key of the SegFormer release's MiT files -> ours (``None`` for the classifier ``head.*``)."""
    if key.startswith("head."):
        return None
    match = _RELEASE_STAGE_KEY.match(key)
    if match is None:
        return key  # left as it is: reported as unexpected if it is not ours
    kind, stage, rest = match[1], int(match[2]) - 1, match[3]
    if kind == "patch_embed":
        return f"stages.{stage}.embed.{rest}"
    if kind == "norm":
        return f"stages.{stage}.norm.{rest}"
    block, _, rest = rest.partition(".")
    for old, new in _RELEASE_INNER:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return f"stages.{stage}.blocks.{block}.{rest}"


def mit_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sd`` in our names: our own keys unchanged, or the SegFormer release's keys renamed (its ``head`` dropped)."""
    if "patch_embed1.proj.weight" not in sd:
        return dict(sd)
    out = {}
    for key, value in sd.items():
        new = _rename_release_key(key)
        if new is not None:
            out[new] = value
    return out


def load_mit_weights(model: MixTransformer, sd: Mapping[str, Tensor], source: str, name: str = "MiT") -> None:
    """Load ``sd`` (our names or the SegFormer release's) into ``model`` (a ``name``); a mismatch names ``source`` and keys."""
    sd = mit_state_dict(sd)
    mismatch = key_mismatch(model.state_dict(), sd)
    if mismatch:
        raise ValueError(f"{source} does not hold {name} weights: {describe_key_mismatch(mismatch)}")
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


__all__ = [
    "MIT_VARIANTS",
    "DropPath",
    "EfficientSelfAttention",
    "MiTBlock",
    "MiTStage",
    "MiTVariant",
    "MixFFN",
    "MixTransformer",
    "OverlapPatchEmbed",
    "build_mit",
    "load_mit_weights",
    "mit_state_dict",
]
