"""Inference export: a frozen copy of a :class:`cen.MultiModal` model, written as ONNX and run with onnxruntime.

* :func:`freeze`: norms in eval mode folded into constants, exchange masks into
  constant channel gathers (:mod:`cen.export.freeze`).
* :func:`export_onnx`: the frozen model as an ONNX file, one input per modality,
  named outputs, dynamic batch and image size (:mod:`cen.export.onnx`).
* :class:`OnnxRunner`: runs such a file, checking the modality names.

onnx, onnxscript and onnxruntime are optional: ``pip install -e ".[export]"``.
"""

from cen.export.freeze import FreezeError, FrozenModel, freeze
from cen.export.onnx import ExportError, OnnxRunner, export_onnx

__all__ = ["ExportError", "FreezeError", "FrozenModel", "OnnxRunner", "export_onnx", "freeze"]
