"""Reproduce the DER paper's Seq-MNIST rows (Buzzega et al. 2020, Table 2) with one seed each.

Runs every ``conf/experiment/seq-mnist/*`` config through ``clf-train`` (one process each),
reads the ``metrics.json`` files and writes ``experiments/seq_mnist/RESULTS.md``.

    CLF_DATA_DIR=../shared/data .venv/bin/python experiments/seq_mnist/reproduce.py [names...]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# name -> (published class-IL, acceptance floor or (low, high) band); None = no published row used
ROWS: dict[str, tuple[float | None, object]] = {
    "sgd": (19.60, (18.0, 21.0)),
    "joint": (95.57, 94.0),
    "er-200": (80.43, 78.0),
    "er-500": (86.12, 84.0),
    "der-200": (84.55, None),
    "der-500": (90.54, 88.0),
    "derpp-200": (85.61, 83.0),
    "derpp-500": (91.00, 89.0),
    "lwf": (None, None),
    "ewc": (None, None),
}


def run(name: str, seed: int, runs_dir: Path) -> dict:
    out = runs_dir / name
    cmd = [
        str(Path(sys.executable).parent / "clf-train"),
        f"experiment=seq-mnist/{name}",
        f"seed={seed}",
        f"hydra.run.dir={out}",
        "trainer.progress_bar=false",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_time_s"] = time.perf_counter() - start
    return metrics


def verdict(value: float, target: object) -> str:
    if target is None:
        return "-"
    if isinstance(target, tuple):
        return "yes" if target[0] <= value <= target[1] else "NO"
    return "yes" if value >= float(target) else "NO"


def main() -> None:
    names = sys.argv[1:] or list(ROWS)
    seed = int(os.environ.get("SEED", "0"))
    runs_dir = Path(os.environ.get("RUNS_DIR", ROOT / "outputs" / "seq_mnist_reproduction"))
    lines = [
        "# Seq-MNIST reproduction (DER paper, Table 2, class-IL)",
        "",
        f"One seed ({seed}) per row; machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}. Command: "
        "`CLF_DATA_DIR=../shared/data .venv/bin/python experiments/seq_mnist/reproduce.py`.",
        "",
        "| experiment | class-IL | task-IL | paper class-IL | acceptance | met | forgetting "
        "(CIL) | train s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        published, target = ROWS[name]
        m = run(name, seed, runs_dir)
        cil, til = m["final_avg_acc"]["class_il"], m["final_avg_acc"]["task_il"]
        target_txt = (
            "-"
            if target is None
            else (f"{target[0]}-{target[1]}" if isinstance(target, tuple) else f">= {target}")
        )
        row = (
            f"| {name} | {cil:.2f} | {til:.2f} | {published if published else '-'} | "
            f"{target_txt} | {verdict(cil, target)} | {m['forgetting']['class_il']:.2f} | "
            f"{m['train_time_s']:.1f} | {m['wall_time_s']:.1f} |"
        )
        print(row, flush=True)
        lines.append(row)
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
