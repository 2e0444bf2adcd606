"""Defaults of the method shared by every layer of the package (one definition each)."""

#: ``theta`` of paper Eq. 6 for segmentation (the reference code's 2e-2).
THRESHOLD = 2e-2
#: ``theta`` for image translation (the reference code's 1e-2).
TRANSLATION_THRESHOLD = 1e-2
#: The name under which :class:`cen.MultiModal` returns the fused (ensemble) output.
ENSEMBLE_KEY = "ensemble"
