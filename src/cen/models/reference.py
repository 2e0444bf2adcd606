"""Checkpoints of the reference CEN code (github.com/yikaiw/CEN, semantic_segmentation) to ours.

The reference model keeps a list of per-modality tensors: every shared layer is
wrapped in ``ModuleParallel`` (so its parameters are ``<name>.module.weight``),
every norm is a ``BatchNorm2dParallel`` with one ``BatchNorm2d`` per modality
(``<name>.bn_0.weight``, ``<name>.bn_1.weight``, ...), the ensemble weight is
``alpha``, and its training script saves the ``DataParallel`` state dict
(every key prefixed ``module.``), under the key ``"segmenter"``.

Ours runs all modalities stacked in the batch: a shared layer is a plain
module, and the ``M`` norms of a layer are one norm over ``M*C`` channels in
which modality ``m``'s channel ``c`` sits at ``m*C + c`` (see
:mod:`cen.core.norms`).

The conversion is strict: the expected reference keys and shapes are derived
from the target model (:func:`reference_key_map`), every key of the file must
be used exactly once, and any unused key, missing key or shape mismatch is
reported, all together, in one :class:`ReferenceCheckpointError`.

Two details: ``num_batches_tracked`` is one counter per modality in the
reference and one per layer here (the largest is kept; the reference updates
them together); a one-modality reference model still has an ``alpha`` of size 1,
which is checked and dropped (its softmax is 1, our unimodal model has no
ensemble).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cen.core.ensemble import Ensemble
from cen.core.norms import _ModalityNorm
from cen.models.backbones import BACKBONES, BASIC_BLOCK_BACKBONES
from cen.models.segmentation import RefineNetCEN

DATA_PARALLEL_PREFIX = "module."
WRAPPER_KEYS = ("segmenter", "state_dict", "model")
"""Keys under which a checkpoint file may hold the state dict (the reference script uses ``"segmenter"``)."""

FORMAT = "cen.models.RefineNetCEN"
"""The ``"format"`` tag of converted files written by earlier versions (version-1 converter); still read by :func:`cen.load_model`."""

_NORM_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class ReferenceCheckpointError(ValueError):
    """A reference checkpoint that cannot be read or does not match the model."""


@dataclass(frozen=True)
class RefEntry:
    """Where a reference tensor goes: our key, and the modality slot for a per-modality norm entry."""

    ours: str
    modality: int | None
    shape: torch.Size


# -- naming ---------------------------------------------------------------------

_DECODER_RENAMES = (
    # our RCU chain: <chain>.units.<i>.conv1 / conv2 -> reference RCUBlock in an nn.Sequential
    (re.compile(r"^(\w+)\.units\.(\d+)\.conv1$"), lambda m: f"{m[1]}.0.{int(m[2]) + 1}_conv"),
    (re.compile(r"^(\w+)\.units\.(\d+)\.conv2$"), lambda m: f"{m[1]}.0.{int(m[2]) + 1}_conv_relu_varout_dimred"),
    # our chained residual pooling: <crp>.convs.<i> -> reference CRPBlock in an nn.Sequential
    (re.compile(r"^(\w+)\.convs\.(\d+)$"), lambda m: f"{m[1]}.0.{int(m[2]) + 1}_outvar_dimred"),
)


def _reference_module_path(path: str) -> str:
    """Our module path (``model.encoder.layer1.0.bn2``) -> the reference's, without ``module.``."""
    for prefix in ("model.encoder.", "model.decoder."):
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            break
    else:
        raise ValueError(f"{path!r} is neither in the encoder nor in the decoder")
    for pattern, repl in _DECODER_RENAMES:
        match = pattern.match(rest)
        if match:
            return repl(match)
    return rest


