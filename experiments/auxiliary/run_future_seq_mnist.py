"""future-seq-mnist: DER++ alone vs DER++ + auxiliary stream (Fashion-MNIST), 3 seeds each.

Runs ``clf-train experiment=future-seq-mnist/{derpp,derpp-aux}-{200,500} seed={0,1,2}`` one
process at a time (``OMP_NUM_THREADS=1``; baseline and auxiliary runs interleaved so that the
load of a shared machine hits both alike), then writes ``experiments/auxiliary/RESULTS.md`` and
``experiments/auxiliary/results.json``. An ablation row (``ABLATIONS``: the auxiliary runs
with ``aux_ratio=1.0``, i.e. as many auxiliary rows as stream rows) runs after the main rows.
Runs whose ``metrics.json`` exists are not repeated
(``FORCE=1`` repeats them).

    CLF_DATA_DIR=../shared/data .venv/bin/python experiments/auxiliary/run_future_seq_mnist.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUFFERS = (200, 500)
SEEDS = (0, 1, 2)
METHODS = {"derpp": "DER++", "derpp-aux": "DER++ + auxiliary (Fashion-MNIST)"}
#: Extra rows (same configs with overrides), run after the main ones: label, experiment, overrides
ABLATIONS = {
    "derpp-aux-ratio1": (
        "DER++ + auxiliary, aux_ratio 1.0",
        "derpp-aux",
        ["strategy.auxiliary.aux_ratio=1.0"],
    ),
}


def run(
    name: str, seed: int, runs_dir: Path, experiment: str | None = None, extra: list[str] = ()
) -> dict:
    out = runs_dir / f"{name}-seed{seed}"
    if not (out / "metrics.json").exists() or os.environ.get("FORCE") == "1":
        cmd = [
            str(Path(sys.executable).parent / "clf-train"),
            f"experiment=future-seq-mnist/{experiment or name}",
            f"seed={seed}",
            f"hydra.run.dir={out}",
            "trainer.progress_bar=false",
            *extra,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.setdefault("CLF_DATA_DIR", str(ROOT.parent / "shared" / "data"))
        start = time.perf_counter()
        log = out.parent / f"{out.name}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=handle, stderr=handle)
        (out / "process_time_s.txt").write_text(f"{time.perf_counter() - start:.2f}\n")
    m = json.loads((out / "metrics.json").read_text())
    row = {
        "experiment": name,
        "seed": seed,
        "class_il": m["final_avg_acc"]["class_il"],
        "task_il": m["final_avg_acc"]["task_il"],
        "fwt_class_il": m["fwt"]["class_il"],
        "fwt_task_il": m["fwt"]["task_il"],
        "forgetting_class_il": m["forgetting"]["class_il"],
        "next_experience_acc": [
            m["acc_matrix"]["class_il"][j - 1][j] for j in range(1, m["n_experiences"])
        ],
        "random_init_class_il": m["random_init_acc"]["class_il"],
        "wall_time_s": m["wall_time_s"],
        "train_time_s": m["train_time_s"],
    }
    ckpt = out / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        from cl_framework.engine.checkpoint import load_checkpoint

        heads = load_checkpoint(ckpt)["training"]["heads"]
        row["label_to_head"] = heads["label_to_head"].tolist()
    return row


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def main() -> None:
    runs_dir = Path(os.environ.get("RUNS_DIR", ROOT / "outputs" / "auxiliary_future_seq_mnist"))
    rows: list[dict] = []
    for seed in SEEDS:
        for buffer in BUFFERS:
            for method in METHODS:
                name = f"{method}-{buffer}"
                row = run(name, seed, runs_dir)
                rows.append(row)
                print(
                    f"{name} seed {seed}: class-IL {row['class_il']:.2f} "
                    f"FWT {row['fwt_class_il']:.2f} wall {row['wall_time_s']:.1f}s",
                    flush=True,
                )
    for seed in SEEDS:
        for buffer in BUFFERS:
            for method, (_, base, extra) in ABLATIONS.items():
                row = run(f"{method}-{buffer}", seed, runs_dir, f"{base}-{buffer}", extra)
                rows.append(row)
                print(f"{method}-{buffer} seed {seed}: class-IL {row['class_il']:.2f}", flush=True)
    (HERE / "results.json").write_text(json.dumps(rows, indent=2) + "\n")

    def pick(name: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["experiment"] == name]

    lines = [
        "# future-seq-mnist: DER++ vs DER++ + auxiliary stream",
        "",
        "Split MNIST 5 x 2, MLP 100-100, 1 epoch, batch 10, SGD lr 0.03 "
        "(`conf/experiment/future-seq-mnist/`); auxiliary dataset Fashion-MNIST (10 classes "
        "bound in order to the 10 heads), most-activated head assignment, auxiliary rows per "
        "step = auxiliary/real training images of the experience (`aux_ratio: dataset`). "
        f"Seeds {list(SEEDS)}; mean ± sample std over seeds. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores shared with other jobs, one run at a time, "
        "`OMP_NUM_THREADS=1`, Python "
        f"{platform.python_version()}. Command: `CLF_DATA_DIR=../shared/data .venv/bin/python "
        "experiments/auxiliary/run_future_seq_mnist.py`.",
        "",
        "| buffer | method | class-IL FAA | class-IL FWT | task-IL FAA | task-IL FWT | "
        "forgetting (CIL) | wall s | wall-time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for buffer in BUFFERS:
        base_wall = statistics.fmean(pick(f"derpp-{buffer}", "wall_time_s"))
        labels = {**METHODS, **{k: v[0] for k, v in ABLATIONS.items()}}
        for method, label in labels.items():
            name = f"{method}-{buffer}"
            wall = statistics.fmean(pick(name, "wall_time_s"))
            lines.append(
                f"| {buffer} | {label} | {mean_std(pick(name, 'class_il'))} | "
                f"{mean_std(pick(name, 'fwt_class_il'))} | {mean_std(pick(name, 'task_il'))} | "
                f"{mean_std(pick(name, 'fwt_task_il'))} | "
                f"{mean_std(pick(name, 'forgetting_class_il'))} | {wall:.1f} | "
                f"{wall / base_wall:.2f} |"
            )
    lines += ["", "Differences to DER++ alone (same buffer, mean over seeds; paired by seed):", ""]
    for buffer in BUFFERS:
        for method in [m for m in {**METHODS, **ABLATIONS} if m != "derpp"]:
            name = f"{method}-{buffer}"
            d_acc = [
                a - b
                for a, b in zip(
                    pick(name, "class_il"), pick(f"derpp-{buffer}", "class_il"), strict=True
                )
            ]
            d_fwt = [
                a - b
                for a, b in zip(
                    pick(name, "fwt_class_il"), pick(f"derpp-{buffer}", "fwt_class_il"), strict=True
                )
            ]
            lines.append(
                f"- buffer {buffer}, {name}: class-IL FAA {mean_std(d_acc)}, "
                f"class-IL FWT {mean_std(d_fwt)}"
            )
    lines += [
        "",
        "Wall times were measured while other jobs kept the 2 cores busy (load average about "
        "6), so the ratios are indicative only.",
        "",
        "FWT = mean over j >= 1 of acc[j-1][j] - b_j, where acc[j-1][j] is measured after the "
        "classes of experience j were mapped to their heads and b_j is the accuracy of the "
        "randomly initialised network (positional heads). Wall-time ratio = mean wall time of "
        "the row / mean wall time of DER++ alone at the same buffer size.",
        "",
        "## Per seed",
        "",
        "| experiment | seed | class-IL | FWT (CIL) | acc[j-1][j] (CIL) | b_j (CIL) | "
        "label -> head | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["experiment"], r["seed"])):
        nxt = " ".join(f"{a:.1f}" for a in r["next_experience_acc"])
        rnd = " ".join(f"{a:.1f}" for a in r["random_init_class_il"][1:])
        mapping = " ".join(str(h) for h in r.get("label_to_head", [])) or "-"
        lines.append(
            f"| {r['experiment']} | {r['seed']} | {r['class_il']:.2f} | {r['fwt_class_il']:.2f} "
            f"| {nxt} | {rnd} | {mapping} | {r['wall_time_s']:.1f} |"
        )
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print((HERE / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
