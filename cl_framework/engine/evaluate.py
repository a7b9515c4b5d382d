"""Class-IL and task-IL accuracy on every experience from one forward pass per test batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl_framework.engine.module import CLModule
from cl_framework.scenarios import Scenario


@dataclass(frozen=True)
class EvalRow:
    """Accuracy (percent) on each experience's test set, in both settings."""

    class_il: list[float]
    task_il: list[float]


def evaluate_all(module: CLModule, scenario: Scenario, batch_size: int = 1000) -> EvalRow:
    """Evaluate on every experience, future ones included (for FWT).

    Class-IL: argmax over every head (a prediction on a head of another experience, or on an
    auxiliary head, is an error). Task-IL: argmax over the heads of the sample's experience only.
    Dataset labels are mapped through the head manager before comparison.
    """
    was_training = module.training
    module.eval()
    device = module.device
    task_heads = module.heads.task_mask([exp.classes for exp in scenario]).to(device)
    class_il: list[float] = []
    task_il: list[float] = []
    try:
        for j, exp in enumerate(scenario):
            correct_cil = torch.zeros((), dtype=torch.long, device=device)
            correct_til = torch.zeros((), dtype=torch.long, device=device)
            n = len(exp.test.y)
            for start in range(0, n, batch_size):
                x = exp.test.x[start : start + batch_size].to(device, non_blocking=True)
                y = module.heads.map(exp.test.y[start : start + batch_size].to(device))
                logits = module.predict_logits(x)
                correct_cil += (logits.argmax(1) == y).sum()
                masked = logits.masked_fill(~task_heads[j], torch.finfo(logits.dtype).min)
                correct_til += (masked.argmax(1) == y).sum()
            class_il.append(100.0 * float(correct_cil) / max(n, 1))
            task_il.append(100.0 * float(correct_til) / max(n, 1))
    finally:
        module.train(was_training)
    return EvalRow(class_il=class_il, task_il=task_il)
