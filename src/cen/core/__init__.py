"""The method itself: modality stacking, private norms with channel exchange,
conversion of any network, the sparsity penalty, the ensemble and the
multimodal wrapper. Everything else in :mod:`cen` builds on these pieces."""
