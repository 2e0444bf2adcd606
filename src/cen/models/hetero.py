"""Heterogeneous fusion: encoders of different kinds, fused by channel exchange in shared MLP layers.

The paper exchanges channels between modalities that run through one shared CNN,
and leaves encoders of different kinds (a CNN and a point-set network) open. Here
each modality keeps its own encoder, projected to a common width ``D``; from there
the modalities are stacked sample-major ``(B*M, D)`` and go through **shared** MLP
layers whose ``BatchNorm1d`` are private per modality and exchange channels
(:func:`cen.convert`), one prediction per modality, and the α-ensemble
(:class:`cen.Ensemble`) — the library's public pieces, used outside its provided models.

=========================  ==============================================================
:class:`ImageEncoder`      small CNN: ``(B, 3, H, W)`` -> ``(B, D)``
:class:`PointNetEncoder`   shared per-point MLP + max pool: ``(B, N, 3)`` -> ``(B, D)``
:class:`HeteroCEN`         encoders -> shared MLP (private norms, exchange) -> per-modality
                           predictions + ensemble; exchange off = late fusion
:class:`ConcatFusion`      encoders -> concatenated embeddings -> MLP -> one prediction
=========================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from cen.core.convert import convert
from cen.core.multimodal import MultiModal
from cen.core.spec import FusionSpec, model_spec
from cen.core.stacking import check_names

#: Output name of :class:`ConcatFusion`'s single prediction.
CONCAT_KEY = "concat"


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ImageEncoder(nn.Module):
    """A small CNN: stride-2 3x3 conv blocks, global average and max pooling, a linear projection.

    ``(B, in_channels, H, W)`` -> ``(B, out_dim)``. Both poolings are kept because a
    scene-level presence label can hinge on a small region (max) or on the whole view (mean).
    """

    def __init__(self, out_dim: int, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.features = nn.Sequential(*(_conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.project = nn.Linear(2 * chans[-1], out_dim)
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ImageEncoder expects images (B, {self.in_channels}, H, W), got {shape}")
        f = self.features(x)
        return self.project(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))


class PointNetEncoder(nn.Module):
    """PointNet-style set encoder: one MLP shared by every point (1x1 convs), max over points, a projection.

    ``(B, N, in_features)`` -> ``(B, out_dim)``, invariant to the order of the ``N`` points
    (the per-point layers and the batch norm's statistics over ``B*N`` points do not
    depend on it, and the max pool is symmetric). Every cloud of a batch must have the
    same ``N``: sample a fixed number per cloud (see :func:`cen.tasks.presence.data.sample_points`).
    """

    def __init__(
        self, out_dim: int, widths: Sequence[int] = (32, 64, 128), in_features: int = 3, name: str = "points"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [in_features, *widths]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(a, b, 1, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        self.point_mlp = nn.Sequential(*layers)
        self.project = nn.Linear(chans[-1], out_dim)
        self.in_features = in_features
        self.name = name

    def forward(self, points: Tensor | Sequence[Tensor]) -> Tensor:
        points = self._check(points)
        f = self.point_mlp(points.transpose(1, 2))  # (B, F, N)
        return self.project(f.amax(2))

    def _check(self, points) -> Tensor:
        if isinstance(points, Sequence) and not isinstance(points, str):
            sizes = [int(p.shape[0]) if isinstance(p, Tensor) and p.ndim == 2 else None for p in points]
            if len(set(sizes)) > 1:
                raise ValueError(
                    f"modality {self.name!r}: point clouds of different sizes {sizes[:8]}"
                    f"{' ...' if len(sizes) > 8 else ''} in one batch; {type(self).__name__} needs a (B, N, "
                    f"{self.in_features}) tensor: sample a fixed number of points per cloud (data.num_points) or "
                    "batch them with a collate rule"
                )
            points = torch.stack(list(points)) if points else points
        if not isinstance(points, Tensor) or points.ndim != 3 or points.shape[2] != self.in_features:
            shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(
                f"modality {self.name!r}: {type(self).__name__} expects points (B, N, {self.in_features}), got {shape}"
            )
        if points.shape[1] == 0:
            raise ValueError(f"modality {self.name!r}: the point clouds are empty (N = 0)")
        return points


def shared_mlp(width: int, layers: int) -> nn.Sequential:
    """``layers`` x [Linear(D, D, bias=False), BatchNorm1d(D), ReLU]: the part that :func:`cen.convert` makes multimodal."""
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*blocks)


class HeteroCEN(nn.Module):
    """Encoders of different kinds fused by channel exchange in shared MLP layers.

    Args:
        encoders: ``{modality: encoder}``, each mapping its input to ``(B, width)``;
            the order is the order of the stacked modalities. Not shared, not converted.
        width: ``D``, the common width of the embeddings and of the shared layers.
        num_outputs: ``K``, the size of each prediction (e.g. one logit per class).
        layers: number of shared MLP blocks; each block's norm is a fusion point.
        spec: the fusion settings (:class:`cen.FusionSpec`): ``points="auto"`` (or ``True``) makes
            every shared block's norm a fusion point, ``False`` none (late fusion through the
            ensemble only, the same network otherwise); θ defaults to
            :data:`cen.core.defaults.THRESHOLD`. ``shared_convs=False`` is not supported here (the
            shared MLP is the point of the model).
        threshold, exchange, fusion, fusion_options: the same settings as loose keywords (older code).
        ensemble: add the α-ensemble (only with two or more modalities).
        private_heads: give each modality its own output layer (:class:`cen.nn.ModalityLinear`);
            by default the head is shared, as every layer but the norms in the paper. Private
            heads need every modality at every call.

    ``forward({modality: input})`` -> ``{modality: Tensor(B, K)}`` plus ``"ensemble"``. In
    evaluation mode any non-empty subset of the modalities may be given (shared head).
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        width: int,
        num_outputs: int,
        spec: FusionSpec | Mapping | None = None,
        *,
        layers: int = 2,
        ensemble: bool = True,
        private_heads: bool = False,
        threshold: float | None = None,
        exchange: bool | None = None,
        fusion: str | None = None,
        fusion_options: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__()
        names = check_names(list(encoders), "HeteroCEN encoders")
        if width < 1 or num_outputs < 1 or layers < 1:
            raise ValueError(f"width, num_outputs and layers must be >= 1, got {width}, {num_outputs}, {layers}")
        spec = model_spec(spec, threshold=threshold, exchange=exchange, fusion=fusion, fusion_options=fusion_options)
        if not spec.shared_convs:
            raise ValueError("HeteroCEN shares its MLP by design; shared_convs=False is not supported")
        self.spec = spec
        self.encoders = nn.ModuleDict(dict(encoders))
        points = spec.has_points and len(names) > 1
        mlp = convert(shared_mlp(width, layers), len(names), spec.replace(points=True if points else False))
        head: nn.Module = nn.Linear(width, num_outputs)
        if private_heads:  # one Linear per modality, run as one batched product (cen.nn.ModalityLinear)
            head = convert(head, len(names), shared_convs=False, exchange=False)
        self.private_heads = private_heads
        self.fused = MultiModal(nn.Sequential(mlp, head), names, ensemble=ensemble and len(names) > 1)
        self.width, self.num_outputs = width, num_outputs

    @property
    def names(self) -> tuple[str, ...]:
        return self.fused.names

    @property
    def ensemble(self):
        return self.fused.ensemble

    def embed(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{modality: Tensor(B, width)}`` of the present modalities, each from its own encoder."""
        present = self.fused.present_names(inputs)
        if self.private_heads and len(present) < len(self.names):
            missing = [n for n in self.names if n not in present]
            raise ValueError(
                f"modalities {missing} are missing; private heads need every modality of {list(self.names)}"
            )
        out = {}
        for name in present:
            z = self.encoders[name](inputs[name])
            if z.ndim != 2 or z.shape[1] != self.width:
                raise ValueError(f"the encoder of {name!r} returned {tuple(z.shape)}; expected (B, {self.width})")
            out[name] = z
        return out

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.fused(self.embed(inputs))


class ConcatFusion(nn.Module):
    """The concatenation baseline: encoders -> ``(B, M*width)`` -> MLP -> one prediction ``{"concat": (B, K)}``.

    The same encoders as :class:`HeteroCEN`; the MLP's first layer takes the concatenated
    embeddings, the next ones ``width`` features. Every modality is needed at every call.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], width: int, num_outputs: int, *, layers: int = 2) -> None:
        super().__init__()
        self.names = check_names(list(encoders), "ConcatFusion encoders")
        self.encoders = nn.ModuleDict(dict(encoders))
        mlp = shared_mlp(width, layers)
        mlp[0] = nn.Linear(len(self.names) * width, width, bias=False)
        self.mlp = mlp
        self.head = nn.Linear(width, num_outputs)
        self.ensemble = None

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        missing = [n for n in self.names if n not in inputs]
        unknown = [n for n in inputs if n not in self.names]
        if missing or unknown:
            raise ValueError(
                f"ConcatFusion needs exactly the modalities {list(self.names)}; missing {missing}, unknown {unknown}"
            )
        z = torch.cat([self.encoders[n](inputs[n]) for n in self.names], 1)
        return {CONCAT_KEY: self.head(self.mlp(z))}
