"""clf-leaderboard: the targets schema, aggregation of metrics.json files, resume, launchers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cl_framework.leaderboard import aggregate, cli, launch
from cl_framework.leaderboard.targets import TargetsError, load_targets, parse_targets

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ROOT / "experiments" / "leaderboard" / "targets.yaml"
EXPERIMENTS = ROOT / "conf" / "experiment"

ROW = {
    "id": "digits-er",
    "paper": "fake",
    "table": "T1",
    "benchmark": "seq-digits",
    "strategy": "er",
    "buffer": 200,
    "setting": "class-il",
    "metric": "final_avg_acc",
    "published": 80.0,
    "tolerance": 5,
    "experiment": "seq-digits/er",
    "data_offline": True,
}


def doc(*rows: dict) -> dict:
    return {"papers": {"fake": "A fake paper"}, "rows": [copy.deepcopy(r) for r in rows]}


def write_metrics(run_dir: Path, class_il: float, task_il: float = 99.0, wall: float = 10.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "final_avg_acc": {"class_il": class_il, "task_il": task_il},
        "forgetting": {"class_il": 1.0, "task_il": 0.5},
        "wall_time_s": wall,
        "train_time_s": wall - 1,
    }
    (run_dir / "metrics.json").write_text(json.dumps(payload))


# ----------------------------------------------------------------------------------- schema
def test_committed_targets_file_is_valid_and_has_the_der_rows():
    targets = load_targets(TARGETS, EXPERIMENTS)
    by_id = {t.id: t for t in targets}
    smnist = [t for t in targets if t.matches("seq-mnist")]
    assert len(smnist) == 8
    published = {t.experiment: t.published for t in smnist}
    assert published == {
        "seq-mnist/sgd": 19.60, "seq-mnist/joint": 95.57, "seq-mnist/er-200": 80.43,
        "seq-mnist/er-500": 86.12, "seq-mnist/der-200": 84.55, "seq-mnist/der-500": 90.54,
        "seq-mnist/derpp-200": 85.61, "seq-mnist/derpp-500": 91.00,
    }  # fmt: skip
    # the lower edges are the core issue's acceptance floors
    floors = {"derpp-500": 89, "derpp-200": 83, "der-500": 88, "er-500": 84, "er-200": 78,
              "joint": 94}  # fmt: skip
    for name, floor in floors.items():
        assert by_id[f"der-smnist-{name}"].band[0] == pytest.approx(floor)
    assert by_id["der-smnist-sgd"].band == pytest.approx((18.0, 21.0))
    twf = by_id["twf-scifar10-500"]
    assert (twf.published, twf.experiment, twf.data_offline) == (
        83.65,
        "seq-cifar10/twf-500",
        False,
    )


@pytest.mark.parametrize(
    ("edit", "field", "text"),
    [
        (lambda r: r.pop("published"), "published", "is missing"),
        (lambda r: r.update(published="ninety"), "published", "must be a number"),
        (lambda r: r.update(setting="class-IL"), "setting", "must be one of"),
        (lambda r: r.update(metric="accuracy"), "metric", "must be one of"),
        (lambda r: r.update(tolerance=-1), "tolerance", "must be positive"),
        (lambda r: r.update(tolerance={"above": 1}), "tolerance", "below: x"),
        (lambda r: r.update(buffer="500"), "buffer", "size"),
        (lambda r: r.update(data_offline="yes"), "data_offline", "true or false"),
        (lambda r: r.update(paper="nope"), "paper", "not a key of 'papers'"),
        (lambda r: r.update(experiment="seq-mnist/nope"), "experiment", "has no config"),
        (lambda r: r.update(tolerence=2), "tolerence", "is unknown"),
        (lambda r: r.update(id="digits-er"), "id", "duplicates row 0"),
    ],
)
def test_malformed_row_is_named_in_the_error(edit, field, text):
    bad = dict(ROW, id="the-bad-one")
    edit(bad)
    with pytest.raises(TargetsError) as info:
        parse_targets(doc(ROW, bad), EXPERIMENTS)
    message = str(info.value)
    assert f"row 1 (id '{bad['id']}')" in message
    assert f"field '{field}'" in message
    assert text in message


def test_cli_reports_a_malformed_targets_file(tmp_path, capsys):
    path = tmp_path / "targets.yaml"
    bad = dict(ROW)
    bad.pop("experiment")
    path.write_text(yaml.safe_dump(doc(bad)))
    assert cli.main(["list", "--targets", str(path)]) == 2
    err = capsys.readouterr().err
    assert "row 0 (id 'digits-er'): field 'experiment' is missing" in err


def test_filter_selects_by_benchmark_strategy_or_glob():
    targets = load_targets(TARGETS, EXPERIMENTS)
    assert {t.strategy for t in targets if t.matches("derpp")} == {"derpp"}
    assert len([t for t in targets if t.matches("seq-mnist/er-*")]) == 2
    assert [t.id for t in targets if t.matches("seq-cifar10")] == ["twf-scifar10-500"]


# ------------------------------------------------------------------------------ aggregation
def test_aggregation_of_handmade_metrics(tmp_path):
    targets = parse_targets(
        doc(
            ROW,
            dict(ROW, id="digits-er-til", setting="task-il", published=97.0, published_std=1.5),
            dict(
                ROW, id="other", experiment="seq-digits/der", tolerance={"below": 1, "above": None}
            ),
        ),
        EXPERIMENTS,
    )
    runs = tmp_path / "runs"
    for seed, value in enumerate([76.0, 78.0, 83.0]):  # mean 79, std sqrt(13)
        write_metrics(
            launch.run_dir_for(runs, "seq-digits/er", seed), value, 90.0 + seed, 10 + seed
        )
    write_metrics(launch.run_dir_for(runs, "seq-digits/er", 7), 10.0)  # a seed not asked for
    failed = launch.run_dir_for(runs, "seq-digits/der", 0)
    launch.write_status(failed, launch.RunOutcome("seq-digits/der", 0, launch.NON_FINITE, 3, "nan"))

    results = aggregate.collect(targets, runs, seeds=[0, 1, 2])
    er, til, der = results
    assert er.n == 3 and er.mean == pytest.approx(79.0) and er.std == pytest.approx(13**0.5)
    assert er.within is True and er.wall_time_s == pytest.approx(11.0)
    assert til.mean == pytest.approx(91.0) and til.within is False  # 97 +- 5 = [92, 102]
    assert der.n == 0 and der.within is None and "non_finite: nan" in der.notes[0]

    assert aggregate.collect(targets, runs)[0].n == 4  # default: every seed folder found

    text = aggregate.markdown(results, {"command": "clf-leaderboard run", "elapsed_s": 60})
    assert "| digits-er |" in text and "79.00 +- 3.61" in text and "| 3 |" in text
    assert "97.00 +- 1.50" in text  # published std shown
    assert "not run" in text and "non_finite" in text
    aggregate.write_csv(results, tmp_path / "results.csv")
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 3 + 3
    png = aggregate.plot(results, tmp_path / "plot.png")
    assert png.stat().st_size > 1000


def test_band_semantics():
    (sym,) = parse_targets(doc(ROW), EXPERIMENTS)
    assert sym.within(75.0) and sym.within(85.0) and not sym.within(85.1)
    (floor,) = parse_targets(doc(dict(ROW, tolerance={"below": 2, "above": None})), EXPERIMENTS)
    assert floor.within(99.0) and not floor.within(77.9)


# ------------------------------------------------------------------- resume and launchers
FAKE_TRAIN = """
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
log = Path(sys.argv[0]).with_name("calls.txt")
with log.open("a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if args.get("experiment", "").startswith("seq-cifar10"):
    sys.stderr.write("clf-train: data file '/nowhere/cifar-10-batches-py': CIFAR-10 not found")
    sys.exit(2)
out = Path(args["hydra.run.dir"])
out.mkdir(parents=True, exist_ok=True)
value = 70.0 + int(args.get("seed", 0))
(out / "metrics.json").write_text(json.dumps({
    "final_avg_acc": {"class_il": value, "task_il": 99.0}, "wall_time_s": 1.0,
    "train_time_s": 0.5}))
"""


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """clf-train replaced by a script that writes metrics.json (or fails for CIFAR)."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(launch, "clf_train_command", lambda: [sys.executable, str(script)])
    return tmp_path / "calls.txt"


def calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_resume_of_a_partly_finished_leaderboard(tmp_path, fake_train):
    targets = tmp_path / "targets.yaml"
    twf = dict(ROW, id="twf", experiment="seq-cifar10/twf-500", data_offline=False)
    targets.write_text(
        yaml.safe_dump(doc(ROW, dict(ROW, id="der", experiment="seq-digits/der"), twf))
    )
    runs, out = tmp_path / "runs", tmp_path / "out"
    # a partly finished leaderboard: two runs done, one interrupted (checkpoint, no metrics)
    write_metrics(launch.run_dir_for(runs, "seq-digits/er", 0), 75.0)
    write_metrics(launch.run_dir_for(runs, "seq-digits/er", 1), 77.0)
    ckpt = launch.run_dir_for(runs, "seq-digits/der", 1) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    argv = ["run", "--targets", str(targets), "--seeds", "2", "--runs-dir", str(runs),
            "--out-dir", str(out), "--", "trainer.epochs=1"]  # fmt: skip

    assert cli.main(argv) == 0
    made = calls(fake_train)
    # er: nothing re-run; der seed 0 fresh, der seed 1 resumed; twf tried once (data missing)
    assert not any("seq-digits/er" in c for c in made)
    assert (
        sum("experiment=seq-digits/der seed=0" in c and "trainer.epochs=1" in c for c in made) == 1
    )
    assert sum(f"resume={ckpt.parent.parent}" in c for c in made) == 1
    assert sum("seq-cifar10/twf-500" in c for c in made) == 1  # seed 1 skipped, not tried
    skipped = launch.read_status(launch.run_dir_for(runs, "seq-cifar10/twf-500", 1))
    assert skipped["status"] == launch.SKIPPED and "data missing" in skipped["message"]

    text = (out / "LEADERBOARD.md").read_text()
    assert "| digits-er |" in text and "76.00 +- 1.41" in text
    assert "data_missing: data file '/nowhere/cifar-10-batches-py'" in text
    assert (out / "leaderboard.png").is_file() and (out / "results.csv").is_file()

    # a second run executes only what is still missing (the data-missing row), then a
    # report-only call re-aggregates without running anything
    assert cli.main(argv) == 0
    again = calls(fake_train)[len(made) :]
    assert again and all("seq-cifar10/twf-500" in c for c in again)
    n = len(calls(fake_train))
    (out / "LEADERBOARD.md").unlink()
    args = ["report", "--targets", str(targets), "--runs-dir", str(runs), "--out-dir", str(out)]
    assert cli.main(args) == 0
    assert len(calls(fake_train)) == n and (out / "LEADERBOARD.md").is_file()


def test_failed_run_is_reported_and_exit_code_is_1(tmp_path, monkeypatch):
    def executor(spec, overrides, env):
        return 3, "clf-train: non-finite loss at step 5 (experience 0): ce=nan"

    (target,) = parse_targets(doc(ROW), EXPERIMENTS)
    specs = launch.plan_runs([target.experiment], [0], tmp_path)
    (outcome,) = launch.run_local(specs, executor=executor, echo=lambda s: None)
    assert outcome.status == launch.NON_FINITE and "non-finite loss" in outcome.message
    assert launch.read_status(specs[0].run_dir)["status"] == launch.NON_FINITE


def test_plan_puts_first_seeds_first_and_shares_runs_between_rows(tmp_path):
    specs = launch.plan_runs(["a/x", "b/y", "a/x"], [0, 1], tmp_path)
    assert [(s.experiment, s.seed) for s in specs] == [
        ("a/x", 0),
        ("b/y", 0),
        ("a/x", 1),
        ("b/y", 1),
    ]
    assert specs[0].run_dir == tmp_path / "a/x" / "seed0"


def test_slurm_multirun_writes_the_local_layout(tmp_path):
    """The --launcher slurm path (one Hydra multirun per config) with Hydra's basic launcher:
    a 2-job multirun on seq-digits writes two metrics.json where the local launcher would."""
    runs = tmp_path / "runs"
    specs = launch.plan_runs(["seq-digits/er"], [0, 1], runs)
    (cmd,) = launch.slurm_commands(
        specs,
        runs,
        hydra_launcher="basic",
        overrides=["trainer.epochs=1", "trainer.limit_train_batches=5", "trainer.checkpoint=false"],
        command=[sys.executable, "-m", "cl_framework.train"],
    )
    assert "-m" in cmd and "seed=0,1" in cmd and "hydra/launcher=basic" in cmd
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for spec in specs:
        metrics = json.loads(spec.metrics_path.read_text())
        assert metrics["seed"] == spec.seed and metrics["strategy"] == ["er"]
    # only unfinished seeds are submitted again
    write_metrics(launch.run_dir_for(runs, "seq-digits/der", 0), 50.0)
    more = launch.plan_runs(["seq-digits/er", "seq-digits/der"], [0, 1], runs)
    (again,) = launch.slurm_commands(more, runs)
    assert "experiment=seq-digits/der" in again and "seed=1" in again
    assert "hydra/launcher=slurm" in again


def _measure_module():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "experiments/leaderboard/measure_baselines.py"
    spec = importlib.util.spec_from_file_location("measure_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_baselines_aggregates_seeds_by_hand(tmp_path):
    """Mean and sample std over the seeds that finished; configs without runs are left out;
    the d2l configs (which need a generator) are not baselines; GEM-5120 only on request."""
    mb = _measure_module()
    for seed, (c, t) in enumerate([(40.0, 90.0), (44.0, 96.0)]):
        run = tmp_path / "seq-mnist/agem-200" / f"seed{seed}"
        run.mkdir(parents=True)
        metrics = {"final_avg_acc": {"class_il": c, "task_il": t}, "wall_time_s": 10.0 + seed}
        (run / "metrics.json").write_text(json.dumps(metrics))
    rows = mb.summarise(tmp_path, ["seq-mnist/agem-200", "seq-mnist/gem-200"])
    assert [r["experiment"] for r in rows] == ["seq-mnist/agem-200"]
    row = rows[0]
    assert row["n"] == 2 and row["class_il"] == (42.0, pytest.approx(2.8284271, rel=1e-6))
    assert row["task_il"][0] == 93.0 and row["wall_s"] == 10.5
    assert "| `seq-mnist/agem-200` | 2 | 42.00 +- 2.83 | 93.00 +- 4.24 | 10 |" in mb.markdown(
        {"seq-mnist": rows}
    )
    exps = mb.experiments_of("seq-mnist", with_slow=False)
    assert "seq-mnist/agem-200" in exps and "seq-mnist/gem-5120" not in exps
    assert not any("d2l" in e for e in exps)
    assert "seq-mnist/gem-5120" in mb.experiments_of("seq-mnist", with_slow=True)
