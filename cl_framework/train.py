"""``clf-train``: the Hydra entry point. ``python -m cl_framework.train`` is the same.

Example: ``clf-train experiment=seq-mnist/derpp-500 seed=1``. Writes ``metrics.json``,
``acc_matrix.csv`` and plots into the Hydra run directory.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cl_framework.errors import CLFrameworkError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("cl_framework")


def quiet_lightning() -> None:
    """Lightning prints device banners at every Trainer; we build one per experience."""
    import pytorch_lightning  # noqa: F401  (sets its logger levels on import; override after)

    prefixes = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
    names = [*prefixes, *logging.root.manager.loggerDict]
    for name in names:
        if name.startswith(prefixes):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returns `None`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def run(cfg: DictConfig, output_dir: Path) -> dict:
    """Build, train, evaluate and write the outputs of one run; returns metrics.json."""
    from cl_framework.build import build_runner
    from cl_framework.evaluation.report import build_metrics, format_summary, write_outputs
    from cl_framework.run_config import to_plain

    runner = build_runner(cfg, output_dir)
    result = runner.run()
    plain = to_plain(cfg)
    metrics = build_metrics(
        result,
        scenario=runner.scenario.name,
        setting=runner.scenario.setting,
        strategies=list(plain["strategy"]),
        seed=int(plain.get("seed", 0)),
        config=plain,
    )
    paths = write_outputs(output_dir, metrics)
    log.info("\n%s", format_summary(metrics))
    log.info("outputs in %s", paths["metrics"].parent)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    quiet_lightning()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, output_dir)
    except CLFrameworkError as exc:
        print(f"clf-train: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(metrics["final_avg_acc"]["class_il"])


if __name__ == "__main__":
    main()
