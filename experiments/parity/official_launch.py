"""Run an official Mammoth-fork checkout (cl-mah, wscl, SER) and capture its accuracy matrix.

Usage (called by ``run_parity.py``; cwd must be the checkout, as its ``utils/main.py`` expects):

    python official_launch.py --out result.json [--no-plots] -- <the official main.py arguments>

What this changes in the official code, all at run time (no file of the checkout is edited):

* ``--no-plots``: cl-mah's ``evaluate`` draws a confusion matrix and fits a t-SNE of every test
  logit at every evaluation (figures only sent to TensorBoard); they are replaced by no-ops.
  They do not touch the model, the data or any random generator used for training
  (``TSNE(random_state=0)`` has its own), so accuracies are unchanged.
* The ``CsvLogger`` the official ``train`` feeds at the end of a run is wrapped to also write
  the per-task accuracy lists (class-IL and task-IL), the random-init accuracies and the
  official FWT / BWT / forgetting to ``--out`` as JSON.
* ``--plain-eval-fix``: cl-mah's and wscl's ``evaluate`` unpack three values per test batch,
  which only their auxiliary / dream datasets return; the plain ``seq-mnist`` test set returns
  two, so the official DER++ baseline crashes at its first evaluation. The plain MNIST test
  set is read with the training set's class ``MyMNIST`` instead (same images and labels, plus
  the un-augmented copy that ``evaluate`` discards).
* ``--csv_log`` is added to the arguments of cl-mah so that its logger is fed (wscl and SER
  log by default; ``--nowand 1`` keeps them off wandb).
* ``--register FILE``: a dataset module of ours (``adapters/``) whose ``register()`` adds the
  parity proxy to the official ``datasets.NAMES``; the official code has no dataset for it.
* ``--iter-next-fix``: SER's ``CLModel2Branches.begin_task`` calls ``iter(loader).next()``,
  a Python 2 spelling that current PyTorch's loader iterators no longer provide; ``next`` is
  aliased to ``__next__`` (the same first batch).
* ``--threads N``: ``torch.set_num_threads(N)`` once; the official ``set_num_threads`` calls
  (wscl and SER ask for 4 threads) are then ignored, so that two runs share two cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path


def _patch_logger(out: Path, started: float) -> None:
    from utils import loggers

    captured: dict = {}
    cls = getattr(loggers, "CsvLogger", None) or loggers.Logger  # cl-mah | wscl, SER
    add_bwt, add_fwt, write = cls.add_bwt, cls.add_fwt, cls.write

    def wrapped_bwt(self, results, results_mask_classes):
        captured["class_il"] = copy.deepcopy(results)
        captured["task_il"] = copy.deepcopy(results_mask_classes)
        return add_bwt(self, results, results_mask_classes)

    def wrapped_fwt(self, results, accs, results_mask_classes, accs_mask_classes):
        captured["random_class_il"] = _floats(accs)
        captured["random_task_il"] = _floats(accs_mask_classes)
        return add_fwt(self, results, accs, results_mask_classes, accs_mask_classes)

    def wrapped_write(self, args):
        payload = {
            "accs": {"class_il": captured.get("class_il"), "task_il": captured.get("task_il")},
            "random_init": {
                "class_il": captured.get("random_class_il"),
                "task_il": captured.get("random_task_il"),
            },
            "official_metrics": {
                "fwt": _f(self.fwt),
                "fwt_task_il": _f(self.fwt_mask_classes),
                "bwt": _f(self.bwt),
                "bwt_task_il": _f(self.bwt_mask_classes),
                "forgetting": _f(self.forgetting),
                "forgetting_task_il": _f(self.forgetting_mask_classes),
            },
            "mean_accs": {
                "class_il": [float(a) for a in self.accs],
                "task_il": [float(a) for a in getattr(self, "accs_mask_classes", [])],
            },
            "wall_time_s": time.perf_counter() - started,
            "argv": sys.argv,
        }
        out.write_text(json.dumps(payload, indent=1))
        return write(self, args)

    cls.add_bwt, cls.add_fwt, cls.write = wrapped_bwt, wrapped_fwt, wrapped_write


def _f(value):
    return None if value is None else float(value)


def _floats(values):
    """Floats of a (nested: Mammoth's current code keeps one list per task) sequence."""
    return [_floats(v) if isinstance(v, (list, tuple)) else float(v) for v in values]


def _patch_plots() -> None:
    from utils import training

    for name in ("tsne_plot", "plot_confusion_matrix"):
        if hasattr(training, name):
            setattr(training, name, lambda *args, **kwargs: None)


def _patch_iter_next() -> None:
    from torch.utils.data import dataloader

    dataloader._BaseDataLoaderIter.next = dataloader._BaseDataLoaderIter.__next__


def _patch_plain_eval() -> None:
    from datasets import seq_mnist

    seq_mnist.MNIST = seq_mnist.MyMNIST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--plain-eval-fix", action="store_true")
    parser.add_argument("--csv-log", action="store_true", help="append --csv_log (cl-mah)")
    parser.add_argument("--register", type=Path, help="an adapter module with register()")
    parser.add_argument("--iter-next-fix", action="store_true", help="SER's iter().next()")
    parser.add_argument("--threads", type=int, default=0)
    ours, official = parser.parse_known_args()
    if official and official[0] == "--":
        official = official[1:]
    started = time.perf_counter()
    root = os.getcwd()
    sys.path[:0] = [root, f"{root}/datasets", f"{root}/backbone", f"{root}/models"]
    sys.argv = [f"{root}/utils/main.py", *official]
    if ours.csv_log and "--csv_log" not in sys.argv:
        sys.argv.append("--csv_log")
    if ours.threads:
        import torch

        torch.set_num_threads(ours.threads)
        torch.set_num_threads = lambda n: None
    if ours.register:
        import importlib.util

        spec = importlib.util.spec_from_file_location("parity_adapter", ours.register)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.register()
    _patch_logger(ours.out.resolve(), started)
    if ours.no_plots:
        _patch_plots()
    if ours.plain_eval_fix:
        _patch_plain_eval()
    if ours.iter_next_fix:
        _patch_iter_next()
    from utils.main import main as official_main

    official_main()


if __name__ == "__main__":
    main()
