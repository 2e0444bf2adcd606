"""Translation metrics per branch: L1, RMSE, FID and KID, accumulated as batches stream by.

L1 and RMSE are computed on the images as the generator produces them, in [-1, 1]
(the scale of the training L1 loss), over every pixel and channel of the evaluated
set: ``l1 = mean |fake - real|``, ``rmse = sqrt(mean (fake - real)^2)``.

FID and KID compare the feature distributions of the generated and the real images.
Both images are first quantised to 8 bits (``round((x + 1) * 127.5)``), as the
reference's saved PNGs were, then passed once through the feature extractor
(:mod:`cen.tasks.translation.features`); the features feed torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance``, whose states torchmetrics
gathers across processes under DDP. The real images' features are computed once per
batch and shared by every branch when the same ``real`` tensor is passed for each.

KID: unbiased MMD estimate with the polynomial kernel ``(x.y / d + 1) ** 3``, averaged
over 50 random subsets of ``min(1000, n)`` images (``n``: the smaller of the real and
generated counts; with ``n <= 1000`` every subset is the whole set, reordered, so
``kid_std`` is 0), reported x100. Subsets are drawn from a fixed seed without touching
the global random state.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from cen.tasks.translation.features import (
    INCEPTION_FEATURE_NAME,
    SCENES_FEATURE_NAME,
    load_inception,
    load_scenes_features,
)

FEATURES: tuple[str, ...] = ("auto", "inception", "scenes")
KID_SUBSETS = 50
KID_SUBSET_SIZE = 1000
KID_DEGREE = 3
KID_COEF = 1.0
#: Seed of the KID subsets (results do not depend on the global random state).
KID_SEED = 0


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """``|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2)`` for symmetric
    PSD covariances, through symmetric eigendecompositions only (float64). Batched: ``mu`` (..., d),
    ``cov`` (..., d, d), result (...).

    torchmetrics takes the eigenvalues of the non-symmetric ``cov1 @ cov2``; with fewer
    images than feature dimensions the covariances are singular, that eigenproblem is
    ill-conditioned, and the FID of a set against itself in another order came out as
    -0.82 (48 images, 240-d) instead of 0."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    vals, vecs = torch.linalg.eigh((cov1 + cov1.mT) / 2)
    root1 = (vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)) @ vecs.mT
    middle = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.mT) / 2).clamp_min(0).sqrt().sum(-1)
    trace = lambda c: c.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    return (mu1 - mu2).square().sum(-1) + trace(cov1) + trace(cov2) - 2 * cross


class _FID(FrechetInceptionDistance):
    """torchmetrics' FID states and synchronisation, with :func:`frechet_distance`."""

    def compute(self) -> Tensor:
        n_r, n_f = self.real_features_num_samples, self.fake_features_num_samples
        if n_r < 2 or n_f < 2:
            raise ValueError(f"FID needs at least 2 real and 2 generated images; got {int(n_r)} and {int(n_f)}")
        mu_r, mu_f = self.real_features_sum / n_r, self.fake_features_sum / n_f
        cov_r = (self.real_features_cov_sum - n_r * torch.outer(mu_r, mu_r)) / (n_r - 1)
        cov_f = (self.fake_features_cov_sum - n_f * torch.outer(mu_f, mu_f)) / (n_f - 1)
        return frechet_distance(mu_r, cov_r, mu_f, cov_f)


class _Given(nn.Module):
    """Identity "feature network": FID/KID receive features already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 ``round((x + 1) * 127.5)`` (values outside clipped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def build_extractor(features: str = "auto", weights: str | None = None) -> tuple[nn.Module, str]:
    """``(module, name)`` of the feature extractor: ``"inception"`` from the local file
    ``weights``; ``"scenes"`` the shipped substitute (or the ``weights`` file given);
    ``"auto"`` inception if ``weights`` is given, else scenes.

    The name carries the first 8 hex digits of the SHA-256 of the extractor's weights
    (``scenes_cnn_240@1a2b3c4d``): FID and KID are comparable only between numbers computed
    with the same weights, and a retrained feature network gets another name."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r} unknown; expected one of {FEATURES}")
    if features == "auto":
        features = "inception" if weights is not None else "scenes"
    if features == "inception":
        if weights is None:
            raise ValueError("features='inception' needs weights=PATH of torch-fidelity's Inception v3 file")
        net, name = load_inception(weights), INCEPTION_FEATURE_NAME
    else:
        net, name = load_scenes_features(weights), SCENES_FEATURE_NAME
    return net, f"{name}@{weights_digest(net)}"


