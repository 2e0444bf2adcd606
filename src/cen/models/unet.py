"""CEN pix2pix U-Net for multimodal image-to-image translation (the paper's second task).

:class:`UNetGenerator` is a plain pix2pix U-Net generator, the one of the
reference code: ``num_downs`` down-blocks and as many up-blocks with skip
connections, 4x4 convolutions of stride 2 (padding 1), each block
*pre-activated* (LeakyReLU 0.2 before a down-convolution, ReLU before an
up-convolution, the first down-block sees the raw image), affine
``InstanceNorm2d`` tracking running statistics after the convolution, dropout
0.5 after the norm of the three innermost up-blocks, and ``tanh`` at the end.
As in the reference, the outermost down-block, the innermost down-block (whose
output is 1x1 at 256x256) and the last up-block have no norm.

Widths: down-block ``i`` (1-based) outputs ``ngf * min(2**(i-1), 8)`` channels
(64, 128, 256, 512, 512, 512, 512, 512 for ngf 64 and 8 levels); up-block ``j``
outputs the width of down-block ``num_downs - j`` (the last one
``out_channels``) and takes the previous up-block's output concatenated with the
matching down-block's output (the innermost up-block takes the bottleneck
alone).

:class:`UNetCEN` converts that generator with :func:`cen.convert`: the
convolutions are shared by all inputs, every InstanceNorm becomes private, and
the norms of the down-blocks that have one (blocks 2 .. ``num_downs - 1``, i.e.
blocks 2-7 of the reference's 8) exchange channels (paper Eq. 6). The
up-blocks do not exchange. Each input gets its own output through the shared
generator; a learned ``alpha`` fuses them (:class:`cen.Ensemble`, branches
detached), or, with ``head="concat"``, a concat-fusion block on their last
features (:mod:`cen.models.heads`).

With fewer levels (e.g. ``num_downs=6`` for 64x64 images) the same rules hold:
exchange after the norm of every down-block but the first and the last, dropout
in the first ``min(3, num_downs - 1)`` up-blocks (the innermost ones, as the
reference). ``num_downs >= 3`` so that at least one block exchanges. Images must
have sides that are multiples of ``2**num_downs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.convert import convert
from cen.core.defaults import TRANSLATION_THRESHOLD
from cen.core.spec import FusionSpec, model_spec
from cen.core.stacking import check_names
from cen.models.heads import ConcatFusionHead, HeadedMultiModal, check_head

#: Number of innermost up-blocks followed by dropout (the reference: deconv1-3).
DROPOUT_BLOCKS = 3
#: Slope of the down-blocks' LeakyReLU.
LEAKY_SLOPE = 0.2
MIN_DOWNS = 3


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    """The reference's norm: affine, tracking running statistics (used only in eval mode)."""
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)


def down_widths(ngf: int, num_downs: int) -> list[int]:
    """Output channels of down-blocks 1 .. ``num_downs``: ``ngf * min(2**(i-1), 8)``."""
    return [ngf * min(2**i, 8) for i in range(num_downs)]


