"""Dream2Learn offline comparison on Seq-MNIST: ER-ACE vs ER-ACE + D2L, DER++ vs DER++ + D2L.

1. Trains the generator once if its checkpoint is missing
   (``clf-pretrain-generator experiment=pretrain/generator-fashion-mnist``).
2. Runs ``clf-train experiment=seq-mnist/{erace-500, erace-d2l-500, derpp-500, derpp-d2l-500}
   seed={0,1,2}``, the bases also with D2L's 14 heads (``spare_heads``, the FWT control), and
   with ``ABLATIONS=1`` the paper's ablations (``OMP_NUM_THREADS=1``; ``JOBS`` processes at a
   time, default 1), skipping runs whose ``metrics.json`` exists (``FORCE=1`` repeats them).
3. Writes ``experiments/d2l/RESULTS.md`` and ``results.json`` (class-IL final average accuracy
   and FWT, mean ± std over seeds, wall-time multiplier, time spent dreaming, oracle decisions)
   and copies the dream grids of seed 0 and the generator's sample grid next to them.

    CLF_DATA_DIR=../shared/data .venv/bin/python experiments/d2l/run_seq_mnist.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = (0, 1, 2)
PAIRS = {"erace": "ER-ACE", "derpp": "DER++"}
#: Ablations of the paper (run after the main rows, ER-ACE base): name -> (label, overrides)
ABLATIONS = {
    "erace-d2l-interp-500": (
        "ER-ACE + interpolation dreams (midpoint of two generator classes, no prompt search)",
        [
            "strategy.d2l.init=interpolation",
            "strategy.d2l.search.max_steps=0",
            "strategy.d2l.search.refresh_steps=0",
        ],
    ),
    "erace-d2l-no-oracle-500": (
        "ER-ACE + D2L without oracle (whole step budget)",
        ["~strategy.d2l.oracle", "+strategy.d2l.oracle.name=budget"],
    ),
}
#: Run by default after the main rows (ER-ACE base): the reviews' prompt start, a random buffer
#: image as the start of image-to-image generation (img2img strength 0.6, the generator's default).
VARIANTS = {
    "erace-d2l-img2img-500": (
        "ER-ACE + D2L, image-to-image from a random buffer image (the reviews' start)",
        ["strategy.d2l.img2img=true"],
    ),
}
#: The FWT control: the base with D2L's output layer (10 + 4 heads, the 4 never taken), so
#: class-IL argmax and the random-init baseline of FWT run over the same heads as the D2L rows.
CONTROLS = {
    f"{base}-spare-500": (f"{base}-500", [f"strategy=[{strategy},spare_heads]"])
    for base, strategy in (("erace", "er_ace"), ("derpp", "derpp"))
}
#: The related-generator setting: Seq-Fashion-MNIST (same MLP protocol) dreaming through the
#: Fashion-MNIST generator, prompts from seen classes, image-to-image from buffer images.
RELATED = {
    "fmnist-erace-500": ("ER-ACE", "seq-fashion-mnist/erace-mlp-500", []),
    "fmnist-erace-spare-500": (
        "ER-ACE, 14 heads (4 spare, the control)",
        "seq-fashion-mnist/erace-mlp-500",
        ["strategy=[er_ace,spare_heads]"],
    ),
    "fmnist-erace-d2l-related-500": (
        "ER-ACE + D2L (seen-class prompts, image-to-image)",
        "seq-fashion-mnist/erace-d2l-related-500",
        [],
    ),
}
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.setdefault("CLF_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    return env


def ensure_generator(output_dir: Path) -> Path:
    path = output_dir / "generators" / "generator-fashion-mnist.pt"
    if not path.exists():
        cmd = [
            str(BIN / "clf-pretrain-generator"),
            "experiment=pretrain/generator-fashion-mnist",
            f"paths.output_dir={output_dir}",
        ]
        subprocess.run(cmd, check=True, cwd=ROOT, env=_env())
    return path


def run(name: str, seed: int, runs_dir: Path, generator: Path) -> dict:
    out = runs_dir / f"{name}-seed{seed}"
    experiment, extra = f"seq-mnist/{name}", []
    if name in ABLATIONS or name in VARIANTS:
        experiment, extra = "seq-mnist/erace-d2l-500", {**ABLATIONS, **VARIANTS}[name][1]
    if name in CONTROLS:
        experiment, extra = CONTROLS[name]
        experiment = f"seq-mnist/{experiment}"
    if name in RELATED:
        _, experiment, extra = RELATED[name]
    if not (out / "metrics.json").exists() or os.environ.get("FORCE") == "1":
        cmd = [
            str(BIN / "clf-train"),
            f"experiment={experiment}",
            f"seed={seed}",
            f"hydra.run.dir={out}",
            "trainer.progress_bar=false",
            *extra,
        ]
        if "d2l" in name:
            cmd.append(f"strategy.d2l.generator.path={generator}")
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with (out.parent / f"{out.name}.log").open("w") as log:
            subprocess.run(cmd, check=True, cwd=ROOT, env=_env(), stdout=log, stderr=log)
        print(f"{name} seed {seed}: {time.perf_counter() - start:.0f}s", flush=True)
    m = json.loads((out / "metrics.json").read_text())
    row = {
        "experiment": name,
        "seed": seed,
        "class_il": m["final_avg_acc"]["class_il"],
        "task_il": m["final_avg_acc"]["task_il"],
        "fwt_class_il": m["fwt"]["class_il"],
        "fwt_task_il": m["fwt"]["task_il"],
        "forgetting_class_il": m["forgetting"]["class_il"],
        "wall_time_s": m["wall_time_s"],
        "train_time_s": m["train_time_s"],
    }
    dreams = out / "dreams" / "d2l.json"
    if dreams.exists():
        d = json.loads(dreams.read_text())
        row["dream_seconds"] = d["dream_seconds"]
        row["oracle"] = dict(
            Counter(x["stop"] for e in d["episodes"] for x in e["dreams"] if x["kind"] == "new")
        )
        row["steps_new"] = statistics.fmean(
            [x["steps"] for e in d["episodes"] for x in e["dreams"] if x["kind"] == "new"]
        )
    return row


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def main() -> None:
    output_dir = Path(os.environ.get("OUTPUT_DIR", ROOT / "outputs"))
    runs_dir = Path(os.environ.get("RUNS_DIR", output_dir / "d2l_seq_mnist"))
    generator = ensure_generator(output_dir)
    jobs = [
        (f"{base}{suffix}-500", seed)
        for seed in SEEDS
        for base in PAIRS
        for suffix in ("", "-spare", "-d2l")
    ]
    ablations = {**VARIANTS, **(ABLATIONS if os.environ.get("ABLATIONS") == "1" else {})}
    jobs += [(name, seed) for name in ablations for seed in SEEDS]
    jobs += [(name, seed) for name in RELATED for seed in SEEDS]
    with ThreadPoolExecutor(int(os.environ.get("JOBS", "1"))) as pool:
        rows = list(pool.map(lambda j: run(j[0], j[1], runs_dir, generator), jobs))
    (HERE / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    for seed in SEEDS:
        for base in PAIRS:
            grid = runs_dir / f"{base}-d2l-500-seed{seed}" / "dreams" / "experience_4.png"
            if seed == 0 and grid.exists():
                shutil.copy(grid, HERE / f"dreams_{base}_seed0_after_experience_4.png")
    samples = generator.with_name(generator.stem + "_samples.png")
    if samples.exists():
        shutil.copy(samples, HERE / "generator_samples.png")
    gen_summary = json.loads(generator.with_suffix(".json").read_text())

    def pick(name: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["experiment"] == name]

    lines = [
        "# Dream2Learn on Seq-MNIST (offline): ER-ACE / DER++ with and without D2L",
        "",
        "Seq-MNIST 5 x 2, MLP 100-100, 1 epoch, batch 10, SGD lr 0.03, buffer 500 "
        "(`conf/experiment/seq-mnist/{erace,erace-d2l,derpp,derpp-d2l}-500.yaml`). The generator "
        "is our small class-conditional diffusion model trained on Fashion-MNIST "
        f"({gen_summary['parameters']} parameters, {gen_summary['train_images']} images, "
        f"{gen_summary['epochs']} epochs, {gen_summary['train_time_s']:.0f}s; guided samples "
        f"judged as their class {gen_summary.get('sample_accuracy', float('nan')):.1f}%, judge on "
        f"real test images {gen_summary.get('judge_real_test_accuracy', float('nan')):.1f}%). "
        f"Seeds {list(SEEDS)}; mean ± sample std. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, `OMP_NUM_THREADS=1`, {os.environ.get('JOBS', '1')} run(s) "
        "at a time. Command: `CLF_DATA_DIR=../shared/data .venv/bin/python "
        "experiments/d2l/run_seq_mnist.py`.",
        "",
        "| method | class-IL FAA | class-IL FWT | task-IL FAA | forgetting (CIL) | wall s | "
        "compute multiplier (wall) | of which dreaming s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for base, label in PAIRS.items():
        base_wall = statistics.fmean(pick(f"{base}-500", "wall_time_s"))
        for suffix, name in (
            ("", label),
            ("-spare", f"{label}, 14 heads (4 spare, the control)"),
            ("-d2l", f"{label} + D2L"),
        ):
            exp = f"{base}{suffix}-500"
            wall = statistics.fmean(pick(exp, "wall_time_s"))
            d2l = suffix == "-d2l"
            dreaming = f"{statistics.fmean(pick(exp, 'dream_seconds')):.0f}" if d2l else "-"
            lines.append(
                f"| {name} | {mean_std(pick(exp, 'class_il'))} | "
                f"{mean_std(pick(exp, 'fwt_class_il'))} | {mean_std(pick(exp, 'task_il'))} | "
                f"{mean_std(pick(exp, 'forgetting_class_il'))} | {wall:.1f} | "
                f"{wall / base_wall:.1f}x | {dreaming} |"
            )
    base_wall = statistics.fmean(pick("erace-500", "wall_time_s"))
    for exp, (label, _) in ablations.items():
        wall = statistics.fmean(pick(exp, "wall_time_s"))
        lines.append(
            f"| {label} | {mean_std(pick(exp, 'class_il'))} | "
            f"{mean_std(pick(exp, 'fwt_class_il'))} | {mean_std(pick(exp, 'task_il'))} | "
            f"{mean_std(pick(exp, 'forgetting_class_il'))} | {wall:.1f} | "
            f"{wall / base_wall:.1f}x | {statistics.fmean(pick(exp, 'dream_seconds')):.0f} |"
        )
    lines += ["", "Paired differences (D2L minus base, same seed):", ""]
    for base, label in PAIRS.items():
        for control, what in (("-spare", "the 14-head control"), ("", "the 10-head base")):
            d_acc, d_fwt = (
                [
                    a - b
                    for a, b in zip(
                        pick(f"{base}-d2l-500", key), pick(f"{base}{control}-500", key), strict=True
                    )
                ]
                for key in ("class_il", "fwt_class_il")
            )
            lines.append(
                f"- {label} + D2L minus {what}: class-IL {mean_std(d_acc)} (per seed "
                f"{[round(v, 2) for v in d_acc]}), FWT {mean_std(d_fwt)} (per seed "
                f"{[round(v, 2) for v in d_fwt]})"
            )
        oracle = Counter()
        for r in rows:
            if r["experiment"] == f"{base}-d2l-500":
                oracle.update(r["oracle"])
        lines.append(f"- {label} + D2L: oracle decisions on new dream classes {dict(oracle)}")
    for exp, (label, _) in ablations.items():
        d_acc, d_fwt = (
            [a - b for a, b in zip(pick(exp, key), pick("erace-spare-500", key), strict=True)]
            for key in ("class_il", "fwt_class_il")
        )
        lines.append(
            f"- {label} minus the 14-head ER-ACE control: class-IL {mean_std(d_acc)}, "
            f"FWT {mean_std(d_fwt)} (per seed {[round(v, 2) for v in d_fwt]})"
        )
    lines += [
        "",
        "## Related generator: Seq-Fashion-MNIST dreaming through the Fashion-MNIST generator",
        "",
        "The same protocol on Seq-Fashion-MNIST (`conf/experiment/seq-fashion-mnist/"
        "{erace-mlp,erace-d2l-related}-500.yaml`): the generator's classes are the benchmark's, "
        "prompts start from a seen class (`init=seen_class`) and generation from a random buffer "
        "image (`img2img`), the start the reviews describe; the generator also knows the future "
        "classes, as the paper's web-scale diffusion model does.",
        "",
        "| method | class-IL FAA | class-IL FWT | task-IL FAA | task-IL FWT | forgetting (CIL) "
        "| wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for exp, (label, _, _) in RELATED.items():
        lines.append(
            f"| {label} | {mean_std(pick(exp, 'class_il'))} | "
            f"{mean_std(pick(exp, 'fwt_class_il'))} | {mean_std(pick(exp, 'task_il'))} | "
            f"{mean_std(pick(exp, 'fwt_task_il'))} | "
            f"{mean_std(pick(exp, 'forgetting_class_il'))} | "
            f"{statistics.fmean(pick(exp, 'wall_time_s')):.1f} |"
        )
    d2l, control = "fmnist-erace-d2l-related-500", "fmnist-erace-spare-500"
    lines.append("")
    for key, what in (
        ("class_il", "class-IL FAA"),
        ("fwt_class_il", "class-IL FWT"),
        ("fwt_task_il", "task-IL FWT"),
    ):
        diff = [a - b for a, b in zip(pick(d2l, key), pick(control, key), strict=True)]
        lines.append(
            f"- D2L minus the 14-head control, {what}: "
            f"{mean_std(diff)} (per seed {[round(v, 2) for v in diff]})"
        )
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