def weights_digest(module: nn.Module) -> str:
    """The first 8 hex digits of the SHA-256 of ``module``'s state dict (names, shapes and values, in order)."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:8]


class TranslationMetrics(nn.Module):
    """L1, RMSE, FID and KID of every branch (e.g. each input's output and ``"ensemble"``).

    Args:
        branches: names of the outputs that will be scored.
        features: ``"inception"``, ``"scenes"`` or ``"auto"`` (see :func:`build_extractor`).
        weights: weights file of the extractor (required for ``"inception"``).
        device: where the extractor runs and the states live (default CPU).

    ``update(branch, fake, real)`` with (B, 3, H, W) tensors in [-1, 1];
    ``compute() -> {branch: {"l1", "rmse", "fid", "kid", "kid_std", "fid_low", "fid_high", "kid_low",
    "kid_high"}}`` (floats; KID x100; the ``_low`` / ``_high`` pairs are 95 % bootstrap intervals,
    :func:`bootstrap_intervals`);
    ``reset()``. ``feature_name`` names the extractor for tables.
    """

    def __init__(
        self,
        branches: Sequence[str],
        *,
        features: str = "auto",
        weights: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(branches, str) or not branches or len(set(branches)) != len(branches):
            raise ValueError(f"branches {branches!r} invalid; expected a non-empty sequence of distinct names")
        self.branches = tuple(branches)
        extractor, self.feature_name = build_extractor(features, weights)
        d = int(extractor.num_features)
        self.num_features = d
        self.extractor = extractor.eval().requires_grad_(False)
        # ModuleDict keys may not contain "."; branch names are mapped to indices.
        self.l1 = nn.ModuleList(MeanAbsoluteError() for _ in self.branches)
        self.mse = nn.ModuleList(MeanSquaredError() for _ in self.branches)
        self.fid = nn.ModuleList(_FID(feature=_Given(d)) for _ in self.branches)
        with warnings.catch_warnings():  # "will save all extracted features": d-dim features per image, as intended
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")
            self.kid = nn.ModuleList(
                KernelInceptionDistance(
                    feature=_Given(d),
                    subsets=KID_SUBSETS,
                    subset_size=KID_SUBSET_SIZE,
                    degree=KID_DEGREE,
                    gamma=None,
                    coef=KID_COEF,
                )
                for _ in self.branches
            )
        self._index = {b: i for i, b in enumerate(self.branches)}
        self._real_cache: tuple[Tensor, Tensor] | None = None
        self.to(torch.device(device) if device is not None else torch.device("cpu"))

    @property
    def device(self) -> torch.device:
        return self.fid[0].real_features_sum.device

    def _fp32(self):
        """Autocast off: the engine evaluates under bf16/fp16 autocast, but FID and KID are
        defined on fp32 features (and KID's kernel matmuls would otherwise run in bf16)."""
        return torch.autocast(self.device.type, enabled=False)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Features (B, d) float32 of [-1, 1] images (B, 3, H, W), quantised to 8 bits first."""
        with self._fp32():
            return self.extractor(to_uint8(images).to(self.device)).float()

    def _real_features(self, real: Tensor) -> Tensor:
        if self._real_cache is not None and self._real_cache[0] is real:
            return self._real_cache[1]
        f = self.features(real)
        self._real_cache = (real, f)
        return f

    @torch.no_grad()
    def update(self, branch: str, fake: Tensor, real: Tensor) -> None:
        """Add a batch of generated images ``fake`` of ``branch`` and the matching ``real``
        images, both (B, 3, H, W) in [-1, 1]."""
        if branch not in self._index:
            raise ValueError(f"unknown branch {branch!r}; expected one of {self.branches}")
        if fake.shape != real.shape or fake.ndim != 4 or fake.shape[1] != 3:
            raise ValueError(
                f"branch {branch!r}: fake {tuple(fake.shape)} and real {tuple(real.shape)} must both be (B, 3, H, W)"
            )
        i = self._index[branch]
        fake_d = fake.detach().to(self.device, torch.float32)
        real_d = real.detach().to(self.device, torch.float32)
        self.l1[i].update(fake_d.flatten(), real_d.flatten())
        self.mse[i].update(fake_d.flatten(), real_d.flatten())
        f_fake, f_real = self.features(fake), self._real_features(real)
        for metric in (self.fid[i], self.kid[i]):
            metric.update(f_real, real=True)
            metric.update(f_fake, real=False)

    @torch.no_grad()
    def compute(self) -> dict[str, dict[str, float]]:
        """Scores of every branch that received at least two images (FID and KID need two)."""
        out: dict[str, dict[str, float]] = {}
        with self._fp32():
            for b, i in self._index.items():
                count = _synced_count(self.fid[i], int(self.fid[i].fake_features_num_samples))
                if count == 0:
                    continue
                if count < 2:
                    raise ValueError(f"branch {b!r}: {count} image scored; FID and KID need at least 2")
                kid_mean, kid_std = _kid_with_subset(self.kid[i], count)
                out[b] = {
                    "l1": float(self.l1[i].compute()),
                    "rmse": math.sqrt(float(self.mse[i].compute())),
                    "fid": float(self.fid[i].compute()),
                    "kid": 100.0 * kid_mean,
                    "kid_std": 100.0 * kid_std,
                    **bootstrap_intervals(self.kid[i]),
                }
        return out

    def reset(self) -> None:
        """Forget every accumulated image."""
        for group in (self.l1, self.mse, self.fid, self.kid):
            for metric in group:
                metric.reset()
        self._real_cache = None

    def forward(self, *args, **kwargs):  # an nn.Module only to move and hold its parts
        raise TypeError("TranslationMetrics is updated with .update(branch, fake, real), not called")


def _synced_count(metric: Metric, local: int) -> int:
    """The image count summed over processes (the local count outside DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([local], device=metric.fake_features_num_samples.device)
        torch.distributed.all_reduce(t)
        return int(t)
    return local


#: Bootstrap of FID and KID: resamples of the scored images (real and generated pairs together) and their seed.
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0


def _kid_unbiased(real: Tensor, fake: Tensor) -> Tensor:
    """The unbiased MMD² of the KID kernel ``(x·y / d + 1)^3`` between sets of features: (..., n, d) and
    (..., m, d) -> (...)."""
    d, n, m = real.shape[-1], real.shape[-2], fake.shape[-2]
    k = lambda a, b: (a @ b.mT / d + KID_COEF) ** KID_DEGREE  # noqa: E731
    off_diagonal = lambda g: g.sum((-2, -1)) - g.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    return (
        off_diagonal(k(real, real)) / (n * (n - 1))
        + off_diagonal(k(fake, fake)) / (m * (m - 1))
        - 2 * k(real, fake).mean((-2, -1))
    )


def _covariance(x: Tensor) -> Tensor:
    """Sample covariance of (..., n, d) features: (..., d, d)."""
    centred = x - x.mean(-2, keepdim=True)
    return centred.mT @ centred / (x.shape[-2] - 1)


def frechet_distance_of_features(real: Tensor, fake: Tensor) -> Tensor:
    """:func:`frechet_distance` of two equally large sets of features, (..., n, d) -> (...).

    With ``n <= d`` (few images, as in a bootstrap of a small test set) without a d x d
    eigendecomposition: for centred features ``R``, ``F`` the cross term
    ``tr (C_r^1/2 C_f C_r^1/2)^1/2`` is the sum of the singular values of ``R F^T / (n - 1)``, an
    n x n matrix (the nonzero eigenvalues of ``C_r C_f`` are those of ``(R F^T)(F R^T) / (n - 1)^2``)."""
    n, d = real.shape[-2], real.shape[-1]
    if n > d:
        return frechet_distance(real.mean(-2), _covariance(real), fake.mean(-2), _covariance(fake))
    r, f = real - real.mean(-2, keepdim=True), fake - fake.mean(-2, keepdim=True)
    cross = torch.linalg.svdvals(r @ f.mT).sum(-1)
    return (real.mean(-2) - fake.mean(-2)).square().sum(-1) + (
        r.square().sum((-2, -1)) + f.square().sum((-2, -1)) - 2 * cross
    ) / (n - 1)


def bootstrap_intervals(
    kid: KernelInceptionDistance, resamples: int = BOOTSTRAP_RESAMPLES, chunk: int = 50
) -> dict[str, float]:
    """95 % bootstrap intervals of FID and KID (x100) of the scored images.

    The images are resampled with replacement (``resamples`` times, each real image kept with the
    image generated from the same input; seeded, so reproducible) and FID and the unbiased KID are
    computed on each resample. The interval is the estimate on all images ± 1.96 standard deviations of
    the resamples' values: the percentiles themselves are shifted upwards, because a resample repeats
    images, which acts like a smaller set and both distances are biased upwards on small sets (on 60
    images the whole 95 % percentile interval lay above the estimate). Under DDP, the process's own
    images. ``{"fid_low", "fid_high", "kid_low", "kid_high"}``; empty under 3 images."""
    real, fake = (torch.cat(list(f)).double() for f in (kid.real_features, kid.fake_features))
    n = min(real.shape[0], fake.shape[0])
    if n < 3:
        return {}
    real, fake = real[:n], fake[:n]
    g = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    idx = torch.randint(0, n, (resamples, n), generator=g).to(real.device)
    fids, kids = [], []
    for part in idx.split(chunk):
        r, f = real[part], fake[part]  # (chunk, n, d)
        fids.append(frechet_distance_of_features(r, f))
        kids.append(100.0 * _kid_unbiased(r, f))
    fid, kid_x100 = float(frechet_distance_of_features(real, fake)), 100.0 * float(_kid_unbiased(real, fake))
    fid_sd, kid_sd = float(torch.cat(fids).std()), float(torch.cat(kids).std())
    return {
        "fid_low": fid - 1.96 * fid_sd,
        "fid_high": fid + 1.96 * fid_sd,
        "kid_low": kid_x100 - 1.96 * kid_sd,
        "kid_high": kid_x100 + 1.96 * kid_sd,
    }


def _kid_with_subset(metric: KernelInceptionDistance, count: int) -> tuple[float, float]:
    """KID (mean, std over subsets) with subset size ``min(1000, count)``, subsets drawn
    from :data:`KID_SEED` without changing the caller's random state."""
    metric.subset_size = min(KID_SUBSET_SIZE, count)
    devices = [metric.device] if metric.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(KID_SEED)
        mean, std = metric.compute()
    metric.subset_size = KID_SUBSET_SIZE
    return float(mean), float(std)
