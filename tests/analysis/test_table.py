"""``cen table``: rows from run folders made by hand (results.json, metrics.jsonl, config.yaml, sweep.json)."""

import argparse
import csv
import io
import json

import pytest

from cen.analysis.paper import SEGMENTATION, TRANSLATION, paper_row
from cen.analysis.table import (
    TableError,
    collect_rows,
    csv_text,
    markdown,
    sort_rows,
    train_seconds,
    write_table,
)
from cen.cli import table as table_cli


def _seg(miou, pixel=0.7, mean=0.6):
    return {"pixel_acc": pixel, "mean_acc": mean, "miou": miou, "per_class_iou": [0.1, None]}


def _run(
    parent,
    name,
    *,
    test=None,
    modalities=("rgb", "depth"),
    task="segmentation",
    select="auto",
    params=1234567,
    times=(100.0, 160.0),
    records=None,
    last=True,
):
    run = parent / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"task: {task}\nmodalities: [{', '.join(modalities)}]\ntrain: {{select: {select}}}\n", encoding="utf-8"
    )
    if records is None:
        records = [{"kind": "info", "step": 0, "time": times[0], "event": "start", "params": params}]
        records += [{"kind": "train", "step": i + 1, "time": t, "loss": 1.0} for i, t in enumerate(times[1:])]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if last:
        (run / "last.pt").write_bytes(b"not read by the table")
    if test is not None:
        (run / "results.json").write_text(json.dumps({"best_epoch": 3, "test": test}), encoding="utf-8")
    return run


def _rows_by_name(text):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return head, {
        cells[0]: dict(zip(head, cells))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])
    }


def test_rows_hold_ensemble_scores_in_percent_params_time_and_the_paper_number(tmp_path):
    _run(tmp_path, "cen", test={"rgb": _seg(0.40), "depth": _seg(0.38), "ensemble": _seg(0.4567, 0.8123, 0.6)})
    _run(tmp_path, "mine", test={"rgb": _seg(0.30), "depth": _seg(0.31), "ensemble": _seg(0.35)}, params=512)
    head, rows = _rows_by_name(markdown(collect_rows(tmp_path)))
    assert head[:6] == ["run", "status", "branch", "pixel acc %", "mean acc %", "mIoU %"]
    assert "per_class_iou" not in " ".join(head)  # per-class lists are not columns
    cen = rows["cen"]
    assert (cen["status"], cen["branch"], cen["mIoU %"], cen["pixel acc %"]) == ("done", "ensemble", "45.67", "81.23")
    assert cen["params"] == "1.23 M" and cen["train time"] == "1m00s"
    assert cen["paper mIoU %"] == "51.1" and cen["paper row"].startswith("CEN: channel exchange")
    assert rows["mine"]["paper mIoU %"] == "" and rows["mine"]["params"] == "512"


def test_without_an_ensemble_the_selected_branch_else_the_first_modality(tmp_path):
    _run(tmp_path, "rgb_only", modalities=("rgb",), test={"rgb": _seg(0.41)})
    _run(tmp_path, "picked", select="depth", test={"rgb": _seg(0.2), "depth": _seg(0.3)})
    _run(tmp_path, "first", modalities=("depth", "rgb"), test={"rgb": _seg(0.2), "depth": _seg(0.3)})
    rows = {r.name: r for r in collect_rows(tmp_path)}
    assert (rows["rgb_only"].branch, rows["rgb_only"].scores["miou"]) == ("rgb", 0.41)
    assert rows["picked"].branch == "depth" and rows["first"].branch == "depth"


def test_translation_columns_and_a_mixed_paper_column_names_its_metric(tmp_path):
    scores = {"l1": 0.1234, "rmse": 0.2, "fid": 61.5, "kid": 1.7, "kid_std": 0.1, "extra_score": 3.0}
    _run(tmp_path, "exchange_weighted", task="translation", test={"rgb": scores, "ensemble": scores})
    _run(tmp_path, "sum", test={"ensemble": _seg(0.5)})
    head, rows = _rows_by_name(markdown(collect_rows(tmp_path)))
    assert head[3:12] == [
        "pixel acc %",
        "mean acc %",
        "mIoU %",
        "L1",
        "RMSE",
        "FID",
        "KID x100",
        "KID std x100",
        "extra_score",
    ]
    t = rows["exchange_weighted"]
    assert (t["L1"], t["FID"], t["KID x100"], t["mIoU %"]) == ("0.1234", "61.50", "1.70", "")
    assert t["paper"] == "FID 60.94" and rows["sum"]["paper"] == "mIoU % 48.1"


