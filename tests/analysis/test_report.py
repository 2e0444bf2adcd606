"""cen report: the pages, their numbers, and bad input (run folders built by hand in conftest.py)."""

import argparse
import json
import re

import pytest

from cen.analysis.report import write_comparison, write_report
from cen.analysis.runs import RunError, load_run
from cen.cli import report as report_cli

from .conftest import LAYERS


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="cen")
    report_cli.register(parser.add_subparsers())
    args = parser.parse_args(["report", *map(str, argv)])
    return args.func(args)


def _images(html_path):
    return re.findall(r'<img src="([^"]+)"', html_path.read_text(encoding="utf-8"))


def _assert_images_exist(html_path):
    srcs = _images(html_path)
    assert srcs
    for src in srcs:
        assert not src.startswith(("/", "http")), src  # relative links only
        assert (html_path.parent / src).is_file(), src
        assert (html_path.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return srcs


def test_segmentation_run_report(make_run):
    run = make_run()
    html_path, notes = write_report(run)
    assert html_path == run / "report" / "report.html" and notes == []
    srcs = _assert_images_exist(html_path)
    for name in (
        "figure_a.png",
        "figure_a_over_training.png",
        "exchange_over_training.png",
        "theorem1_over_training.png",
        "gamma_histograms.png",
        "train_curves.png",
        "val_curves.png",
        "alpha.png",
        "heatmap_per_class_iou.png",
        "predictions/pred_0000_ensemble.png",
    ):
        assert name in srcs, name
    data = json.loads((run / "report" / "report.json").read_text())
    # Figure A of best.pt, from its gammas: the fractions set in conftest's `final`
    layers = data["exchange"]["checkpoint"]["layers"]
    assert list(layers) == LAYERS
    assert layers[LAYERS[0]] == {"rgb": 0.0, "depth": 0.25}
    assert layers[LAYERS[2]] == {"rgb": 0.5, "depth": 0.75}
    stacked = data["exchange"]["checkpoint"]["stacked"][LAYERS[2]]
    # one definition of "exchanged" (|gamma| < theta, any channel), split by the modality's penalised group:
    # depth gives up channels 0-5, of which 4-5 are its own penalised ones and 0-3 are not
    assert stacked == pytest.approx(
        {"not exchanged": 0.375, "rgb": 0.25, "rgb (unpenalised)": 0.0, "depth": 0.125, "depth (unpenalised)": 0.25}
    )
    halves = data["exchange"]["checkpoint"]["halves"]
    assert halves["lower_half"] == pytest.approx(0.125) and halves["upper_half"] == pytest.approx(0.625)
    assert halves["upper_exchanges_more"] is True
    assert len(data["exchange"]["over_training"]) == 3
    # Theorem 1: penalised rgb = channels 0-3, depth 4-7; the zeroed channels are the first ones
    total = data["theorem1"]["latest"]["total"]
    assert (total["penalised"], total["ever"], total["under"], total["recovered"]) == (24, 8, 8, 0)
    assert [r["step"] for r in data["theorem1"]["over_training"]] == [4, 8, 12]
    assert data["test"]["ensemble"]["miou"] == pytest.approx(0.32)
    assert data["per_class"]["per_class_iou"]["depth"][1] == pytest.approx(0.6)
    assert [a["step"] for a in data["alpha"]] == [4, 8, 12]
    text = html_path.read_text()
    assert "upper layers exchange more" in text
    assert data["class_names"][:2] == ["wall", "floor"]  # the generated scenes' classes


def test_translation_three_modalities_without_per_class(make_run, tmp_path):
    run = make_run("trans", modalities=("reshading", "edge_texture", "normal"), task="translation")
    html_path, _ = write_report(run, tmp_path / "out")
    _assert_images_exist(html_path)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(data["test"]) == {"reshading", "edge_texture", "normal", "ensemble"}
    assert data["test"]["normal"] == pytest.approx({"l1": 0.5 / 3, "rmse": 0.7 / 3, "fid": 200.0 / 3, "kid": 0.05 / 3})
    assert set(data["exchange"]["checkpoint"]["layers"][LAYERS[0]]) == {"reshading", "edge_texture", "normal"}
    text = html_path.read_text()
    assert "fid" in text and "No per-class scores" in text
    assert "heatmap" not in " ".join(_images(html_path))


def test_run_without_exchange_says_so(make_run):
    run = make_run("plain", exchange=False)
    html_path, _ = write_report(run)
    text = html_path.read_text()
    assert "No exchange to show: the run was trained without fusion points" in text
    assert "has no exchanging layers" in text  # the tracker found nothing to track
    assert "figure_a.png" not in _images(html_path)
    _assert_images_exist(html_path)


def test_old_checkpoint_without_tracking(make_run):
    run = make_run("old", tracker=False, checkpoint="v1")
    html_path, notes = write_report(run)
    assert any("no gamma tracking state" in n for n in notes)
    assert sum("no gamma tracking state" in n for n in notes) == 1  # said once for best.pt and last.pt
    text = html_path.read_text()
    assert "did not track gamma" in text
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["exchange"]["checkpoint"]["layers"][LAYERS[1]] == {"rgb": 0.25, "depth": 0.25}  # v1 "model" key
    assert data["theorem1"]["latest"] is None


def test_tracker_state_alone_gives_the_statistics(make_run):
    run = make_run("state_only")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(x for x in lines if '"kind": "gamma"' not in x) + "\n")
    write_report(run)
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["theorem1"]["latest"]["total"]["ever"] == 8 and data["theorem1"]["over_training"] == []


