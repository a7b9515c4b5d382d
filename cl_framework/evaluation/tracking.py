"""What every enabled experiment tracker (CSV, TensorBoard, wandb) receives besides the losses.

A researcher filters and groups runs in TensorBoard or wandb by strategy, lr or scenario, and
compares their final numbers, so each logger gets the resolved config as hyper-parameters when
the run starts and the final metrics of ``metrics.json`` when it ends: final average accuracy,
forgetting, BWT and FWT (class-IL and task-IL) as scalars, and the accuracy matrices (a
markdown table in TensorBoard's text tab, a table and summary entries in wandb).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytorch_lightning.loggers import Logger

SETTINGS = ("class_il", "task_il")
FINAL_KEYS = ("final_avg_acc", "forgetting", "bwt", "fwt")


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> scalar values (lists become strings: trackers filter on scalars)."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten_config(value, f"{prefix}{key}."))
        return out
    value = node if node is None or isinstance(node, bool | int | float | str) else str(node)
    return {prefix[:-1]: value}


def run_hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config, flattened, plus ``strategies`` (the list as one filterable string)."""
    params = flatten_config({k: v for k, v in config.items() if k != "resume"})
    params["strategies"] = ",".join(str(s) for s in config.get("strategy") or {})
    return params


def final_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``final/<metric>_<setting>`` for the headline numbers of ``metrics.json``."""
    return {
        f"final/{key}_{setting}": float(metrics[key][setting])
        for key in FINAL_KEYS
        for setting in SETTINGS
    }


def matrix_markdown(matrix: Sequence[Sequence[float]]) -> str:
    """An accuracy matrix as a markdown table (rows: after experience i; columns: experience j)."""
    n = len(matrix[0]) if matrix else 0
    lines = [
        "| after \\ on | " + " | ".join(f"e{j + 1}" for j in range(n)) + " |",
        "|---" * (n + 1) + "|",
    ]
    for i, row in enumerate(matrix):
        lines.append(f"| {i + 1} | " + " | ".join(f"{a:.2f}" for a in row) + " |")
    return "\n".join(lines)


def log_run_config(loggers: Sequence[Logger], config: Mapping[str, Any]) -> None:
    """Hyper-parameters of the run to every logger (at the start, so a crashed run has them)."""
    params = run_hyperparameters(config)
    for logger in loggers:
        logger.log_hyperparams(params)


def log_final_metrics(loggers: Sequence[Logger], metrics: Mapping[str, Any], step: int) -> None:
    """The final numbers and accuracy matrices of ``metrics.json`` to every logger.

    TensorBoard gets the final numbers as the metrics of its HParams session (its HParams tab
    then compares runs by config and result; TensorBoard writes them at step 0)."""
    scalars = final_scalars(metrics)
    matrices = metrics["acc_matrix"]
    for logger in loggers:
        name = type(logger).__name__
        if name == "TensorBoardLogger":
            logger.log_hyperparams(run_hyperparameters(metrics["config"]), metrics=scalars)
        else:
            logger.log_metrics(scalars, step=step)
        if name == "TensorBoardLogger":
            for setting in SETTINGS:
                logger.experiment.add_text(
                    f"acc_matrix/{setting}", matrix_markdown(matrices[setting]), step
                )
        elif name == "WandbLogger":
            _log_wandb_final(logger, scalars, matrices)
        logger.save()


def _log_wandb_final(logger: Logger, scalars: Mapping[str, float], matrices: Mapping) -> None:
    run = logger.experiment
    run.summary.update(dict(scalars))
    for setting in SETTINGS:
        matrix = matrices[setting]
        columns = ["after"] + [f"e{j + 1}" for j in range(len(matrix[0]) if matrix else 0)]
        rows = [[i + 1, *row] for i, row in enumerate(matrix)]
        logger.log_table(key=f"acc_matrix/{setting}", columns=columns, data=rows)
        run.summary[f"acc_matrix/{setting}"] = [list(r) for r in matrix]


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """Flush and close every logger (wandb writes its summary when its run finishes)."""
    for logger in loggers:
        logger.finalize("success")
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