def test_presence_columns_are_percent_in_their_order(tmp_path):
    scores = {"map": 0.8262, "f1": 0.8566, "exact_match": 0.25, "per_class_ap": [0.9, 0.8]}
    _run(tmp_path, "cen", task="presence", modalities=("rgb", "points"), test={"ensemble": scores})
    head, rows = _rows_by_name(markdown(collect_rows(tmp_path)))
    assert head[3:6] == ["mAP %", "F1 %", "exact match %"]
    assert (rows["cen"]["mAP %"], rows["cen"]["F1 %"], rows["cen"]["exact match %"]) == ("82.62", "85.66", "25.00")


def test_unfinished_interrupted_failed_and_pending_runs_are_listed_with_their_status(tmp_path):
    _run(tmp_path, "done", test={"ensemble": _seg(0.5)})
    _run(tmp_path, "going", times=(0.0, 5.0, 9.0))
    _run(
        tmp_path,
        "stopped",
        records=[
            {"kind": "info", "step": 0, "time": 0.0, "params": 10},
            {"kind": "train", "step": 4, "time": 8.0},
            {"kind": "info", "step": 4, "time": 8.5, "event": "interrupted"},
        ],
    )
    _run(tmp_path, "broke", last=False, times=(0.0, 1.0))
    (tmp_path / "sweep.json").write_text(
        json.dumps(
            {
                "version": 1,
                "runs": [
                    {"name": "done", "status": "done", "seconds": 3725.0},
                    {"name": "broke", "status": "failed", "seconds": 1.0, "error": "ValueError: bad"},
                    {"name": "never", "status": "failed", "error": "ConfigError: x.yaml: unknown key"},
                    {"name": "later", "status": "pending"},
                ],
            }
        )
    )
    (tmp_path / "report").mkdir()  # not a run folder: not a row
    rows = {r.name: r for r in collect_rows(tmp_path)}
    assert list(rows) == ["done", "broke", "never", "later", "going", "stopped"]  # sweep order, then by name
    assert rows["going"].status == "unfinished (step 2)" and rows["going"].scores == {}
    assert rows["stopped"].status == "interrupted (step 4)"
    assert rows["broke"].status == "failed (step 1): ValueError: bad"
    assert rows["never"].status == "failed: ConfigError: x.yaml: unknown key"
    assert rows["later"].status == "pending"
    assert rows["done"].seconds == 3725.0  # sweep.json's wall time wins over the time stamps
    _, printed = _rows_by_name(markdown(list(rows.values())))
    assert printed["done"]["train time"] == "1h02m" and printed["later"]["train time"] == ""


def test_train_time_from_time_stamps_skips_the_pause_after_an_interrupt():
    records = [
        {"kind": "info", "time": 0.0},
        {"kind": "train", "time": 10.0},
        {"kind": "info", "time": 12.0, "event": "interrupted"},
        {"kind": "train", "time": 1000.0},
        {"kind": "test", "time": 1005.0},
        {"kind": "train"},
    ]
    assert train_seconds(records) == 17.0
    assert train_seconds([{"time": 3.0}]) is None


