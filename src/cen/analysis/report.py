"""``cen report``: one run (or several, compared) as ``report.html`` with PNG figures and ``report.json``.

The page links its figures as PNG files beside it (relative paths), so the folder
is self-contained and can be moved or served as it is, the HTML stays small, and a
figure can be reused elsewhere (the README shows Figure A). ``report.json`` holds
the numbers behind every figure and table.

Every section is built from what the run has; what is missing is said in the
section (and in the notes at the top), never raised.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cen.analysis.runs import Run, load_run, numeric_scores, per_class_scores
from cen.core.defaults import ENSEMBLE_KEY
from cen.core.sparsity import disjoint_groups
from cen.train import figures
from cen.train.gamma import summarize_state

#: Score keys shown in % (fractions in [0, 1]); any other numeric score is shown as it is.
_FRACTION = re.compile(r"(acc|iou)", re.IGNORECASE)
#: Train-record fields that are not losses.
_NOT_LOSS = {"kind", "step", "time", "epoch", "images_per_s"}
_SNAPSHOTS = 12  # most panels in the Figure A small multiple
_HISTOGRAM_LAYERS = 4

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:.5em 0} .missing{color:#8a5a00;background:#fff6e0;padding:.4em .7em}
.notes{background:#fff6e0;padding:.5em 1em}
.grid img{display:inline-block;width:48%;margin:.3em;image-rendering:pixelated}
code{background:#f3f3f3;padding:0 .2em}
"""


def _is_fraction(key: str) -> bool:
    return bool(_FRACTION.search(key))


def _fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if _is_fraction(key):
        return f"{100 * value:.2f}"
    return f"{value:.4g}"


def _header(key: str) -> str:
    return f"{key} (%)" if _is_fraction(key) else key


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


class Page:
    """Sections of HTML and the figures they link, written into ``out``."""

    def __init__(self, out: Path, title: str) -> None:
        self.out, self.title = out, title
        self.sections: list[tuple[str, list[str]]] = []
        self.figures: list[str] = []

    def section(self, title: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((title, parts))
        return parts

    def figure(self, fig, name: str, alt: str) -> str:
        figures.save(fig, self.out / name)
        self.figures.append(name)
        return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'

    def write(self, notes: Sequence[str], intro: str = "") -> Path:
        body = [f"<h1>{html.escape(self.title)}</h1>", intro]
        if notes:
            body.append(
                '<div class="notes"><b>Missing or partial:</b><ul>'
                + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                + "</ul></div>"
            )
        for title, parts in self.sections:
            body.append(f"<h2>{html.escape(title)}</h2>")
            body.extend(parts)
        text = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body)
            + "</body></html>\n"
        )
        path = self.out / "report.html"
        path.write_text(text, encoding="utf-8")
        return path


# -- the numbers ---------------------------------------------------------------
def checkpoint_exchange(run: Run, key: str = "best") -> dict | None:
    """``{"checkpoint", "layers": {layer: {modality: fraction exchanged}}, "unpenalised": {...}}`` from a checkpoint's
    ``|gamma| < theta`` (:mod:`cen.core.stats`: every channel under θ is exchanged; ``unpenalised`` is the part
    outside the modality's penalised group)."""
    ckpt = run.checkpoints.get(key)
    if ckpt is None or not ckpt.gammas:
        return None
    mods = run.modalities
    layers, outside = {}, {}
    for layer, g in ckpt.gammas.items():
        below = g.abs() < ckpt.thresholds[layer]
        groups = disjoint_groups(g.shape[0], g.shape[1])
        name = lambda m: mods[m] if m < len(mods) else f"m{m}"  # noqa: E731
        layers[layer] = {name(m): v for m, v in enumerate(below.float().mean(1).tolist())}
        outside[layer] = {name(m): v for m, v in enumerate((below & ~groups).float().mean(1).tolist())}
    return {"checkpoint": ckpt.path.name, "step": ckpt.progress.get("global_step"), "layers": layers,
            "unpenalised": outside}  # fmt: skip


def halves(layers: Mapping[str, Mapping[str, float]]) -> dict | None:
    """Mean exchanged fraction (over modalities) of the lower and the upper half of the layers.

    With an odd number of layers the middle one belongs to neither half.
    """
    names = list(layers)
    if len(names) < 2:
        return None
    mean = [sum(layers[n].values()) / max(len(layers[n]), 1) for n in names]
    k = len(names) // 2
    lower, upper = sum(mean[:k]) / k, sum(mean[len(names) - k :]) / k
    return {"lower_half": lower, "upper_half": upper, "upper_exchanges_more": upper > lower}


