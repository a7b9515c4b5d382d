"""Class-IL and task-IL accuracy on every experience from one forward pass per test batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_framework.engine import distributed
from cl_framework.engine.module import CLModule
from cl_framework.scenarios import Scenario
from cl_framework.scenarios.disk import eval_batches


@dataclass(frozen=True)
class EvalRow:
    """Accuracy (percent) on each experience's test set, in both settings."""

    class_il: list[float]
    task_il: list[float]


def evaluate_all(
    module: CLModule, scenario: Scenario, batch_size: int = 1000, num_workers: int = 0
) -> EvalRow:
    """Evaluate on every experience, future ones included (for FWT).

    Class-IL: argmax over every head (a prediction on a head of another experience, or on an
    auxiliary head, is an error). Task-IL: argmax over the heads of the sample's experience only.
    Dataset labels are mapped through the head manager before comparison. Under DDP each rank
    evaluates every world_size-th sample and the correct counts are summed across ranks.
    Test sets streamed from disk are decoded by ``num_workers`` worker processes.
    """
    was_training = module.training
    module.eval()
    device = module.device
    task_heads = module.heads.task_mask([exp.classes for exp in scenario]).to(device)
    class_il: list[float] = []
    task_il: list[float] = []
    sharded = distributed.initialized()
    rank = torch.distributed.get_rank() if sharded else 0
    world = torch.distributed.get_world_size() if sharded else 1
    try:
        for j, exp in enumerate(scenario):
            correct = torch.zeros(2, dtype=torch.long, device=device)
            test_x, test_y = exp.test.x[rank::world], exp.test.y[rank::world]
            batches = eval_batches(
                test_x,
                test_y,
                batch_size,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )
            for x, y in batches:
                x = x.to(device, non_blocking=True)
                y = module.heads.map(y.to(device))
                logits = module.predict_logits(x, experience=j)
                correct[0] += (logits.argmax(1) == y).sum()
                masked = logits.masked_fill(~task_heads[j], torch.finfo(logits.dtype).min)
                correct[1] += (masked.argmax(1) == y).sum()
            correct = distributed.sum_across_ranks(correct).cpu()
            n = len(exp.test.y)
            class_il.append(100.0 * float(correct[0]) / max(n, 1))
            task_il.append(100.0 * float(correct[1]) / max(n, 1))
    finally:
        module.train(was_training)
    return EvalRow(class_il=class_il, task_il=task_il)
