"""Avalanche's DER strategy (``avalanche.training.DER``, DER++ when beta > 0) on Seq-MNIST.

Same tensors (MNIST as ``x / 255`` float, natural class order, 5 x 2 classes, built with
``nc_benchmark`` from in-memory tensors, no download), same MLP and hyper-parameters as the other
contenders: batch 10, replay minibatch 10, buffer 500, lr 0.03, alpha 1.0, beta 0.5, 1 epoch, SGD.

Avalanche's DER differs from Mammoth's (their docstring says so): a class-balanced buffer filled
at the end of each experience with logits computed after training on it (not reservoir insertion
at every step with the logits seen during training), one replay draw shared by the MSE and CE
terms, and one joint forward of replay + stream rows. The benchmark runs it as shipped. The
evaluator is an ``EvaluationPlugin`` without metrics or loggers (the default one prints
progress and computes metrics at every iteration, which would not be a fair timing); accuracy is
measured with the same evaluation function as the hand-written loop.

Usage: ``python experiments/bench/avalanche_der.py [--out result.json] [--limit N]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from bench_common import (
    N_EXPERIENCES,
    ContenderResult,
    DerppConfig,
    Stopwatch,
    build_mlp,
    evaluate,
    final_avg_acc,
    load_seq_mnist,
    set_threads,
    write_result,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--limit", type=int, default=None, help="max batches per experience")
    parser.add_argument("--n-exp", type=int, default=N_EXPERIENCES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--evaluator",
        choices=("lean", "default"),
        default="lean",
        help="lean: EvaluationPlugin without metrics/loggers; default: Avalanche's default",
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    threads = set_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_import = time.perf_counter()
        from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
        from avalanche.training import DER
        from avalanche.training.plugins import EvaluationPlugin
        from avalanche.training.plugins.evaluation import default_evaluator

        import_s = time.perf_counter() - t_import
    import avalanche

    cfg = DerppConfig()
    data = load_seq_mnist()
    train = torch.utils.data.TensorDataset(data.x_train.float().div_(255.0), data.y_train)
    test = torch.utils.data.TensorDataset(data.x_test.float().div_(255.0), data.y_test)
    benchmark = nc_benchmark(
        train,
        test,
        n_experiences=N_EXPERIENCES,
        task_labels=False,
        fixed_class_order=list(range(10)),
        seed=args.seed,
    )
    torch.manual_seed(args.seed)  # nc_benchmark re-seeds the global RNG; init after it
    model = build_mlp()
    strategy = DER(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=cfg.lr),
        mem_size=cfg.buffer_size,
        batch_size_mem=cfg.minibatch_size,
        alpha=cfg.alpha,
        beta=cfg.beta,
        train_mb_size=cfg.batch_size,
        train_epochs=cfg.epochs,
        eval_mb_size=1000,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]) if args.evaluator == "lean" else default_evaluator,
    )
    if args.limit is not None:
        from avalanche.core import SupervisedPlugin

        class StopAfter(SupervisedPlugin):
            def before_training_epoch(self, strategy, **kwargs):
                self.count = 0

            def after_training_iteration(self, strategy, **kwargs):
                self.count += 1
                if self.count >= args.limit:
                    strategy.stop_training()

        strategy.plugins.append(StopAfter())

    matrix: list[list[float]] = []
    clock = Stopwatch()
    steps = 0
    for i, experience in enumerate(benchmark.train_stream[: args.n_exp]):
        with clock:
            strategy.train(experience, num_workers=0)
        steps += int(strategy.clock.train_epoch_iterations)
        matrix.append(evaluate(model, data, args.n_exp))
        del i
    result = ContenderResult(
        name=f"avalanche-{args.evaluator}",
        final_avg_acc=final_avg_acc(matrix),
        acc_matrix=matrix,
        train_time_s=clock.total,
        train_cpu_s=clock.cpu,
        steps=steps,
        threads=threads,
        wall_time_s=time.perf_counter() - t0,
        extra={
            "avalanche_version": avalanche.__version__,
            "import_s": import_s,
            "evaluator": args.evaluator,
        },
    )
    write_result(result, args.out)


if __name__ == "__main__":
    main()