def _series(records: Sequence[dict], get: Callable[[dict], Mapping | None]) -> dict[str, tuple[list, list]]:
    """``{name: (steps, values)}`` from records whose ``get(record)`` is a ``{name: value}`` mapping."""
    out: dict[str, tuple[list, list]] = {}
    for rec in records:
        values = get(rec)
        if not isinstance(values, Mapping):
            continue
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
                xs, ys = out.setdefault(str(name), ([], []))
                xs.append(rec.get("step", 0))
                ys.append(value)
    return out


def _class_names(run: Run, count: int) -> list[str]:
    data = run.config.get("data") or {}
    if data.get("dataset") == "scenes":
        from cen.data.synth import CLASS_NAMES

        if len(CLASS_NAMES) == count:
            return list(CLASS_NAMES)
    return [str(i) for i in range(count)]


def _snapshots(items: Sequence, limit: int) -> list:
    if len(items) <= limit:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in idx]


# -- the sections -------------------------------------------------------------------
def _exchange_section(page: Page, run: Run, data: dict) -> None:
    parts = page.section("Figure A: which channels exchange, per layer")
    mods = run.modalities
    best = checkpoint_exchange(run, "best") or checkpoint_exchange(run, "last")
    over = [rec for rec in run.evaluations() if isinstance(rec.get("exchange"), dict) and rec["exchange"]]
    data["exchange"] = {
        "checkpoint": best,
        "over_training": [
            {"step": r.get("step"), "epoch": r.get("epoch"), "layers": r["exchange"], "mean": r.get("exchange_mean")}
            for r in over
        ],
    }
    if best is None and not over:
        model, fusion = run.config.get("model") or {}, run.config.get("fusion") or {}
        why = (
            "the run was trained without fusion points (fusion.points: false)"
            if fusion.get("points") is False or model.get("exchange") is False
            else "no exchanging layers found in the checkpoints or the records"
        )
        parts.append(_missing(f"No exchange to show: {why}."))
        return
    if best is not None:
        layers = list(best["layers"])
        shares = figures.stacked_shares(layers, best["layers"], mods, best.get("unpenalised"))
        best["stacked"] = shares
        best["halves"] = halves(best["layers"])
        parts.append(
            page.figure(
                figures.figure_a(layers, shares, mods, f"{best['checkpoint']} (step {best['step']})"),
                "figure_a.png",
                "Figure A",
            )
        )
        h = best["halves"]
        if h:
            parts.append(
                f"<p>Mean exchanged share of a modality's channels: lower half of the layers "
                f"{100 * h['lower_half']:.1f}%, upper half {100 * h['upper_half']:.1f}% "
                f"(upper layers {'exchange more' if h['upper_exchanges_more'] else 'do not exchange more'};"
                " the paper observes that they do).</p>"
            )
    else:
        parts.append(_missing("No checkpoint with the exchanging layers' scales: no Figure A of best.pt."))
    if over:
        layers = list(over[-1]["exchange"])
        frames = [
            (
                f"epoch {r.get('epoch')} · step {r.get('step')}",
                figures.stacked_shares(layers, r["exchange"], mods, r.get("exchange_unpenalised")),
            )
            for r in _snapshots(over, _SNAPSHOTS)
        ]
        parts.append("<p>The same bars at each evaluation (from <code>metrics.jsonl</code>):</p>")
        parts.append(
            page.figure(
                figures.figure_a_over_time(frames, layers, mods), "figure_a_over_training.png", "Figure A over training"
            )
        )
        mean = _series(over, lambda r: r.get("exchange_mean"))
        if mean:
            parts.append(
                _lines(
                    page, mean, "exchange_over_training.png", "exchange share over training",
                    title="exchanged share of each modality's channels (mean over layers)", ylabel="exchanged",
                    percent=True,
                )
            )  # fmt: skip
    else:
        parts.append(_missing("No evaluation with exchange records yet: no Figure A over training."))


def _lines(page: Page, series: Mapping, file: str, caption: str, **style) -> str:
    """A line figure of ``series`` ({label: [(step, value)]}) saved as ``file`` on ``page``."""
    return page.figure(figures.lines(series, **style), file, caption)


