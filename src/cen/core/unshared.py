"""Private (unshared) convolutions and linear layers that keep the stacked layout.

On a sample-major stacked batch ``(B*M, C, H, W)`` the view ``(B, M*C, H, W)`` is
free, and in it modality ``m`` owns channels ``m*C .. (m+1)*C - 1``. ``M`` private
convolutions ``C -> C'`` are then one grouped convolution ``M*C -> M*C'`` with
``M`` times the groups, whose output ``(B, M*C', H', W')`` is again a free view of
the stacked ``(B*M, C', H', W')``. So a network with unshared convolutions runs
as one call per layer, like the shared one, and every other layer is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.context import current_present
from cen.core.norms import _ModalityNorm


def _check_batch(module: nn.Module, x: Tensor) -> int:
    num = module.num_modalities
    present = current_present()
    if present is not None and len(present) < num:
        raise ValueError(
            f"{type(module).__name__}: unshared weights need every modality ({num}), but only modalities "
            f"{list(present)} are present; give all of them (or convert with shared_convs=True)"
        )
    if x.shape[0] % num:
        raise ValueError(
            f"{type(module).__name__}: batch size {x.shape[0]} is not divisible by the number of modalities {num}: "
            "stack modalities sample-major with cen.stack (a missing modality is not supported with unshared convs)"
        )
    return x.shape[0] // num


class ModalityConv2d(nn.Module):
    """``M`` private copies of a ``Conv2d(C, C', ...)`` on a stacked ``(B*M, C, H, W)`` batch, as one grouped conv.

    Parameters: ``weight`` ``(M*C', C/groups, kh, kw)`` with modality ``m``'s
    kernel at rows ``m*C' .. (m+1)*C' - 1``, and ``bias`` ``(M*C',)`` or None.
    Build it with :meth:`from_conv`, which copies the shared weights into every
    modality's slot. Every modality must be present (the batch is ``B*M``).
    """

    def __init__(self, conv: nn.Conv2d, num_modalities: int) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d) or type(conv) is not nn.Conv2d:
            raise TypeError(f"ModalityConv2d copies a plain nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"unshared convolutions support padding_mode='zeros' only, got {conv.padding_mode!r}")
        self.num_modalities = num_modalities
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.weight = nn.Parameter(conv.weight.detach().repeat(num_modalities, 1, 1, 1))
        self.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            self.bias = nn.Parameter(conv.bias.detach().repeat(num_modalities))
            self.bias.requires_grad_(conv.bias.requires_grad)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor(B*M, C, H, W)`` -> ``Tensor(B*M, C', H', W')``, modality ``m`` through its own kernel."""
        batch = _check_batch(self, x)
        y = F.conv2d(
            x.reshape(batch, self.num_modalities * self.in_channels, *x.shape[2:]),
            self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups * self.num_modalities,
        )  # fmt: skip
        return y.reshape(batch * self.num_modalities, self.out_channels, *y.shape[2:])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, num_modalities={self.num_modalities}"
        )


class ModalityLinear(nn.Module):
    """``M`` private copies of a ``Linear(F, F')`` on stacked features ``(B*M, *, F)``.

    Parameters: ``weight`` ``(M, F', F)`` and ``bias`` ``(M, F')`` or None, copied
    from the shared layer into every modality's slot.
    """

    def __init__(self, linear: nn.Linear, num_modalities: int) -> None:
        super().__init__()
        if type(linear) is not nn.Linear:
            raise TypeError(f"ModalityLinear copies a plain nn.Linear, got {type(linear).__name__}")
        self.num_modalities = num_modalities
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().unsqueeze(0).repeat(num_modalities, 1, 1))
        self.weight.requires_grad_(linear.weight.requires_grad)
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().unsqueeze(0).repeat(num_modalities, 1))
            self.bias.requires_grad_(linear.bias.requires_grad)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor(B*M, *, F)`` -> ``Tensor(B*M, *, F')``."""
        batch = _check_batch(self, x)
        split = x.reshape(batch, self.num_modalities, -1, self.in_features)  # (B, M, N, F)
        y = torch.einsum("bmnf,mof->bmno", split, self.weight)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"num_modalities={self.num_modalities}"
        )


def unshare(module: nn.Module, num_modalities: int) -> nn.Module:
    """Replace, in place, every plain ``nn.Conv2d`` and ``nn.Linear`` of ``module`` by its private-per-modality twin.

    Returns ``module`` (or the twin, when ``module`` itself is one such layer).
    The parameter count of each replaced layer grows ``M`` times.
    """
    twins = {ModalityConv2d: nn.Conv2d, ModalityLinear: nn.Linear}

    def twin_of(layer: nn.Module) -> nn.Module | None:
        for twin_type, plain in twins.items():
            if type(layer) is plain:
                twin = twin_type(layer, num_modalities)
                return twin.to(device=layer.weight.device)
        return None

    root = twin_of(module)
    if root is not None:
        return root
    # The layers of a fusion strategy (inside a modality norm) see pooled features of every modality at
    # once, not a stacked batch: they stay as they are.
    inside_norms = {
        id(m) for norm in module.modules() if isinstance(norm, _ModalityNorm) for m in norm.modules() if m is not norm
    }
    for name, sub in list(module.named_modules()):
        if id(sub) in inside_norms:
            continue
        if isinstance(sub, (ModalityConv2d, ModalityLinear)) and sub.num_modalities != num_modalities:
            raise ValueError(f"{name} is already unshared for {sub.num_modalities} modalities, not {num_modalities}")
        twin = twin_of(sub)
        if twin is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, twin)
    return module
