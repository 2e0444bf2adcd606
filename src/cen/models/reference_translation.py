"""Generator checkpoints of the reference CEN translation code (yikaiw/CEN, image2image_translation) to ours.

The reference generator keeps a list of per-input tensors. Its state dict
(saved as ``G.state_dict()``; a ``module.`` prefix or a ``"state_dict"`` /
``"model"`` wrapper is also accepted) holds, for ``K = 1 .. 8``:

* ``convK.conv.module.{weight,bias}``: the shared down-convolutions;
* ``convK.insnorm_conv.insnorm_<m>.*``: one InstanceNorm per input ``m``;
* ``deconvK.deconv.module.{weight,bias}``: the shared up-convolutions;
* ``deconvK.insnorm_deconv.insnorm_<m>.*``: one InstanceNorm per input;
* ``alpha``: the ensemble weights, one per input.

``convK`` is our ``model.down.{K-1}``, ``deconvK`` our ``model.up.{K-1}``;
input ``m``'s norm goes to slot ``m`` of our one ``M*C`` norm (channel
``m*C + c``), so the inputs map to the reference's **in order**. The norms of
``conv1``, ``conv8`` and ``deconv8`` exist in the reference but are never
applied (2,316 parameters with ngf 64 and two inputs); :class:`UNetCEN` does not
have them, so they are checked and **dropped**, and the conversion reports them
(:attr:`ConvertedGenerator.dropped`). Everything else is strict: every other key
is used exactly once, and unused keys, missing keys and shape mismatches are
all listed in one :class:`ReferenceCheckpointError`. ``num_batches_tracked`` is
one counter per input there and one per layer here (the largest is kept).

The reference's exchange is written for two inputs; a generator with more
inputs converts (its keys follow the same pattern), and our exchange then takes
the mean of the other inputs (paper Eq. 6).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from cen.core.defaults import TRANSLATION_THRESHOLD
from cen.models.reference import (
    DATA_PARALLEL_PREFIX,
    RefEntry,
    ReferenceCheckpointError,
    assemble_reference,
    check_reference_keys,
    unwrap_state_dict,
)
from cen.models.unet import UNetCEN, down_widths

_NORM_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
#: The translation target of the reference recipes (and of the checkpoint config written for a converted generator).
DEFAULT_TARGET = "rgb"


class ConvertedGenerator(NamedTuple):
    """What :func:`convert_reference_generator` returns."""

    state_dict: dict[str, Tensor]
    """``UNetCEN`` state dict, loadable with ``strict=True``."""
    config: dict
    """The partial cen config that rebuilds the model (see :func:`checkpoint_config`)."""
    dropped: list[str]
    """Reference keys of the never-applied norms that were dropped (those present in the input)."""


# -- naming ---------------------------------------------------------------------


def _norm_keys(prefix: str, num: int, channels: int) -> dict[str, tuple[int, torch.Size]]:
    """``{reference key: (modality, shape)}`` of a per-input InstanceNorm container."""
    out = {}
    for m in range(num):
        for entry in _NORM_ENTRIES:
            shape = torch.Size(()) if entry == "num_batches_tracked" else torch.Size([channels])
            out[f"{prefix}.insnorm_{m}.{entry}"] = (m, shape)
    return out


def reference_generator_key_map(model: UNetCEN) -> dict[str, RefEntry]:
    """``{reference key: RefEntry(our key, modality slot or None, reference shape)}`` for ``model`` (meta device
    works)."""
    gen = model.generator
    state = model.state_dict(keep_vars=True)
    num = len(model.names)
    out: dict[str, RefEntry] = {}
    for kind, blocks, ref_name, ref_conv, ref_norm in (
        ("down", gen.down, "conv", "conv", "insnorm_conv"),
        ("up", gen.up, "deconv", "deconv", "insnorm_deconv"),
    ):
        for i, block in enumerate(blocks):
            ref = f"{ref_name}{i + 1}"
            for entry in ("weight", "bias"):
                ours = f"model.{kind}.{i}.conv.{entry}"
                out[f"{ref}.{ref_conv}.module.{entry}"] = RefEntry(ours, None, state[ours].shape)
            if block.norm is not None:
                for key, (m, shape) in _norm_keys(f"{ref}.{ref_norm}", num, block.norm.num_features).items():
                    ours = f"model.{kind}.{i}.norm.{key.rsplit('.', 1)[1]}"
                    if ours in state:  # a norm without running statistics has fewer entries
                        out[key] = RefEntry(ours, m, shape)
    if model.ensemble is not None:
        out["alpha"] = RefEntry("ensemble.alpha", None, state["ensemble.alpha"].shape)
    return out


def unused_norm_keys(model: UNetCEN) -> dict[str, torch.Size]:
    """``{reference key: shape}`` of the norms the reference builds but never applies (``conv1``, ``conv{n}``, ``deconv{n}``)."""
    gen = model.generator
    n, num = gen.num_downs, len(model.names)
    out = {}
    for prefix, channels in (
        ("conv1.insnorm_conv", gen.ngf),
        (f"conv{n}.insnorm_conv", down_widths(gen.ngf, n)[-1]),
        (f"deconv{n}.insnorm_deconv", gen.out_channels),
    ):
        out.update({k: shape for k, (_, shape) in _norm_keys(prefix, num, channels).items()})
    return out


# -- architecture ---------------------------------------------------------------


def _strip_prefix(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    if sd and all(k.startswith(DATA_PARALLEL_PREFIX) for k in sd):
        return {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in sd.items()}, DATA_PARALLEL_PREFIX
    return dict(sd), ""


def is_reference_generator(sd: Mapping[str, object]) -> bool:
    """Whether ``sd`` (unwrapped or not) looks like a reference translation generator state dict."""
    try:
        flat, _ = _strip_prefix(unwrap_state_dict(sd))
    except ReferenceCheckpointError:
        return False
    return "conv1.conv.module.weight" in flat and "deconv1.deconv.module.weight" in flat


def infer_generator_config(sd: Mapping[str, Tensor], source: str = "checkpoint") -> dict:
    """``{"num_modalities", "in_channels", "out_channels", "ngf", "num_downs"}`` of a reference generator state dict."""
    flat, _ = _strip_prefix(unwrap_state_dict(sd, source))
    if "conv1.insnorm.module.weight" in flat or (
        "conv5.conv.module.weight" in flat and "deconv1.deconv.module.weight" not in flat
    ):
        raise ReferenceCheckpointError(
            f"{source}: this is the reference translation *discriminator* (conv1..conv5, 'insnorm.module'); "
            "only the generator converts (build cen.models.PatchDiscriminator for training)"
        )
    convs = {int(m[1]) for k in flat if (m := re.match(r"^conv(\d+)\.conv\.module\.weight$", k))}
    deconvs = {int(m[1]) for k in flat if (m := re.match(r"^deconv(\d+)\.deconv\.module\.weight$", k))}
    slots = {int(m[1]) for k in flat if (m := re.match(r"^conv2\.insnorm_conv\.insnorm_(\d+)\.weight$", k))}
    if not convs or not slots:
        raise ReferenceCheckpointError(
            f"{source}: not a reference CEN translation generator state dict: expected 'conv1.conv.module.weight', "
            "'deconv1.deconv.module.weight' and per-input norms 'conv2.insnorm_conv.insnorm_0.weight', ..."
        )
    n = max(convs)
    if convs != set(range(1, n + 1)) or deconvs != convs or slots != set(range(len(slots))):
        raise ReferenceCheckpointError(
            f"{source}: reference generator blocks are not consecutive: conv {sorted(convs)}, "
            f"deconv {sorted(deconvs)}, norm slots insnorm_{sorted(slots)}"
        )
    first, last = flat["conv1.conv.module.weight"], flat[f"deconv{n}.deconv.module.weight"]
    if first.dim() != 4 or last.dim() != 4:
        raise ReferenceCheckpointError(
            f"{source}: conv1 and deconv{n} weights must be 4-d, got {tuple(first.shape)}, {tuple(last.shape)}"
        )
    return {
        "num_modalities": len(slots),
        "in_channels": int(first.shape[1]),
        "out_channels": int(last.shape[1]),
        "ngf": int(first.shape[0]),
        "num_downs": n,
    }


def checkpoint_config(model: UNetCEN, *, target: str = DEFAULT_TARGET, ndf: int = 64) -> dict:
    """The partial cen config stored with a converted generator.

    ``{"task": "translation", "modalities": [...], "data": {"dataset": "taskonomy", "target": target},
    "model": {"name": "unet", "ngf", "num_downs", "ndf", "ensemble"}, "fusion": {"threshold"}}``, plus
    ``model.in_channels`` / ``model.out_channels`` when they are not 3 (never for the reference's domains).
    ``ndf`` is the discriminator width a recipe would train with (the reference's 64); a generator file has none.
    """
    cfg = model.config
    section = {
        "name": "unet",
        "ngf": cfg["ngf"],
        "num_downs": cfg["num_downs"],
        "ndf": ndf,
        "ensemble": cfg["ensemble"],
    }
    for key in ("in_channels", "out_channels"):
        if cfg[key] != 3:
            section[key] = cfg[key]
    return {
        "task": "translation",
        "modalities": list(model.names),
        "data": {"dataset": "taskonomy", "target": target},
        "model": section,
        "fusion": {"threshold": cfg["spec"]["threshold"]},
    }


def build_generator_for(
    sd: Mapping[str, Tensor],
    modalities: Sequence[str],
    *,
    threshold: float = TRANSLATION_THRESHOLD,
    device: torch.device | str | None = None,
    source: str = "checkpoint",
) -> UNetCEN:
    """A :class:`UNetCEN` with the reference state dict's architecture (random weights) and the inputs ``modalities``."""
    arch = infer_generator_config(sd, source)
    names = tuple(modalities)
    if len(names) != arch["num_modalities"]:
        count = arch["num_modalities"]
        raise ReferenceCheckpointError(
            f"{source} is a generator for {count} inputs (insnorm_0 .. insnorm_{count - 1}) but "
            f"{len(names)} names were given: {list(names)}; name its inputs in the reference's order"
        )
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return UNetCEN(
            names,
            in_channels=arch["in_channels"],
            out_channels=arch["out_channels"],
            ngf=arch["ngf"],
            num_downs=arch["num_downs"],
            threshold=threshold,
        )


# -- conversion -----------------------------------------------------------------


def convert_reference_generator(
    sd: Mapping[str, object],
    modalities: Sequence[str],
    *,
    threshold: float = TRANSLATION_THRESHOLD,
    target: str = DEFAULT_TARGET,
    model: UNetCEN | None = None,
    source: str = "checkpoint",
) -> ConvertedGenerator:
    """Turn a reference CEN translation generator state dict into a :class:`UNetCEN` state dict.

    Args:
        sd: the reference state dict (or a checkpoint dict holding it under
            ``"state_dict"`` / ``"model"``; a ``module.`` prefix is accepted).
        modalities: names of the generator's inputs, in the reference's input order.
        threshold: ``theta`` of the built model and of the config.
        target: the translation target recorded in the config (``data.target``).
        model: the target model (any device, meta included); default: one built on
            the meta device from the architecture found in ``sd``.
        source: how to name ``sd`` in errors (e.g. its file).

    Returns:
        :class:`ConvertedGenerator` ``(state_dict, config, dropped)``.

    Raises:
        ReferenceCheckpointError: a discriminator or foreign state dict, a wrong number
            of names, or (all listed together) unused keys, missing keys and shape mismatches.
    """
    flat, prefix = _strip_prefix(unwrap_state_dict(sd, source))
    names = tuple(modalities) if model is None else model.names
    if target in names:
        raise ReferenceCheckpointError(
            f"target {target!r} is also an input {list(names)}; the target must not be an input"
        )
    if model is None:
        model = build_generator_for(flat, names, threshold=threshold, device="meta", source=source)
    key_map = reference_generator_key_map(model)
    unused_norms = unused_norm_keys(model)
    optional = dict(unused_norms)
    if model.ensemble is None:
        optional["alpha"] = torch.Size([1])  # a single-input reference model still has alpha; softmax 1
    g = model.generator
    what = f"translation generator ({len(model.names)} inputs, ngf {g.ngf}, {g.num_downs} levels)"
    check_reference_keys(flat, key_map, optional, source=source, what=what, prefix=prefix)
    result = assemble_reference(flat, key_map, model.state_dict())
    dropped = [prefix + k for k in flat if k in optional]
    return ConvertedGenerator(result, checkpoint_config(model, target=target), dropped)


def to_reference_generator_state_dict(model: UNetCEN, *, unused_norms: bool = True) -> dict[str, Tensor]:
    """The inverse of :func:`convert_reference_generator`: ``model``'s weights under the reference's key names.

    With ``unused_norms`` the never-applied norms are added with their initial
    values (weight 1, bias 0, mean 0, variance 1), so the key set is the reference's.
    A single-input model gets ``alpha = [1.]``.
    """
    cfg = model.config
    spec = model.spec
    have = {"head": cfg.get("head"), "fusion": spec.strategy, "shared_convs": spec.shared_convs}
    unlike = {
        k: have[k] for k, v in (("head", "ensemble"), ("fusion", "exchange"), ("shared_convs", True)) if have[k] != v
    }
    if unlike:
        raise ValueError(
            f"the reference generator has an ensemble head, exchange fusion and shared convolutions; this model has "
            f"{unlike}, which the reference format cannot hold"
        )
    state = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, entry in reference_generator_key_map(model).items():
        value = state[entry.ours].detach()
        if entry.modality is not None and value.dim() == 1:
            size = entry.shape[0]
            value = value[entry.modality * size : (entry.modality + 1) * size]
        out[key] = value.clone()
    if model.ensemble is None:
        out["alpha"] = torch.ones(1)
    if unused_norms:
        initial = {"weight": torch.ones, "bias": torch.zeros, "running_mean": torch.zeros, "running_var": torch.ones}
        for key, shape in unused_norm_keys(model).items():
            entry = key.rsplit(".", 1)[1]
            out[key] = torch.tensor(0, dtype=torch.long) if entry == "num_batches_tracked" else initial[entry](shape)
    return out


__all__ = [
    "DEFAULT_TARGET",
    "ConvertedGenerator",
    "build_generator_for",
    "checkpoint_config",
    "convert_reference_generator",
    "infer_generator_config",
    "is_reference_generator",
    "reference_generator_key_map",
    "to_reference_generator_state_dict",
    "unused_norm_keys",
]
