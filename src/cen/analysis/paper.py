"""The paper's published numbers, as data, keyed by the config stem of the recipe that reruns each row.

``cen table`` prints them beside the runs whose folder (= config stem) has a row here.
Every number was measured by the authors on NYUDv2 with a ResNet-101 RefineNet and
private BNs (segmentation, mIoU in %) or on Taskonomy (translation, FID), whatever data
the run beside it was trained on: on the generated scenes it is a reference point, not
a target.

Sources:

* ``FEEDBACK``: the authors' feedback to the NeurIPS 2020 reviewers of "Deep Multimodal
  Fusion by Channel Exchanging" (Wang et al., arXiv 2011.05005): Table A and the
  ablations answered in its text (NYUDv2, ResNet-101, private BNs, ensemble unless said).
* ``PAPER``: the paper's own NYUDv2 / SUN RGB-D results of CEN (RefineNet, single scale).
"""

from __future__ import annotations

from dataclasses import dataclass

FEEDBACK = "CEN author feedback (NeurIPS 2020), NYUDv2, ResNet-101, private BNs"
FEEDBACK_TRANSLATION = "CEN author feedback (NeurIPS 2020), Taskonomy, depth + normal + texture -> RGB"
PAPER = "CEN paper (Wang et al., NeurIPS 2020, arXiv 2011.05005), single-scale test"


@dataclass(frozen=True)
class PaperRow:
    """One published result.

    ``value`` is in the unit ``cen table`` prints for ``metric`` (% for segmentation scores);
    None where the paper gives words instead of a number (then ``text`` holds them).
    ``extra`` holds further published scores of the same row (``{metric: value}``).
    """

    name: str  # the config stem of the recipe, e.g. "cen" for cen.yaml
    description: str
    metric: str  # a score key of results.json: miou, fid, ...
    value: float | None
    source: str
    text: str = ""
    extra: tuple[tuple[str, float], ...] = ()

    def display(self) -> str:
        """The number as published (e.g. ``51.1``), or its words."""
        return self.text if self.value is None else f"{self.value:g}"


def _seg(
    name: str,
    value: float | None,
    description: str,
    *,
    text: str = "",
    source: str = FEEDBACK,
    **extra: float,
) -> PaperRow:
    """A segmentation row: mIoU ``value``; ``extra``, further published scores by key (``pixel_acc=76.2``)."""
    return PaperRow(name, description, "miou", value, source, text, tuple(extra.items()))


#: Segmentation rows (task ``segmentation``), in the order of the comparison.
SEGMENTATION: tuple[PaperRow, ...] = (
    _seg("sum", 48.1, "summing activations across the streams, shared convs, ensemble"),
    _seg("gated_sum", 48.4, "summing activations through a soft gate, shared convs, ensemble"),
    _seg("cbn_unshared", 48.3, "conditional BN (one modality's BN modulated by the other), unshared convs"),
    _seg("cbn_shared", 48.9, "conditional BN (one modality's BN modulated by the other), shared convs"),
    _seg("concat_head", 50.8, "CEN with a concat-fusion block instead of the ensemble"),
    _seg("cen", 51.1, "CEN: channel exchange, shared convs, ensemble"),
    _seg("fixed30", 47.2, "exchanging a fixed 30 % of channels, no l1"),
    _seg("random", 46.8, "random channel exchange (ShuffleNet-style)"),
    _seg("discard", 47.5, "discarding low-gamma channels without exchanging"),
    _seg("unshared_l1_full", 49.1, 'unshared convs, l1 on all channels ("full")'),
    _seg("unshared_l1_half", 48.5, 'unshared convs, l1 on half the channels ("half")'),
    _seg("l1_alone", None, "l1 on gamma alone, no exchange", text="no improvement"),
    _seg("rgb_only", None, "unimodal RGB network (no number in the author feedback)"),
    _seg("depth_only", None, "unimodal depth network (no number in the author feedback)"),
    _seg("nyudv2_r101", 51.1, "CEN, RefineNet-101 on NYUDv2", source=PAPER, pixel_acc=76.2, mean_acc=62.8),
    _seg("nyudv2_r152", 51.6, "CEN, RefineNet-152 on NYUDv2", source=PAPER, pixel_acc=77.0, mean_acc=64.4),
    # The paper's SUN RGB-D table: 50.2 with ResNet-101, 51.1 with ResNet-152 (the 51.1 once listed here
    # was the ResNet-152 row).
    _seg("sunrgbd_r101", 50.2, "CEN, RefineNet-101 on SUN RGB-D", source=PAPER),
)

#: Translation rows (task ``translation``): paper Eq. 6 with the mean vs a |gamma|-weighted sum.
TRANSLATION: tuple[PaperRow, ...] = (
    PaperRow(
        "exchange_mean",
        "Eq. 6 with the mean of the other modalities (depth + normal + texture -> RGB)",
        "fid",
        60.90,
        FEEDBACK_TRANSLATION,
    ),
    PaperRow(
        "exchange_weighted",
        "Eq. 6 with a |gamma|-weighted sum instead of the mean (depth + normal + texture -> RGB)",
        "fid",
        60.94,
        FEEDBACK_TRANSLATION,
    ),
)

ROWS: dict[str, tuple[PaperRow, ...]] = {"segmentation": SEGMENTATION, "translation": TRANSLATION}


def paper_row(name: str, task: str = "segmentation") -> PaperRow | None:
    """The published row of the recipe ``name`` (a config stem) for ``task``, or None."""
    return next((row for row in ROWS.get(task, ()) if row.name == name), None)
