"""``cen sweep``: which configs run, in what order, skip / resume / start, failures, Ctrl-C, sweep.json.

The bookkeeping is tested with a fake ``train`` that writes the files a run leaves behind;
one test at the end trains two tiny runs for real (and interrupts one with SIGINT).
"""

import argparse
import io
import json
import os
import signal
from pathlib import Path

import pytest

from cen.cli import sweep as sweep_cli
from cen.cli import table as table_cli
from cen.train.interrupt import TrainingInterrupted
from cen.train.sweep import (
    SweepError,
    SweepLog,
    collect_configs,
    decide,
    default_parent,
    format_seconds,
    plan_runs,
    run_sweep,
    seed_of,
    split_arguments,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _configs(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("modalities: [rgb, depth]\n", encoding="utf-8")
    return folder


class FakeTrainer:
    """Records calls; each run takes ``seconds`` on a fake clock and leaves last.pt + results.json.

    ``fail`` / ``interrupt``: run names that raise instead (an interrupted run leaves last.pt only).
    """

    def __init__(self, seconds=10.0, fail=(), interrupt=()):
        self.calls = []
        self.now = 0.0
        self.seconds = seconds
        self.fail, self.interrupt = set(fail), set(interrupt)

    def clock(self):
        return self.now

    def __call__(self, config, overrides, run_dir, resume):
        self.calls.append((Path(config).stem, list(overrides), Path(run_dir), resume))
        self.now += self.seconds
        run_dir.mkdir(parents=True, exist_ok=True)
        name = Path(config).stem
        if name in self.fail:
            raise ValueError(f"{name}: broken config\nsecond line that must not be printed")
        (run_dir / "last.pt").write_bytes(b"x")
        if name in self.interrupt:
            raise TrainingInterrupted(f"interrupted after step 3; {run_dir / 'last.pt'} is saved")
        (run_dir / "results.json").write_text("{}", encoding="utf-8")


def _sweep(tmp_path, fake, *names, overrides=(), folder="cfg"):
    configs = collect_configs([_configs(tmp_path / folder, *names)])
    stream = io.StringIO()
    result = run_sweep(
        configs, tmp_path / "runs", overrides, train=fake, check=None, stream=stream, progress=False, clock=fake.clock
    )
    return result, stream.getvalue(), json.loads((tmp_path / "runs" / "sweep.json").read_text())


# -- which configs -------------------------------------------------------------------------
def test_a_folder_gives_its_yaml_files_sorted_and_files_keep_their_order(tmp_path):
    folder = _configs(tmp_path / "abl", "sum.yaml", "cen.yaml", "discard.yml", "_base.yaml")
    (folder / "notes.txt").write_text("not a config")
    (folder / "sub").mkdir()
    assert [p.name for p in collect_configs([folder])] == ["cen.yaml", "discard.yml", "sum.yaml"]
    files = [folder / "sum.yaml", folder / "cen.yaml"]
    assert [p.name for p in collect_configs(files)] == ["sum.yaml", "cen.yaml"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "missing.yaml: no such config file or folder"),
        ("empty", "empty: no *.yaml configs in this folder"),
        ("text", "notes.txt: expected a .yaml config file"),
        ("same stem", "have the same name 'cen'"),
        ("nothing", "no configs given"),
    ],
)
def test_bad_config_arguments_are_one_line_errors(tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    a = _configs(tmp_path / "a", "cen.yaml")
    b = _configs(tmp_path / "b", "cen.yaml")
    items = {
        "missing": [tmp_path / "missing.yaml"],
        "empty": [tmp_path / "empty"],
        "text": [tmp_path / "notes.txt"],
        "same stem": [a, b],
        "nothing": [],
    }[case]
    with pytest.raises(SweepError) as err:
        collect_configs(items)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_arguments_split_into_paths_and_overrides(tmp_path):
    odd = tmp_path / "a=b.yaml"  # an existing path with '=' stays a path
    odd.write_text("{}")
    paths, overrides = split_arguments(["configs", "train.max_steps=2", str(odd), "model.name=tiny"])
    assert paths == ["configs", str(odd)] and overrides == ["train.max_steps=2", "model.name=tiny"]


def test_default_parent_is_named_after_the_config_folder(tmp_path):
    folder = _configs(tmp_path / "ablations" / "scenes", "cen.yaml")
    assert default_parent(collect_configs([folder])) == Path("runs") / "sweep-scenes"


def test_the_sweep_owns_run_dir_and_run_name(tmp_path):
    with pytest.raises(SweepError, match=r"run.name=x: the sweep sets run.name itself"):
        _sweep(tmp_path, FakeTrainer(), "cen.yaml", overrides=["run.name=x"])


# -- skip / resume / start -----------------------------------------------------------------
def test_decision_follows_the_files_of_the_run_folder(tmp_path):
    assert decide(tmp_path / "none") == "start"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text("")
    assert decide(tmp_path / "a") == "start"  # died before its first checkpoint
    (tmp_path / "a" / "last.pt").write_bytes(b"x")
    assert decide(tmp_path / "a") == "resume"
    (tmp_path / "a" / "results.json").write_text("{}")
    assert decide(tmp_path / "a") == "skip"


def test_finished_runs_are_skipped_interrupted_resume_others_start_in_order(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "results.json").write_text("{}")
    (runs / "a" / "last.pt").write_bytes(b"x")
    (runs / "c").mkdir()
    (runs / "c" / "last.pt").write_bytes(b"x")
    fake = FakeTrainer()
    result, out, record = _sweep(
        tmp_path, fake, "d.yaml", "c.yaml", "b.yaml", "a.yaml", overrides=["train.max_steps=2"]
    )
    assert [(name, resume) for name, _, _, resume in fake.calls] == [("b", False), ("c", True), ("d", False)]
    _name, overrides, run_dir, _ = fake.calls[0]
    assert overrides == ["train.max_steps=2", f"run.dir={runs}", "run.name=b"] and run_dir == runs / "b"
    assert result.exit_code == 0 and result.skipped == ["a"] and result.done == ["b", "c", "d"]
    assert "1 to start" not in out and "2 to start, 1 to resume, 1 finished already" in out
    assert "run 1 of 4: a: finished already" in out and "run 3 of 4: c (resuming from last.pt" in out
    assert [(r["name"], r["status"], r["attempts"]) for r in record["runs"]] == [
        ("a", "done", 0),
        ("b", "done", 1),
        ("c", "done", 1),
        ("d", "done", 1),
    ]
    assert record["runs"][1]["seconds"] == 10.0 and record["runs"][0]["seconds"] == 0.0
    assert record["runs"][1]["overrides"] == ["train.max_steps=2"]
    # a second sweep over the same folder trains nothing
    again = FakeTrainer()
    result, out, _ = _sweep(tmp_path, again, "a.yaml")
    assert again.calls == [] and result.skipped == ["a", "b", "c", "d"] and result.exit_code == 0


def test_progress_says_run_i_of_n_elapsed_and_eta_from_trained_runs(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "results.json").write_text("{}")  # skipped: must not count in the ETA
    fake = FakeTrainer(seconds=30.0)
    _, out, _ = _sweep(tmp_path, fake, "a.yaml", "b.yaml", "c.yaml", "d.yaml")
    assert "run 2 of 4: b (starting; elapsed 0s)" in out  # no ETA before a run has finished
    assert "run 3 of 4: c (starting; elapsed 30s, ETA 1m00s)" in out  # 2 runs left x 30 s
    assert "run 4 of 4: d (starting; elapsed 1m00s, ETA 30s)" in out
    assert "sweep finished in 1m30s: 3 trained, 1 skipped, 0 failed" in out


def test_a_failing_run_is_one_line_and_the_sweep_goes_on(tmp_path):
    fake = FakeTrainer(fail={"b"})
    result, out, record = _sweep(tmp_path, fake, "a.yaml", "b.yaml", "c.yaml")
    assert [c[0] for c in fake.calls] == ["a", "b", "c"]
    assert result.exit_code == 1 and result.failed == [("b", "ValueError: b: broken config")]
    assert "run 2 of 3: b FAILED after 10s: ValueError: b: broken config" in out
    assert "second line" not in out and "Traceback" not in out
    assert "failed runs: b (ValueError: b: broken config)" in out
    status = {r["name"]: (r["status"], r["error"]) for r in record["runs"]}
    assert status == {"a": ("done", ""), "b": ("failed", "ValueError: b: broken config"), "c": ("done", "")}
    # the next sweep tries the failed run again (it has no last.pt: it starts)
    retry = FakeTrainer()
    result, _, record = _sweep(tmp_path, retry, "a.yaml", "b.yaml", "c.yaml")
    assert [(c[0], c[3]) for c in retry.calls] == [("b", False)] and result.exit_code == 0
    entry = next(r for r in record["runs"] if r["name"] == "b")
    assert entry["status"] == "done" and entry["error"] == "" and entry["attempts"] == 2 and entry["seconds"] == 20.0


def test_debug_adds_the_traceback_of_a_failing_run(tmp_path):
    fake, stream = FakeTrainer(fail={"a"}), io.StringIO()
    configs = collect_configs([_configs(tmp_path / "cfg", "a.yaml")])
    result = run_sweep(configs, tmp_path / "runs", train=fake, check=None, stream=stream, progress=False, debug=True)
    assert result.exit_code == 1
    assert "Traceback" in stream.getvalue() and "second line that must not be printed" in stream.getvalue()


def test_ctrl_c_stops_the_sweep_and_the_next_sweep_resumes(tmp_path):
    fake = FakeTrainer(interrupt={"b"})
    result, out, record = _sweep(tmp_path, fake, "a.yaml", "b.yaml", "c.yaml")
    assert [c[0] for c in fake.calls] == ["a", "b"]  # c never started
    assert result.exit_code == 130 and result.interrupted == "b"
    assert "run 2 of 3: b interrupted (interrupted after step 3" in out and "rerun the same command" in out
    status = {r["name"]: r["status"] for r in record["runs"]}
    assert status == {"a": "done", "b": "interrupted", "c": "pending"}
    resumed = FakeTrainer(seconds=5.0)
    result, _, record = _sweep(tmp_path, resumed, "a.yaml", "b.yaml", "c.yaml")
    assert [(c[0], c[3]) for c in resumed.calls] == [("b", True), ("c", False)] and result.exit_code == 0
    b = next(r for r in record["runs"] if r["name"] == "b")
    assert (b["status"], b["seconds"], b["attempts"]) == ("done", 15.0, 2)  # 10 s before Ctrl-C + 5 s after


def test_a_plain_keyboard_interrupt_outside_training_also_stops(tmp_path):
    def train(config, overrides, run_dir, resume):
        raise KeyboardInterrupt  # e.g. while the data are prepared

    configs = collect_configs([_configs(tmp_path / "cfg", "a.yaml", "b.yaml")])
    result = run_sweep(configs, tmp_path / "runs", train=train, check=None, stream=io.StringIO(), progress=False)
    assert result.exit_code == 130 and result.interrupted == "a"


def test_runs_of_an_earlier_sweep_stay_listed_and_stale_running_becomes_interrupted(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "sweep.json").write_text(
        json.dumps(
            {
                "version": 1,
                "runs": [{"name": "old", "config": "x/old.yaml", "status": "running", "seconds": 3.0, "attempts": 1}],
            }
        )
    )
    _, _, record = _sweep(tmp_path, FakeTrainer(), "a.yaml")
    assert [(r["name"], r["status"]) for r in record["runs"]] == [("old", "interrupted"), ("a", "done")]


def test_two_sweeps_into_one_parent_keep_each_others_entries(tmp_path):
    # two sweeps with disjoint configs, as two processes would run them, writing in turn
    parent = tmp_path / "runs"
    parent.mkdir()
    first = SweepLog.open(parent, plan_runs([Path("cfg/a.yaml"), Path("cfg/b.yaml")]), [])
    second = SweepLog.open(parent, plan_runs([Path("cfg/c.yaml")]), [])
    first.write()
    second.runs["c"].status, second.runs["c"].pid = "running", os.getpid()  # alive: this test's process
    second.write()
    first.runs["a"].status, first.runs["a"].seconds = "done", 12.0
    first.write()
    record = {r["name"]: r for r in json.loads((parent / "sweep.json").read_text())["runs"]}
    assert list(record) == ["a", "b", "c"]
    assert (record["a"]["status"], record["a"]["seconds"]) == ("done", 12.0)
    assert record["b"]["status"] == "pending" and record["c"]["status"] == "running"
    # a running entry whose process is gone (killed) is stale: another sweep's next write marks it interrupted
    second.runs["c"].pid = 2**22 + 12345  # above Linux's largest pid: no such process
    second.write()
    first.write()
    record = {r["name"]: r for r in json.loads((parent / "sweep.json").read_text())["runs"]}
    assert record["c"]["status"] == "interrupted" and record["a"]["status"] == "done"


def test_configs_are_loaded_before_anything_trains(tmp_path):
    folder = _configs(tmp_path / "cfg", "a.yaml", "c.yaml")
    (folder / "b.yaml").write_text("modalities: [rgb, depth]\nmodel: {nme: tiny}\n")  # a typo in one recipe
    configs = collect_configs([folder])
    fake, stream = FakeTrainer(), io.StringIO()
    result = run_sweep(
        configs, tmp_path / "runs", ["train.max_steps=2"], train=fake, stream=stream, progress=False, clock=fake.clock
    )  # the real check: cen.train.config.load_config
    assert [c[0] for c in fake.calls] == ["a", "c"] and result.exit_code == 1
    assert result.failed[0][0] == "b" and "unknown config key 'model.nme'" in result.failed[0][1]
    assert "run 2 of 3: b FAILED (its config does not load): ConfigError:" in stream.getvalue()
    # a mistyped override breaks every config: one error, nothing trained, no folder made
    fake = FakeTrainer()
    with pytest.raises(
        SweepError,
        match=r"no config of the sweep loads \(nothing was trained\); a: ConfigError: "
        r".*unknown config key 'train.max_stpes'",
    ):
        run_sweep(configs, tmp_path / "other", ["train.max_stpes=2"], train=fake, stream=io.StringIO())
    assert fake.calls == [] and not (tmp_path / "other").exists()


def test_format_seconds():
    assert [format_seconds(s) for s in (None, 4.4, 59.6, 307, 7380)] == ["", "4s", "1m00s", "5m07s", "2h03m"]


# -- command line ----------------------------------------------------------------------------
def _parser():
    parser = argparse.ArgumentParser(prog="cen")
    parser.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers(dest="command")
    sweep_cli.register(sub)
    table_cli.register(sub)
    return parser


def test_cli_takes_overrides_before_and_after_options(tmp_path, monkeypatch):
    folder = _configs(tmp_path / "cfg", "a.yaml")
    args = _parser().parse_args(["sweep", str(folder), "x.y=1", "--out", str(tmp_path / "runs"), "z=2"])
    seen = {}

    def fake_sweep(configs, parent, overrides, **kw):
        seen.update(configs=configs, parent=parent, overrides=overrides)
        from cen.train.sweep import SweepResult

        return SweepResult(failed=[("a", "boom")])

    monkeypatch.setattr("cen.train.sweep.run_sweep", fake_sweep)
    assert args.func(args) == 1
    assert [p.name for p in seen["configs"]] == ["a.yaml"] and seen["overrides"] == ["x.y=1", "z=2"]
    assert seen["parent"] == str(tmp_path / "runs")


# -- end to end: two tiny runs, one interrupted with SIGINT and resumed ---------------------------
def _tiny(tmp):
    return [
        f"data.root={tmp}/scenes",
        "data.generate={num: 12, height: 32, width: 40, workers: 1}",
        "model.name=tiny",
        "train.batch_size=4",
        "train.device=cpu",
        "train.progress=false",
        "eval.num_images=0",
        "optim.stages=[{epochs: 1, encoder_lr: 0.05, decoder_lr: 0.05}]",
        "train.max_steps=2",
        "train.log_every=1",
    ]


def test_end_to_end_sweep_interrupt_resume_and_table(tmp_path, monkeypatch, capsys):
    from cen.train.trainer import Trainer

    folder = tmp_path / "abl"
    folder.mkdir()
    (folder / "cen.yaml").write_text(f"base: {CONFIGS / 'scenes.yaml'}\n", encoding="utf-8")
    (folder / "rgb_only.yaml").write_text(f"base: {CONFIGS / 'scenes.yaml'}\nmodalities: [rgb]\n", encoding="utf-8")
    runs = tmp_path / "runs"
    parser = _parser()
    argv = ["sweep", str(folder), *_tiny(tmp_path), "--out", str(runs)]

    original = Trainer.train_step

    def interrupted_step(self, batch):  # Ctrl-C during the first step of the second run
        if self.global_step == 0 and self.run_dir.name == "rgb_only":
            signal.raise_signal(signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    args = parser.parse_args(argv)
    assert args.func(args) == 130
    assert (runs / "cen" / "results.json").is_file() and (runs / "rgb_only" / "last.pt").is_file()
    assert not (runs / "rgb_only" / "results.json").exists()
    monkeypatch.undo()
    capsys.readouterr()

    args = parser.parse_args(["table", str(runs)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in printed.splitlines() if line.startswith("| ")}
    assert "| done | ensemble |" in rows["cen"] and "51.1" in rows["cen"]
    assert "interrupted (step 1)" in rows["rgb_only"]

    args = parser.parse_args(argv)
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "run 1 of 2: cen: finished already" in err and "run 2 of 2: rgb_only (resuming from last.pt" in err
    assert "resumed from" in err
    record = {r["name"]: r for r in json.loads((runs / "sweep.json").read_text())["runs"]}
    assert record["rgb_only"]["status"] == "done" and record["rgb_only"]["attempts"] == 2

    args = parser.parse_args(["table", str(runs), "--sort", "miou"])
    assert args.func(args) == 0
    lines = [line for line in (runs / "table.md").read_text().splitlines() if line.startswith("| ")]
    by_name = {line.split(" | ")[0].strip("| "): line for line in lines[1:]}
    assert set(by_name) == {"cen", "rgb_only"}
    assert "| done | rgb |" in by_name["rgb_only"]  # no ensemble with one modality: the modality's scores
    params = json.loads((runs / "cen" / "metrics.jsonl").read_text().splitlines()[0])["params"]
    assert f"{params / 1e3:.1f} k" in by_name["cen"]


def test_seeds_train_every_config_once_per_seed(tmp_path):
    configs = collect_configs([_configs(tmp_path / "cfg", "cen.yaml", "sum.yaml")])
    seen = []

    def train(config, overrides, run_dir, resume):
        seen.append((Path(config).stem, run_dir.name, [o for o in overrides if o.startswith("train.seed")]))
        (run_dir / "results.json").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text("{}", encoding="utf-8")

    result = run_sweep(configs, tmp_path / "runs", seeds=[0, 1, 2], train=train, check=None, stream=io.StringIO())
    assert result.exit_code == 0 and len(result.done) == 6
    assert seen[:3] == [("cen", f"cen@{s}", [f"train.seed={s}"]) for s in range(3)]
    assert [r["name"] for r in json.loads((tmp_path / "runs" / "sweep.json").read_text())["runs"]] == [
        "cen@0", "cen@1", "cen@2", "sum@0", "sum@1", "sum@2",
    ]  # fmt: skip
    assert seed_of("cen@2") == ("cen", 2) and seed_of("cen") == ("cen", None) and seed_of("a@b") == ("a@b", None)
    with pytest.raises(SweepError, match="the sweep sets train.seed itself"):
        run_sweep(configs, tmp_path / "x", ["train.seed=3"], seeds=[0], train=train, check=None)
    with pytest.raises(SweepError, match="distinct seeds"):
        run_sweep(configs, tmp_path / "x", seeds=[1, 1], train=train, check=None)