def _theorem_section(page: Page, run: Run, data: dict) -> None:
    parts = page.section("Theorem 1: do scales that fell under θ stay there?")
    records = run.gamma_records()
    state = next(
        (c.tracker for c in (run.checkpoints.get("last"), run.checkpoints.get("best")) if c is not None and c.tracker),
        None,
    )
    latest = records[-1][1] if records else (summarize_state(state) if state else None)
    data["theorem1"] = {"latest": latest, "over_training": [{"step": s, "total": r.get("total")} for s, r in records]}
    if latest is None:
        parts.append(
            _missing(
                "This run did not track gamma (no 'gamma' records in metrics.jsonl and no "
                "'gamma_tracker' in the checkpoints): the recovery statistics are not available."
            )
        )
        return
    if not latest.get("layers"):
        parts.append(_missing("The run tracked gamma but has no exchanging layers."))
        return
    t = latest["total"]
    parts.append(
        f"<p>Of {t['penalised']} penalised scales (θ = {html.escape(str(latest.get('threshold')))}, "
        f"sparsity mode {html.escape(str(latest.get('mode')))}, {latest.get('updates')} steps tracked): "
        f"<b>{t['ever']}</b> ever fell under θ ({_fmt('acc', t['share_ever'])}%), {t['under']} are under now; "
        f"<b>{t['recovered']}</b> of those that fell rose back above θ at least once "
        f"({_fmt('acc', t['share_recovered'])}%), {t['back_now']} are above now.</p>"
    )
    rows = []
    for layer, per in latest["layers"].items():
        for mod, r in per.items():
            rows.append(
                [
                    layer,
                    mod,
                    r["penalised"],
                    _fmt("acc", r["share_under"]),
                    _fmt("acc", r["share_ever"]),
                    r["recovered"],
                    _fmt("acc", r["share_recovered"]),
                    r["rises"],
                ]
            )
    parts.append(
        _table(
            [
                "layer",
                "modality",
                "penalised",
                "under θ now (%)",
                "ever under θ (%)",
                "recovered",
                "recovered of fallen (%)",
                "rises",
            ],
            rows,
        )
    )
    if records:
        totals = [(s, r["total"]) for s, r in records if isinstance(r.get("total"), dict)]
        series = {
            label: ([s for s, _ in totals], [tot.get(key) for _, tot in totals])
            for label, key in (
                ("under θ now", "share_under"),
                ("ever under θ", "share_ever"),
                ("recovered (of those that fell)", "share_recovered"),
            )
        }
        styles = {"ever under θ": "--", "recovered (of those that fell)": ":"}
        parts.append(
            _lines(
                page, series, "theorem1_over_training.png", "Theorem 1 statistics over training",
                title="penalised scales relative to θ over training", ylabel="share", percent=True, styles=styles,
            )
        )  # fmt: skip
    else:
        parts.append(_missing("No per-evaluation 'gamma' records: only the final state (from the checkpoint)."))


def _histogram_section(page: Page, run: Run, data: dict) -> None:
    parts = page.section("γ histograms, bottom to top")
    key = "best" if run.checkpoints.get("best") and run.checkpoints["best"].gammas else "last"
    ckpt = run.checkpoints.get(key)
    if ckpt is None or not ckpt.gammas:
        parts.append(_missing("No checkpoint with exchanging layers: no γ histograms."))
        return
    layers = _snapshots(list(ckpt.gammas), _HISTOGRAM_LAYERS)
    mode = (run.config.get("loss") or {}).get("sparsity_mode", "disjoint")
    gammas = {n: ckpt.gammas[n].numpy() for n in layers}
    penalised = {
        n: (
            disjoint_groups(*ckpt.gammas[n].shape).numpy()
            if mode == "disjoint"
            else np.full(ckpt.gammas[n].shape, mode == "all")
        )
        for n in layers
    }
    data["gamma_histograms"] = {
        "checkpoint": ckpt.path.name,
        "layers": {
            n: {"threshold": ckpt.thresholds[n], "abs_gamma": np.abs(gammas[n]).round(6).tolist()} for n in layers
        },
    }
    fig = figures.gamma_histograms(
        gammas,
        penalised,
        {n: ckpt.thresholds[n] for n in layers},
        run.modalities,
        f"|γ| of {ckpt.path.name}; dashed: θ",
    )
    parts.append(page.figure(fig, "gamma_histograms.png", "gamma histograms"))


