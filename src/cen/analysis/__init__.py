"""What a run learnt: gamma dynamics (Theorem 1), Figure A, and the ``cen report`` pages."""

from cen.analysis.gamma import GammaTracker

__all__ = ["GammaTracker"]