def reference_key_map(model: RefineNetCEN) -> dict[str, RefEntry]:
    """``{reference key (without the DataParallel prefix): RefEntry}`` for ``model``.

    The shapes are the reference's (one modality's slice for a norm entry).
    Works on a model on the meta device.
    """
    state = model.state_dict(keep_vars=True)
    num = len(model.names)
    out: dict[str, RefEntry] = {}
    for path, module in model.named_modules():
        local = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        local = {k: v for k, v in local.items() if f"{path}.{k}" in state}
        if not local:
            continue
        if isinstance(module, Ensemble):
            out["alpha"] = RefEntry(f"{path}.alpha", None, state[f"{path}.alpha"].shape)
            continue
        ref = _reference_module_path(path)
        if isinstance(module, _ModalityNorm):
            for entry in _NORM_ENTRIES:
                if entry not in local:
                    continue
                ours = f"{path}.{entry}"
                shape = torch.Size(()) if entry == "num_batches_tracked" else torch.Size([module.num_features])
                for m in range(num):
                    out[f"{ref}.bn_{m}.{entry}"] = RefEntry(ours, m, shape)
        elif isinstance(module, nn.Conv2d):
            for entry in local:
                out[f"{ref}.module.{entry}"] = RefEntry(f"{path}.{entry}", None, state[f"{path}.{entry}"].shape)
        else:
            raise TypeError(f"no reference naming for {type(module).__name__} at {path}")
    return out


# -- reading --------------------------------------------------------------------


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict of a checkpoint object: the object itself or under one of :data:`WRAPPER_KEYS`."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
        keys = list(obj)[:10]
        raise ReferenceCheckpointError(
            f"{source}: expected a state dict {{name: Tensor}}, directly or under one of {list(WRAPPER_KEYS)}; "
            f"found a mapping with keys {keys}{' ...' if len(obj) > 10 else ''}"
        )
    raise ReferenceCheckpointError(f"{source}: expected a state dict (a mapping), found {type(obj).__name__}")


def load_reference_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict[str, Tensor]:
    """Read a reference checkpoint file and return its state dict.

    The file is read with ``torch.load(weights_only=True)``, numpy scalars and
    arrays allowed (the reference script may store its best score as one).
    ``trust=True`` allows arbitrary pickled objects (``weights_only=False``), for
    files from a trusted source holding other Python objects.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ReferenceCheckpointError(f"{path}: no such file")
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" ({found[1]})" if found else ""
            raise ReferenceCheckpointError(
                f"{path}: holds Python objects{what} that the safe loader refuses; if the file comes from a "
                "trusted source, retry with trust=True (cen convert-checkpoint --trust)"
            ) from err
        raise ReferenceCheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, or not written by torch.save?): "
            f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
        ) from err
    return unwrap_state_dict(obj, path)


def _numpy_safe_globals() -> list:
    """numpy scalars and arrays, which training scripts often save next to the weights (e.g. a best score)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return names