def _training_section(page: Page, run: Run, data: dict) -> None:
    parts = page.section("Training: loss, validation scores, ensemble weights α")
    train = run.kind("train")
    losses = _series(train, lambda r: {k: v for k, v in r.items() if k not in _NOT_LOSS and not k.startswith("lr/")})
    rates = _series(train, lambda r: {k: v for k, v in r.items() if k.startswith("lr/")})
    data["train"] = {k: {"step": x, "value": y} for k, (x, y) in losses.items()}
    if losses:
        groups = {"loss": {k: v for k, v in losses.items() if k == "loss" or "/" not in k}}
        parts_by = {k.split("/")[0] for k in losses if "/" in k}
        for prefix in sorted(parts_by):
            groups[prefix] = {k.split("/", 1)[1]: v for k, v in losses.items() if k.startswith(prefix + "/")}
        if rates:
            groups["learning rate"] = rates
        parts.append(page.figure(figures.panels(groups), "train_curves.png", "training losses"))
    else:
        parts.append(_missing("No train records in metrics.jsonl yet."))
    evals = run.evaluations()
    keys: list[str] = []
    for rec in evals:
        for scores in (rec.get("scores") or {}).values():
            keys += [k for k in numeric_scores(scores) if k not in keys]
    groups = {
        key: _series(evals, lambda r, key=key: {b: s.get(key) for b, s in (r.get("scores") or {}).items()})
        for key in keys
    }
    data["val"] = [{"step": r.get("step"), "epoch": r.get("epoch"), "scores": r.get("scores")} for r in evals]
    if groups:
        parts.append(
            page.figure(
                figures.panels(groups, percent_keys=[k for k in keys if _is_fraction(k)]),
                "val_curves.png",
                "validation scores",
            )
        )
    else:
        parts.append(_missing("No validation records yet."))
    alpha = _series(evals, lambda r: r.get("alpha"))
    data["alpha"] = [{"step": r.get("step"), "alpha": r.get("alpha")} for r in evals if r.get("alpha")]
    if alpha:
        parts.append(_lines(page, alpha, "alpha.png", "alpha over training", title="ensemble weights softmax(α)",
                            ylabel="weight"))  # fmt: skip
    else:
        parts.append(_missing("No α in the records (a model without ensemble, or no evaluation yet)."))


def _test_section(page: Page, run: Run, data: dict) -> None:
    parts = page.section("Test scores per branch")
    test = run.test_scores()
    data["test"] = {b: numeric_scores(s) for b, s in test.items()}
    if not test:
        parts.append(_missing("No test scores yet (results.json and test records absent: run not finished?)."))
        return
    keys: list[str] = []
    for s in data["test"].values():
        keys += [k for k in s if k not in keys]
    rows = [[b] + [_fmt(k, data["test"][b].get(k)) for k in keys] for b in test]
    source = "results.json" if run.results else "the last test record of metrics.jsonl"
    parts.append(f"<p>From {source}. The ensemble row is <code>{ENSEMBLE_KEY}</code>.</p>")
    parts.append(_table(["branch"] + [_header(k) for k in keys], rows))
    per_class = {b: per_class_scores(s) for b, s in test.items()}
    kinds: list[str] = []
    for d in per_class.values():
        kinds += [k for k in d if k not in kinds]
    data["per_class"] = {k: {b: per_class[b].get(k) for b in test} for k in kinds}
    if not kinds:
        parts.append(_missing("No per-class scores (results.json has no per-class lists)."))
    for kind in kinds:
        branches = [b for b in test if kind in per_class[b]]
        count = max(len(per_class[b][kind]) for b in branches)
        data["class_names"] = _class_names(run, count)
        matrix = [per_class[b][kind] + [None] * (count - len(per_class[b][kind])) for b in branches]
        parts.append(
            page.figure(
                figures.heatmap(
                    matrix, branches, _class_names(run, count), title=f"{kind} (%) per class; blank: class absent"
                ),
                f"heatmap_{re.sub(r'[^A-Za-z0-9_]+', '_', kind)}.png",
                f"{kind} heat map",
            )
        )