def test_running_run_partial_files(make_run):
    run = make_run("running", results=False, images=False, checkpoint=None, tracker=False)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "step": 13, "lo')  # being written
    html_path, notes = write_report(run)
    joined = " | ".join(notes)
    assert "skipped 1 line" in joined and "results.json: missing" in joined and "best.pt: missing" in joined
    _assert_images_exist(html_path)
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["test"] == {} and "No test scores yet" in html_path.read_text()
    assert data["exchange"]["checkpoint"] is None and len(data["exchange"]["over_training"]) == 3


def test_bad_input_one_line_errors(make_run, tmp_path, capsys):
    assert _cli(tmp_path / "nowhere") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert _cli(tmp_path / "empty") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run folder" in err
    with pytest.raises(RunError):
        load_run(tmp_path / "empty")
    # a run without metrics yet: a report and notes, exit 0
    only = tmp_path / "started"
    only.mkdir()
    (only / "config.yaml").write_text("modalities: [rgb, depth]\n")
    assert _cli(only) == 0
    captured = capsys.readouterr()
    assert "metrics.jsonl: missing" in captured.err and "Traceback" not in captured.err
    assert captured.out.strip().endswith("report.html")
    # corrupt checkpoints: a note, not a crash
    run = make_run("corrupt", checkpoint="corrupt", tracker=False)
    assert _cli(run) == 0
    assert "cannot be read as a checkpoint" in capsys.readouterr().err


def test_comparison_page(make_run, tmp_path, capsys):
    a = make_run("a")
    b = make_run("b", modalities=("rgb",), exchange=False, tracker=False)
    assert _cli(a, b) == 2 and "--out" in capsys.readouterr().err
    out = tmp_path / "cmp"
    html_path, _ = write_comparison([a, b, tmp_path / "not_there"], out)
    srcs = _assert_images_exist(html_path)
    assert srcs == ["compare_curves.png"]
    assert (out / "a" / "report.html").is_file() and (out / "b" / "report.html").is_file()
    data = json.loads((out / "report.json").read_text())
    assert data["runs"]["a"]["branch"] == "ensemble" and data["runs"]["b"]["branch"] == "rgb"
    assert data["runs"]["b"]["test"]["rgb"]["miou"] == pytest.approx(0.3)
    assert any("no such folder" in n for n in data["notes"])
    assert 'href="a/report.html"' in html_path.read_text()


def test_corruption_scores_in_the_run_folder_get_a_section(make_run):
    run = make_run("faults")
    scores = lambda v: {"ensemble": {"miou": v}}  # noqa: E731
    records = [
        {"modality": None, "corruption": None, "severity": 0, "scores": scores(0.6)},
        {"modality": "depth", "corruption": "depth_holes", "severity": 1, "scores": scores(0.55)},
        {"modality": "depth", "corruption": "depth_holes", "severity": 5, "scores": scores(0.3)},
    ]
    (run / "corruptions.json").write_text(
        json.dumps({"branch": "ensemble", "metric": "miou", "corruptions": records}), encoding="utf-8"
    )
    html_path, _ = write_report(run)
    text = html_path.read_text()
    assert "Under sensor faults" in text and "depth: depth_holes" in text and "corruptions.png" in _images(html_path)
    data = json.loads((html_path.parent / "report.json").read_text())
    assert data["corruptions"]["depth: depth_holes"] == [[0, 0.6], [1, 0.55], [5, 0.3]]
