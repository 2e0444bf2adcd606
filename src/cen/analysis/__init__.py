"""What a run learnt, read from its folder: ``cen report`` pages, ``cen table`` comparisons, the paper's numbers.

Nothing here trains; the engine (:mod:`cen.train`) writes the run folders this package reads.
"""