def _predictions_section(page: Page, run: Run, data: dict) -> None:
    parts = page.section("Test predictions (best checkpoint)")
    src = run.path / "images" / "test_best"
    files = sorted(p for p in src.glob("*.png")) if src.is_dir() else []
    if not files:
        parts.append(_missing(f"No prediction images in {src}."))
        data["predictions"] = []
        return
    dest = page.out / "predictions"
    dest.mkdir(exist_ok=True)
    links = []
    for f in files:
        shutil.copyfile(f, dest / f.name)
        links.append(f"predictions/{f.name}")
    data["predictions"] = links
    parts.append(
        '<div class="grid">' + "".join(f'<img src="{html.escape(p)}" alt="{html.escape(p)}">' for p in links) + "</div>"
    )


def _robustness_section(page: Page, run: Run, data: dict) -> None:
    """``cen eval --corruptions --out RUN_DIR`` left ``corruptions.json`` in the run folder: its table and plot."""
    file = run.path / "corruptions.json"
    if not file.is_file():
        return
    from cen.train.robustness import curves, figure

    saved = json.loads(file.read_text(encoding="utf-8"))
    records, branch, metric = saved["corruptions"], saved["branch"], saved["metric"]
    parts = page.section(f"Under sensor faults ({branch} {metric}; cen eval --corruptions)")
    series = curves(records, branch, metric)
    data["corruptions"] = {key: points for key, points in series.items()}
    severities = sorted({s for pts in series.values() for s, _ in pts})
    rows = [[key, *(_fmt(metric, dict(pts).get(s)) for s in severities)] for key, pts in series.items()]
    parts.append(_table(["modality: corruption", *(f"severity {s}" if s else "clean" for s in severities)], rows))
    parts.append(
        page.figure(
            figure(records, branch, metric, metric, f"{branch} {metric} under sensor faults"),
            "corruptions.png",
            "score against the severity of each fault",
        )  # fmt: skip
    )


SECTIONS = (
    _exchange_section,
    _theorem_section,
    _histogram_section,
    _training_section,
    _test_section,
    _robustness_section,
    _predictions_section,
)


def _build(page: Page, run: Run, data: dict, sections, notes: list[str]) -> None:
    for build in sections:
        try:
            build(page, run, data)
        except Exception as err:  # noqa: BLE001 -- one broken section must not cost the others; say which and why
            notes.append(f"section {build.__name__.strip('_')} failed: {type(err).__name__}: {err}")