class DownBlock(nn.Module):
    """``[LeakyReLU 0.2] -> Conv2d(4, stride 2, pad 1) -> [InstanceNorm2d]``: ``(N, Cin, H, W)`` -> ``(N, Cout, H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int, *, activation: bool, norm: bool) -> None:
        super().__init__()
        self.activation = activation
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.norm = instance_norm(out_channels) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            x = F.leaky_relu(x, LEAKY_SLOPE)
        x = self.conv(x)
        return x if self.norm is None else self.norm(x)


class UpBlock(nn.Module):
    """``ReLU -> ConvTranspose2d(4, stride 2, pad 1) -> [InstanceNorm2d] -> [Dropout]``: doubles H and W."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: bool, dropout: float) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.norm = instance_norm(out_channels) if norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.relu(x))
        if self.norm is not None:
            x = self.norm(x)
        return x if self.dropout is None else self.dropout(x)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class UNetGenerator(nn.Module):
    """The plain pix2pix U-Net generator (see the module docstring): ``(N, in, H, W)`` -> ``(N, out, H, W)`` in [-1, 1].

    Args:
        in_channels: channels of the input image.
        out_channels: channels of the generated image.
        ngf: width of the first down-block (64 in the reference).
        num_downs: number of down- (and up-) blocks, ``>= 3`` (8 in the reference,
            for 256x256 images); ``H`` and ``W`` must be multiples of ``2**num_downs``.
        dropout: probability of the dropout after the innermost three up-blocks.

    Modules: ``down.0`` .. ``down.{n-1}`` and ``up.0`` .. ``up.{n-1}`` (the
    reference's ``conv1`` .. ``conv8`` and ``deconv1`` .. ``deconv8``), each with
    ``conv`` and, where it applies one, ``norm``.
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, num_downs: int = 8, *, dropout: float = 0.5
    ) -> None:
        super().__init__()
        _check_int(in_channels, "in_channels", 1)
        _check_int(out_channels, "out_channels", 1)
        _check_int(ngf, "ngf", 1)
        _check_int(num_downs, "num_downs", MIN_DOWNS)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ngf = ngf
        self.num_downs = num_downs
        widths = down_widths(ngf, num_downs)
        n = num_downs
        self.down = nn.ModuleList(
            DownBlock(in_channels if i == 0 else widths[i - 1], widths[i], activation=i > 0, norm=0 < i < n - 1)
            for i in range(n)
        )
        ups = []
        for j in range(n):  # up-block j mirrors down-block n-1-j
            cin = widths[n - 1] if j == 0 else 2 * widths[n - 1 - j]
            cout = out_channels if j == n - 1 else widths[n - 2 - j]
            ups.append(
                UpBlock(cin, cout, norm=j < n - 1, dropout=float(dropout) if j < min(DROPOUT_BLOCKS, n - 1) else 0.0)
            )
        self.up = nn.ModuleList(ups)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: ``2**num_downs``."""
        return 2**self.num_downs

    def exchange_norm_names(self) -> list[str]:
        """Qualified names of the norms CEN exchanges after: those of down-blocks 2 .. ``num_downs - 1``."""
        return [f"down.{i}.norm" for i in range(1, self.num_downs - 1)]

    def check_input(self, x: Tensor) -> None:
        """One-line ``ValueError`` unless ``x`` is ``(N, in_channels, H, W)`` with sides multiples of ``2**num_downs``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNetGenerator expects images (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"image size {h}x{w} cannot be halved {self.num_downs} times: with num_downs={self.num_downs} "
                f"height and width must be multiples of {self.multiple}"
            )

    def features(self, x: Tensor) -> Tensor:
        """Images ``(N, in, H, W)`` -> the input of the last convolution, ``(N, 2*ngf, H/2, W/2)``.

        That is ``relu(cat([up-block n-1's output, down-block 1's output]))``: the
        last up-block applies its ReLU and then only its transposed convolution
        (no norm, no dropout), see :meth:`predict`.
        """
        self.check_input(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()  # the bottleneck
        for j, block in enumerate(self.up[:-1]):
            if j > 0:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x)
        return F.relu(torch.cat([x, skips.pop()], dim=1))

    def predict(self, features: Tensor) -> Tensor:
        """:meth:`features` -> images ``(N, out, H, W)`` in [-1, 1]: the last transposed convolution and ``tanh``."""
        return torch.tanh(self.up[-1].conv(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.predict(self.features(x))


class UNetCEN(HeadedMultiModal):
    """CEN image translation: ``{name: Tensor(B, in, H, W)}`` -> ``{name: Tensor(B, out, H, W), ..., "ensemble": ...}``.

    A :class:`UNetGenerator` converted with :func:`cen.convert` for the given
    inputs: shared convolutions, private InstanceNorms, channel exchange after the
    norms of down-blocks 2 .. ``num_downs - 1`` (see the module docstring).

    Args:
        modalities: the input domains, in order (their norm slots and ``alpha``
            follow it), e.g. ``("reshading", "edge_texture")``. One name gives a
            plain single-input U-Net on the same code path.
        in_channels, out_channels, ngf, num_downs, dropout: as :class:`UNetGenerator`.
        spec: the fusion settings (:class:`cen.FusionSpec`); ``points="auto"`` are the norms of
            down-blocks 2 .. ``num_downs - 1``; θ defaults to the reference's 1e-2.
        ensemble: add a fused output (only with two or more inputs), made by ``head``.
        head: ``"ensemble"`` (the learned ``alpha``-ensemble of the detached
            branch outputs) or ``"concat"`` (the concat-fusion block, see
            :mod:`cen.models.heads`): the features the last up-block's transposed
            convolution reads, ``relu(cat(...))`` of shape ``(B*M, 2*ngf, H/2, W/2)``,
            viewed as ``(B, M*2*ngf, H/2, W/2)``, go through 3x3 conv
            ``M*2*ngf -> 2*ngf`` (no bias), an affine ``InstanceNorm2d(2*ngf)``
            tracking running statistics (as the generator's), ReLU, a
            ``ConvTranspose2d(2*ngf, out, 4, stride 2, pad 1)`` and ``tanh``, like the
            branches. Not detached: the fused loss also trains the generator.
            Every input must then be given, at inference too.
        threshold, exchange, fusion, fusion_options, shared_convs: the same settings as loose
            keywords (older code; ``exchange=False``: private norms, no fusion point). With
            ``shared_convs=False`` every input gets private copies of the down-blocks'
            convolutions (one grouped convolution each, :mod:`cen.core.unshared`); the up-blocks'
            transposed convolutions stay shared, as :func:`cen.convert` unshares ``Conv2d`` and
            ``Linear`` only.

    Output values are in [-1, 1] (``tanh``); with ``head="ensemble"`` the fused
    output is ``sum_m softmax(alpha)_m * out_m`` with the branches detached (the
    ensemble loss trains ``alpha`` only). At inference (``.eval()``) any non-empty
    subset of the inputs may be given with ``head="ensemble"``
    (``head="concat"``, ``shared_convs=False`` and ``fusion="gated_sum"`` need every
    input). Note that the reference evaluates the generator in train mode
    (instance statistics, dropout on); ``.eval()`` uses the norms' running
    statistics.

    State dict: ``model.down.{i}.conv.*``, ``model.down.{i}.norm.*`` (``M*C``
    channels, input ``m``'s channel ``c`` at ``m*C + c``), ``model.up.{j}.*``,
    ``ensemble.alpha`` (head ``"ensemble"``) or ``concat_head.fuse.weight``,
    ``concat_head.norm.*``, ``concat_head.out.0.*`` (head ``"concat"``).
    ``config`` holds the constructor arguments (the spec as a dict), so ``UNetCEN(**config)`` rebuilds it.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        spec: FusionSpec | Mapping | None = None,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        num_downs: int = 8,
        ensemble: bool = True,
        head: str = "ensemble",
        dropout: float = 0.5,
        threshold: float | None = None,
        exchange: bool | None = None,
        fusion: str | None = None,
        fusion_options: Mapping[str, object] | None = None,
        shared_convs: bool | None = None,
    ) -> None:
        names = check_names(modalities, "modalities")
        spec = model_spec(
            spec, default_threshold=TRANSLATION_THRESHOLD, threshold=threshold, exchange=exchange, fusion=fusion,
            fusion_options=fusion_options, shared_convs=shared_convs,
        )  # fmt: skip
        check_head(head, len(names), bool(ensemble))
        fused = bool(ensemble) and len(names) > 1
        generator = UNetGenerator(in_channels, out_channels, ngf, num_downs, dropout=dropout)
        points = generator.exchange_norm_names() if spec.points == "auto" else spec.points
        convert(generator, len(names), spec.replace(points=points))
        concat = None
        if head == "concat":
            width = 2 * ngf
            out = nn.Sequential(nn.ConvTranspose2d(width, out_channels, kernel_size=4, stride=2, padding=1), nn.Tanh())
            concat = ConcatFusionHead(len(names), width, norm=instance_norm(width), out=out)
        super().__init__(generator, names, concat_head=concat, ensemble=fused)
        self.spec = spec
        self.threshold = spec.threshold
        self.config = {
            "modalities": list(names),
            "spec": spec.to_dict(),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "ngf": ngf,
            "num_downs": num_downs,
            "ensemble": fused,
            "head": head,
            "dropout": float(dropout),
        }

    @property
    def generator(self) -> UNetGenerator:
        """The converted U-Net (shared convolutions, private norms), run on the stacked batch."""
        return self.model

    def extra_repr(self) -> str:
        g = self.model
        return (
            f"modalities={list(self.names)}, ngf={g.ngf}, num_downs={g.num_downs}, threshold={self.threshold}, "
            f"head={self.head!r}"
        )


__all__ = ["DownBlock", "UNetCEN", "UNetGenerator", "UpBlock", "down_widths"]