def test_sort_best_first_missing_last_and_bad_keys(tmp_path):
    _run(tmp_path, "a", test={"ensemble": _seg(0.30)}, params=30)
    _run(tmp_path, "b", test={"ensemble": _seg(0.50)}, params=10)
    _run(tmp_path, "c", times=(0.0, 1.0), params=20)  # unfinished: no mIoU
    _run(tmp_path, "fid_run", task="translation", test={"ensemble": {"fid": 70.0}})
    _run(tmp_path, "fid_better", task="translation", test={"ensemble": {"fid": 50.0}})
    rows = collect_rows(tmp_path)
    by_miou = [r.name for r in sort_rows(rows, "miou")]
    assert by_miou[:2] == ["b", "a"] and set(by_miou[2:]) == {"c", "fid_run", "fid_better"}
    assert [r.name for r in sort_rows(rows, "fid")][:2] == ["fid_better", "fid_run"]  # lower is better
    assert [r.name for r in sort_rows(rows, "params")][:3] == ["b", "c", "a"]
    with pytest.raises(TableError, match=r"--sort accuracy: not a column; expected one of \[.*'miou'"):
        sort_rows(rows, "accuracy")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "nowhere: no such folder"),
        ("empty", "empty: no runs in this folder"),
        ("run itself", "is a run folder itself; give the folder that holds the runs"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes").mkdir()
    run = _run(tmp_path / "p", "r", test={"ensemble": _seg(0.5)})
    folder = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty", "run itself": run}[case]
    with pytest.raises(TableError) as err:
        collect_rows(folder)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_write_table_and_cli_print_and_write_markdown_and_csv(tmp_path, capsys):
    parent = tmp_path / "runs"
    _run(parent, "cen", test={"ensemble": _seg(0.4567)})
    _run(parent, "l1_alone", test={"ensemble": _seg(0.40)})
    text, paths = write_table(parent, tmp_path / "out", sort="miou")
    assert [p.name for p in paths] == ["table.md", "table.csv"] and paths[0].read_text() == text
    table = list(csv.DictReader(io.StringIO(paths[1].read_text())))
    assert [r["run"] for r in table] == ["cen", "l1_alone"]
    assert float(table[0]["miou_pct"]) == pytest.approx(45.67) and table[0]["params"] == "1234567"
    assert table[0]["train_seconds"] == "60.0" and table[0]["paper_value"] == "51.1"
    assert table[1]["paper_value"] == "no improvement"

    parser = argparse.ArgumentParser()
    table_cli.register(parser.add_subparsers())
    args = parser.parse_args(["table", str(parent)])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "| cen | done | ensemble |" in captured.out and "no improvement" in captured.out
    assert (parent / "table.md").read_text() == captured.out and "wrote" in captured.err


def test_paper_rows_cover_every_ablation_recipe_once():
    names = [r.name for r in SEGMENTATION]
    assert len(names) == len(set(names)) and len({r.name for r in TRANSLATION}) == len(TRANSLATION)
    published = {
        "sum": 48.1,
        "gated_sum": 48.4,
        "cbn_unshared": 48.3,
        "cbn_shared": 48.9,
        "concat_head": 50.8,
        "cen": 51.1,
        "fixed30": 47.2,
        "random": 46.8,
        "discard": 47.5,
        "unshared_l1_full": 49.1,
        "unshared_l1_half": 48.5,
    }
    assert {n: paper_row(n).value for n in published} == published
    assert paper_row("l1_alone").display() == "no improvement"
    assert paper_row("rgb_only").value is None and paper_row("depth_only") is not None
    assert paper_row("cen", "translation") is None and paper_row("exchange_weighted", "translation").value == 60.94
    assert all(r.source for r in SEGMENTATION + TRANSLATION)


def test_csv_of_rows_without_scores_still_has_the_fixed_columns(tmp_path):
    _run(tmp_path, "going", times=(0.0, 2.0))
    header = csv_text(collect_rows(tmp_path)).splitlines()[0]
    assert header == (
        "run,group,seed,status,task,branch,params,train_seconds,paper_metric,paper_value,paper_source,paper_row"
    )


def test_seeds_make_one_row_of_mean_and_std_and_the_csv_keeps_every_seed(tmp_path):
    for seed, miou in enumerate((0.50, 0.52, 0.54)):
        _run(tmp_path, f"cen@{seed}", test={"ensemble": _seg(miou)})
    _run(tmp_path, "sum@0", test={"ensemble": _seg(0.40)})
    _run(tmp_path, "sum@1", test=None)  # unfinished: counted as such, left out of the mean
    _run(tmp_path, "plain", test={"ensemble": _seg(0.30)})
    for seed, miou in enumerate((0.600, 0.6008)):
        _run(tmp_path, f"close@{seed}", test={"ensemble": _seg(miou)})
    text, _ = write_table(tmp_path, sort="miou")
    head, rows = _rows_by_name(text)
    assert "n" in head and list(rows) == ["close", "cen", "sum", "plain"]  # best mean first
    assert rows["close"]["mIoU %"] == "60.04 ± 0.06"  # a small spread to the mean's decimals
    assert rows["cen"]["mIoU %"] == "52.00 ± 2.00" and rows["cen"]["n"] == "3" and rows["cen"]["status"] == "done"
    assert rows["sum"]["mIoU %"] == "40.00 ± 0.00" and rows["sum"]["n"] == "1" and rows["sum"]["status"] == "1/2 done"
    assert rows["plain"]["mIoU %"] == "30.00" and rows["plain"]["n"] == "1"
    assert "mean ± sample standard deviation" in text
    lines = (tmp_path / "table.csv").read_text().splitlines()
    per_seed = [line.split(",")[:3] for line in lines[1:]]
    assert ["cen@1", "cen", "1"] in per_seed and ["plain", "plain", ""] in per_seed and len(per_seed) == 8