def _intro(run: Run) -> str:
    cfg = run.config
    model = cfg.get("model") or {}
    bits = [
        f"run folder <code>{html.escape(str(run.path))}</code>",
        f"modalities {html.escape(', '.join(run.modalities) or '?')}",
    ]
    if model:
        backbone = f" {model['backbone']}" if model.get("name") == "refinenet" and model.get("backbone") else ""
        bits.append(
            f"model {html.escape(str(model.get('name')) + backbone)}, "
            f"fusion {(cfg.get('fusion') or {}).get('strategy', model.get('fusion', 'exchange'))}, θ {run.threshold:g}"
        )
    loss = cfg.get("loss") or {}
    if loss:
        bits.append(
            f"λ {loss.get('sparsity_weight')}, sparsity {loss.get('sparsity_mode')} "
            f"({loss.get('sparsity_solver', 'gradient')} solver)"
        )
    train = cfg.get("train") or {}
    results = run.results or {}
    if train.get("precision"):
        layout = "channels-last" if train.get("channels_last") is True else "contiguous"
        where = results.get("device") or train.get("device", "?")
        cpu = f" ({results['cpu']})" if results.get("cpu") else ""
        threads = f", {results['threads']} threads" if results.get("threads") else ""
        bits.append(f"trained in {train['precision']}, {layout}, on {html.escape(str(where) + cpu)}{threads}")
    return "<p>" + "; ".join(bits) + ".</p>"


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write ``report.html``, ``report.json`` and the PNG figures of one run into ``out`` (default ``RUN_DIR/report``).

    Returns the HTML path and the notes (what is missing or partial). Raises
    :class:`cen.analysis.runs.RunError` if ``run_dir`` is not a run folder.
    """
    run = load_run(run_dir)
    out = Path(out) if out is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes = list(run.notes)
    page = Page(out, f"cen report: {run.name}")
    data: dict = {"run": str(run.path), "modalities": run.modalities, "threshold": run.threshold}
    _build(page, run, data, SECTIONS, notes)
    data["notes"] = notes
    data["figures"] = page.figures
    (out / "report.json").write_text(json.dumps(_jsonable(data), indent=1), encoding="utf-8")
    return page.write(notes, _intro(run)), notes


# -- several runs ------------------------------------------------------------------
def _select_branch(run: Run) -> str | None:
    branches = [b for rec in run.evaluations()[-1:] for b in (rec.get("scores") or {})] or list(run.test_scores())
    if not branches:
        return None
    return ENSEMBLE_KEY if ENSEMBLE_KEY in branches else branches[0]


def _unique_names(runs: Sequence[Run]) -> list[str]:
    names, seen = [], {}
    for run in runs:
        name = run.name
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> tuple[Path, list[str]]:
    """A comparison page of several runs in ``out``, with each run's own report in ``out/<run name>/``.

    Runs that are not run folders are left out with a note (an error only if none is left).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, notes = [], []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except ValueError as err:
            notes.append(str(err))
    if not runs:
        from cen.analysis.runs import RunError

        raise RunError("none of the folders is a run: " + "; ".join(notes))
    names = _unique_names(runs)
    page = Page(out, "cen report: " + " vs ".join(names))
    data: dict = {"runs": {}}
    for run, name in zip(runs, names):
        _, run_notes = write_report(run.path, out / name)
        notes += [f"{name}: {n}" for n in run_notes]
        data["runs"][name] = {
            "path": str(run.path),
            "report": f"{name}/report.html",
            "branch": _select_branch(run),
            "test": {b: numeric_scores(s) for b, s in run.test_scores().items()},
        }
    _compare_sections(page, runs, names, data, notes)
    data["notes"] = notes
    data["figures"] = page.figures
    (out / "report.json").write_text(json.dumps(_jsonable(data), indent=1), encoding="utf-8")
    links = " · ".join(f'<a href="{html.escape(n)}/report.html">{html.escape(n)}</a>' for n in names)
    return page.write(notes, f"<p>Each run's own report: {links}.</p>"), notes


def _compare_sections(page: Page, runs: Sequence[Run], names: Sequence[str], data: dict, notes: list[str]) -> None:
    parts = page.section("Test scores")
    keys: list[str] = []
    for entry in data["runs"].values():
        for s in entry["test"].values():
            keys += [k for k in s if k not in keys]
    rows = [
        [name, b] + [_fmt(k, s.get(k)) for k in keys] for name in names for b, s in data["runs"][name]["test"].items()
    ]
    parts.append(
        _table(["run", "branch"] + [_header(k) for k in keys], rows)
        if rows
        else _missing("None of the runs has test scores yet.")
    )
    parts = page.section("Curves (validation: each run's selected branch; ensemble if it has one)")
    val_keys: list[str] = []
    for run in runs:
        for rec in run.evaluations():
            for s in (rec.get("scores") or {}).values():
                val_keys += [k for k in numeric_scores(s) if k not in val_keys]
    groups: dict[str, dict] = {}
    for run, name in zip(runs, names):
        branch = data["runs"][name]["branch"]
        loss = _series(run.kind("train"), lambda r: {"loss": r.get("loss")})
        if loss:
            groups.setdefault("train loss", {})[name] = loss["loss"]
        for key in val_keys:
            s = _series(
                run.evaluations(),
                lambda r, key=key, branch=branch: {"v": ((r.get("scores") or {}).get(branch) or {}).get(key)},
            )
            if s:
                groups.setdefault(f"val {key}", {})[f"{name} ({branch})"] = s["v"]
        mean = _series(run.evaluations(), lambda r: {"v": _mean_exchange(r)})
        if mean:
            groups.setdefault("exchanged share (mean)", {})[name] = mean["v"]
    if groups:
        parts.append(
            page.figure(
                figures.panels(
                    groups, percent_keys=[g for g in groups if _is_fraction(g) or g.startswith("exchanged")]
                ),
                "compare_curves.png",
                "curves of every run",
            )
        )
    else:
        parts.append(_missing("No curves: none of the runs has records yet."))


def _mean_exchange(rec: dict) -> float | None:
    mean = rec.get("exchange_mean")
    if not isinstance(mean, Mapping) or not mean:
        return None
    return sum(mean.values()) / len(mean)


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x
