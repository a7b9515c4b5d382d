"""Sweeps: the validation plug-in, clf-sweep's objective, the sweep table and best config."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cl_framework.build import build_runner
from cl_framework.errors import ConfigError
from cl_framework.leaderboard.sweep import (
    VAL_PLUGIN,
    best_config_key,
    collect_trials,
    report_sweep,
    sweep_config,
)
from cl_framework.train import run

ROOT = Path(__file__).resolve().parent.parent
QUICK = ("trainer.epochs=1", "trainer.checkpoint=false")


def test_val_eval_writes_the_validation_matrix(make_config, tmp_path):
    cfg = make_config(
        "experiment=seq-digits/er", "strategy=[er,val_eval]", "scenario.val_fraction=0.2", *QUICK
    )
    metrics = run(cfg, tmp_path)
    val = json.loads((tmp_path / "val_metrics.json").read_text())
    assert val["split"] == "validation" and val["completed_experiences"] == 5
    assert sum(val["n_val"]) == pytest.approx(0.2 * 1797 * 0.75, rel=0.1)  # 20% of training
    for setting in ("class_il", "task_il"):
        rows = val["acc_matrix"][setting]
        assert [len(r) for r in rows] == [1, 2, 3, 4, 5]  # seen experiences only
        assert val["final_avg_acc"][setting] == pytest.approx(sum(rows[-1]) / 5, abs=1e-3)
    # the plug-in only measures: test metrics are those of ER alone on the same split
    assert metrics["strategy"] == ["er", "val_eval"]
    assert val["final_avg_acc"]["class_il"] != metrics["final_avg_acc"]["class_il"]


def test_val_eval_without_validation_data_names_the_key(make_config, tmp_path):
    cfg = make_config("strategy=[er,val_eval]", "buffer.size=50", *QUICK)
    with pytest.raises(ConfigError) as info:
        build_runner(cfg, tmp_path)
    assert info.value.key == "scenario.val_fraction"


def test_sweep_config_appends_val_eval_and_requires_validation(make_config):
    cfg = make_config("experiment=seq-digits/derpp", "scenario.val_fraction=0.1")
    plain, objective = sweep_config({**OmegaConf.to_container(cfg), "objective": "task_il"})
    assert objective == "task_il" and "objective" not in plain
    assert list(plain["strategy"]) == ["derpp", VAL_PLUGIN]
    with pytest.raises(ConfigError) as info:
        sweep_config(make_config("experiment=seq-digits/derpp"))
    assert info.value.key == "scenario.val_fraction"


def make_trial(sweep: Path, num: int, alpha: float, val: float | None, test: float | None) -> None:
    run_dir = sweep / f"trial{num}"
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = ["experiment=seq-mnist/derpp-500", f"strategy.derpp.alpha={alpha}"]
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"job": {"num": num}, "runtime": {"choices": {
        "experiment": "seq-mnist/derpp-500"}}}}  # fmt: skip
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    config = {
        "scenario": {"name": "seq-mnist", "val_fraction": 0.1, "max_train_per_class": 1000},
        "strategy": {"derpp": {"alpha": alpha}, VAL_PLUGIN: {}},
        "buffer": {"size": 500},
    }
    metrics = {"final_avg_acc": {"class_il": test}, "wall_time_s": 5.0, "config": config}
    if test is not None:  # None: crashed before metrics.json
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if val is not None:
        payload = {"final_avg_acc": {"class_il": val, "task_il": 99.0}}
        (run_dir / "val_metrics.json").write_text(json.dumps(payload))


def test_sweep_report_selects_on_validation_and_writes_a_best_config(tmp_path):
    sweep = tmp_path / "sweep"
    multirun = {
        "objective": "class_il",
        "hydra": {
            "sweeper": {"params": {"strategy.derpp.alpha": "interval(0.1, 2.0)"}},
            "overrides": {
                "task": [
                    "experiment=seq-mnist/derpp-500",
                    "trainer.epochs=2",
                    "hparams_search=seq-mnist-derpp",
                ]
            },
            "runtime": {"choices": {"hparams_search": "seq-mnist-derpp"}},
        },
    }
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    make_trial(sweep, 0, 0.2, val=88.0, test=95.0)  # best on test: must not be chosen
    make_trial(sweep, 1, 0.7, val=91.5, test=90.0)  # best on validation
    make_trial(sweep, 2, 1.9, val=None, test=None)  # crashed: no metrics.json
    make_trial(sweep, 3, 1.0, val=None, test=97.0)  # finished without val_eval (plain -m run)

    trials, _ = collect_trials(sweep)
    assert [t.params for t in trials] == [{"strategy.derpp.alpha": a} for a in (0.2, 0.7, 1.9, 1.0)]
    assert [t.status for t in trials] == ["ok", "ok", "failed", "done (no val_eval)"]
    assert best_config_key(trials[1]) == ("seq-mnist", "derpp", "500")

    best = report_sweep(sweep, best_dir=tmp_path / "best", echo=lambda s: None)
    assert best == tmp_path / "best" / "seq-mnist" / "derpp-500.yaml"
    table = (sweep / "sweep_results.md").read_text()
    assert "| 1 **best** | 0.7 | 91.5 | 90 |" in table
    text = best.read_text()
    assert text.startswith("# @package _global_") and "trial (1)" in text
    body = yaml.safe_load(text)
    assert body["defaults"] == [{"/experiment@_here_": "seq-mnist/derpp-500"}, "_self_"]
    assert body["strategy"] == {"derpp": {"alpha": 0.7}}
    assert body["trainer"] == {"epochs": 2}  # the sweep's fixed overrides are kept
    assert "scenario" not in body  # the protocol's validation split and subset are not
    assert len((sweep / "sweep_results.csv").read_text().splitlines()) == 5


def test_committed_best_config_composes(make_config):
    path = ROOT / "conf" / "experiment" / "best" / "seq-mnist" / "derpp-500.yaml"
    body = yaml.safe_load(path.read_text())
    cfg = make_config("experiment=best/seq-mnist/derpp-500")
    assert cfg.scenario.name == "seq-mnist" and cfg.buffer.size == 500
    assert cfg.scenario.val_fraction == 0.0 and cfg.scenario.max_train_per_class is None
    assert cfg.strategy.derpp.alpha == pytest.approx(body["strategy"]["derpp"]["alpha"])
    assert cfg.optimizer.lr == pytest.approx(body["optimizer"]["lr"])
    assert cfg.trainer.batch_size == 10 and cfg.backbone.name == "mlp"  # from the base


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper not installed (pip install -e '.[sweep]')",
)
def test_optuna_sweep_end_to_end(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cl_framework.leaderboard.sweep",
            "-m",
            "experiment=seq-digits/derpp",
            "hparams_search=seq-digits-derpp",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}",
            f"+hydra.callbacks.sweep_report.best_dir={tmp_path / 'best'}",
            "trainer.progress_bar=false",
            "trainer.limit_train_batches=5",
            *QUICK,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n in (0, 1):
        assert (sweep / f"trial{n}" / "val_metrics.json").is_file()
    assert (sweep / "optimization_results.yaml").is_file()
    assert "**best**" in (sweep / "sweep_results.md").read_text()
    assert (tmp_path / "best" / "seq-digits" / "derpp-200.yaml").is_file()


def test_every_experiment_composes_for_clf_sweep():
    """What a multirun or a sweep over any experiment needs: the sweep's primary config
    (train.yaml + hparams_search) composes with every experiment config."""
    from hydra import compose, initialize_config_dir

    names = sorted(
        str(p.relative_to(ROOT / "conf" / "experiment").with_suffix(""))
        for p in (ROOT / "conf" / "experiment").rglob("*.yaml")
        if not p.name.startswith("_")
    )
    assert "seq-mnist/derpp-500" in names
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in names:
            sweep = compose("sweep", overrides=[f"experiment={name}"])
            assert sweep.objective == "class_il" and sweep.strategy, name
        train = compose("train", overrides=["experiment=seq-mnist/derpp-500"])
        sweep = compose("sweep", overrides=["experiment=seq-mnist/derpp-500"])
    # clf-sweep runs exactly clf-train's config, plus its objective
    assert OmegaConf.masked_copy(sweep, list(train.keys())) == train
