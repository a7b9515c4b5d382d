"""Seeded per-class subsets of training data: small, reproducible versions of a benchmark.

Used for quick experiments on CPU (``scenario.max_train_per_class``); the test sets are kept
whole so accuracies stay comparable.
"""

from __future__ import annotations

import dataclasses

import torch

from cl_framework.scenarios.scenario import Scenario, Split


def subsample_split(split: Split, per_class: int, seed: int) -> Split:
    """At most ``per_class`` rows of every label, chosen uniformly with a private generator."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split.y), generator=gen)
    y = split.y[order]
    # rank of each row among the rows of its label, in the random order
    sorted_y, by_label = torch.sort(y, stable=True)
    starts = torch.searchsorted(sorted_y, sorted_y, right=False)
    rank = torch.empty_like(y)
    rank[by_label] = torch.arange(len(y)) - starts
    keep = order[rank < per_class].sort().values
    return Split(x=split.x[keep], y=split.y[keep], t=None if split.t is None else split.t[keep])


def subsample_scenario(scenario: Scenario, per_class: int, seed: int) -> Scenario:
    """The scenario with each experience's training split reduced to ``per_class`` per class."""
    experiences = tuple(
        dataclasses.replace(exp, train=subsample_split(exp.train, per_class, seed + exp.index))
        for exp in scenario.experiences
    )
    return dataclasses.replace(scenario, experiences=experiences)