def _strip_data_parallel(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    if sd and all(k.startswith(DATA_PARALLEL_PREFIX) for k in sd):
        return {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in sd.items()}, DATA_PARALLEL_PREFIX
    return dict(sd), ""


# -- architecture ---------------------------------------------------------------


def infer_reference_config(sd: Mapping[str, Tensor], source: str = "checkpoint") -> dict:
    """Backbone, number of classes, number of modalities and decoder widths of a reference state dict."""
    sd, _ = _strip_data_parallel(sd)
    slots = {int(m[1]) for k in sd if (m := re.match(r"^bn1\.bn_(\d+)\.weight$", k))}
    if not slots or slots != set(range(len(slots))):
        raise ReferenceCheckpointError(
            f"{source}: not a reference CEN RefineNet state dict: expected per-modality stem norms "
            f"'bn1.bn_0.weight', 'bn1.bn_1.weight', ... (found {sorted(slots)})"
        )
    blocks = []
    for stage in range(1, 5):
        idx = {int(m[1]) for k in sd if (m := re.match(rf"^layer{stage}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = "layer1.0.conv3.module.weight" in sd
    names = [
        name
        for name, layers in BACKBONES.items()
        if layers == tuple(blocks) and (name not in BASIC_BLOCK_BACKBONES) == bottleneck
    ]
    if len(names) != 1:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ReferenceCheckpointError(
            f"{source}: ResNet with {kind} blocks {tuple(blocks)} per stage is none of {list(BACKBONES)}"
        )
    required = ["clf_conv.module.weight"] + [f"p_ims1d2_outl{i}_dimred.module.weight" for i in range(1, 5)]
    absent = [k for k in required if k not in sd]
    if absent:
        raise ReferenceCheckpointError(f"{source}: not a reference CEN RefineNet state dict: no {absent}")
    return {
        "backbone": names[0],
        "num_classes": int(sd["clf_conv.module.weight"].shape[0]),
        "num_modalities": len(slots),
        "decoder_widths": [int(sd[f"p_ims1d2_outl{i}_dimred.module.weight"].shape[0]) for i in range(1, 5)],
    }


def _default_names(num: int, modalities: Sequence[str] | None, source: str) -> tuple[str, ...]:
    if modalities is not None:
        names = tuple(modalities)
        if len(names) != num:
            raise ReferenceCheckpointError(
                f"{source} has {num} modalities (bn_0 .. bn_{num - 1}) but {len(names)} names were given: {list(names)}"
            )
        return names
    if num == 2:
        return ("rgb", "depth")  # the reference script's default input order
    return tuple(f"m{i}" for i in range(num))


def build_model_for(
    sd: Mapping[str, Tensor],
    *,
    modalities: Sequence[str] | None = None,
    threshold: float = 2e-2,
    device: torch.device | str | None = None,
    source: str = "checkpoint",
) -> RefineNetCEN:
    """A :class:`RefineNetCEN` with the reference state dict's architecture (random weights)."""
    cfg = infer_reference_config(unwrap_state_dict(sd, source), source)
    names = _default_names(cfg["num_modalities"], modalities, source)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return RefineNetCEN(
            cfg["backbone"],
            cfg["num_classes"],
            names,
            threshold,
            decoder_widths=cfg["decoder_widths"],
        )


# -- conversion -----------------------------------------------------------------


def _show(items: Sequence[str], limit: int = 25) -> str:
    lines = [f"    {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def mismatch_error(
    source: str, what: str, prefix: str, unused: Sequence[str], missing: Sequence[str], wrong: Sequence[str]
) -> ReferenceCheckpointError:
    """The error listing every unused key, missing key and shape mismatch of a reference checkpoint at once."""
    parts = [f"{source} does not match the reference {what}:"]
    if unused:
        parts.append(f"  unused keys ({len(unused)}):\n{_show([prefix + k for k in unused])}")
    if missing:
        parts.append(f"  missing keys ({len(missing)}):\n{_show([prefix + k for k in missing])}")
    if wrong:
        parts.append(f"  shape mismatches ({len(wrong)}):\n{_show(wrong)}")
    return ReferenceCheckpointError("\n".join(parts))


def check_reference_keys(
    flat: Mapping[str, Tensor],
    key_map: Mapping[str, object],
    optional: Mapping[str, torch.Size],
    *,
    source: str,
    what: str,
    prefix: str = "",
) -> None:
    """Raise :func:`mismatch_error` unless every key of ``flat`` maps to a target of ``key_map`` (or is one of
    ``optional``, ``{key: expected shape}``), every key of ``key_map`` is in ``flat``, and the shapes agree.

    ``key_map``'s values carry the target tensor's ``shape``; ``prefix`` is the stripped DataParallel
    prefix, put back in the messages.
    """
    unused = [k for k in flat if k not in key_map and k not in optional]
    missing = [k for k in key_map if k not in flat]
    wrong = []
    for key, tensor in flat.items():
        expected = key_map[key].shape if key in key_map else optional.get(key)
        if expected is not None and tuple(tensor.shape) != tuple(expected):
            wrong.append(f"{prefix}{key}: checkpoint {tuple(tensor.shape)}, expected {tuple(expected)}")
    if unused or missing or wrong:
        raise mismatch_error(source, what, prefix, unused, missing, wrong)


def convert_reference_state_dict(
    sd: Mapping[str, Tensor] | Mapping[str, object],
    model: RefineNetCEN | None = None,
    *,
    modalities: Sequence[str] | None = None,
    threshold: float = 2e-2,
    source: str = "checkpoint",
) -> dict[str, Tensor]:
    """Turn a reference CEN RefineNet state dict into a :class:`RefineNetCEN` state dict.

    Args:
        sd: the reference state dict (``module.`` prefix or not), or a checkpoint
            dict holding it under ``"segmenter"``, ``"state_dict"`` or ``"model"``.
        model: the target model (any device, including meta); default: one built
            on the meta device from the architecture found in ``sd``.
        modalities: names for the built model (default ``("rgb", "depth")`` for two
            modalities, as the reference script's inputs); ignored with ``model``.
        threshold: ``theta`` of the built model; ignored with ``model``.
        source: how to name ``sd`` in errors (e.g. its file).

    Returns:
        ``{our key: Tensor}``, loadable with ``model.load_state_dict(..., strict=True)``.

    Raises:
        ReferenceCheckpointError: listing every unused key, missing key and shape mismatch.
    """
    flat = unwrap_state_dict(sd, source)
    flat, prefix = _strip_data_parallel(flat)
    if model is None:
        model = build_model_for(flat, modalities=modalities, threshold=threshold, device="meta", source=source)
    key_map = reference_key_map(model)
    ours = model.state_dict()
    accepted_extra = {}
    if "alpha" not in key_map and len(model.names) == 1:
        accepted_extra["alpha"] = torch.Size([1])  # a unimodal reference model still has alpha
    what = (
        f"CEN RefineNet ({getattr(model, 'backbone', '?')}, {len(model.names)} modalities, "
        f"{getattr(model, 'num_classes', '?')} classes)"
    )
    check_reference_keys(flat, key_map, accepted_extra, source=source, what=what, prefix=prefix)
    return assemble_reference(flat, key_map, ours)


def assemble_reference(
    flat: Mapping[str, Tensor], key_map: Mapping[str, RefEntry], ours: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Our state dict from the reference's tensors ``flat``, checked by :func:`check_reference_keys`.

    Each of our keys (those of ``ours``, whose dtypes and shapes the result takes) is the one
    reference tensor mapped to it, or the per-modality tensors mapped to it concatenated in slot
    order (``num_batches_tracked``: their maximum).
    """
    gathered: dict[str, dict[int | None, Tensor]] = {}
    for key, entry in key_map.items():
        gathered.setdefault(entry.ours, {})[entry.modality] = flat[key]
    result: dict[str, Tensor] = {}
    for key, target in ours.items():
        parts = gathered.get(key)
        if parts is None:
            raise AssertionError(f"internal error: no reference entry maps to {key}")
        if None in parts:
            value = parts[None]
        elif key.endswith("num_batches_tracked"):
            value = torch.stack([parts[m] for m in sorted(parts)]).max()
        else:
            value = torch.cat([parts[m].reshape(-1) for m in sorted(parts)])
        value = value.detach().to(dtype=target.dtype)
        if value.shape != target.shape:
            raise AssertionError(
                f"internal error: {key} assembled to {tuple(value.shape)}, expected {tuple(target.shape)}"
            )
        result[key] = value
    return result


def to_reference_state_dict(model: RefineNetCEN, *, data_parallel: bool = True) -> dict[str, Tensor]:
    """The inverse of :func:`convert_reference_state_dict`: ``model``'s weights under the reference's names.

    With ``data_parallel`` the keys carry the ``module.`` prefix, as the reference
    script saves them. A unimodal model gets ``alpha = [1.]``, as the reference.
    """
    state = model.state_dict()
    prefix = DATA_PARALLEL_PREFIX if data_parallel else ""
    out: dict[str, Tensor] = {}
    if model.ensemble is None:
        out[f"{prefix}alpha"] = torch.ones(1)
    for key, entry in reference_key_map(model).items():
        value = state[entry.ours].detach()
        if entry.modality is not None and value.dim() == 1:
            size = entry.shape[0]
            value = value[entry.modality * size : (entry.modality + 1) * size]
        out[f"{prefix}{key}"] = value.clone()
    return out
