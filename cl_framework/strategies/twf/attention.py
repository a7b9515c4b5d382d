"""Task-conditioned binary attention (mask) modules of TwF (reference ``twf.md`` §2.3).

One :class:`AttentionModule` per tapped layer maps the frozen sibling's map ``F_t`` (B, C, H, W)
and each row's task id to two logits per channel and position; a hard binary mask is drawn from
them. Everything task-specific (linear maps, batch-norm scale/shift, the final projection) is a
per-task slice of a parameter, so a step only updates the slices of the tasks in its batch.

Rows of several tasks are processed per task group (:class:`TaskGroups`): the rows are sorted by
task once per step and every per-task operation runs on contiguous slices, which avoids
materialising one ``C x C`` matrix per row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GUMBEL_TAU = 2.0 / 3.0
ATTENTION_MODES = ("chsp", "ch", "sp")


class TaskGroups:
    """Rows grouped by task id: one host sync per step, then contiguous per-task slices."""

    def __init__(self, tasks: torch.Tensor) -> None:
        tasks = tasks.long().reshape(-1)
        self.n = tasks.numel()
        self.task_ids = tasks
        order = torch.argsort(tasks, stable=True)
        uniq, counts = torch.unique_consecutive(tasks[order], return_counts=True)
        self.tasks: list[int] = [int(t) for t in uniq.tolist()]
        self.counts: list[int] = [int(c) for c in counts.tolist()]
        self.single = len(self.tasks) <= 1
        self.order = order
        self.inverse = torch.empty_like(order)
        self.inverse[order] = torch.arange(self.n, device=tasks.device)

    def apply(
        self, x: torch.Tensor, fn: Callable[[torch.Tensor, int], torch.Tensor]
    ) -> torch.Tensor:
        """``fn(rows_of_task_t, t)`` for each task, reassembled in the original row order."""
        if self.single:
            return fn(x, self.tasks[0]) if self.tasks else x
        parts = x[self.order].split(self.counts)
        out = torch.cat([fn(part, t) for part, t in zip(parts, self.tasks, strict=True)])
        return out[self.inverse]


def _kaiming_per_task(n_tasks: int, fout: int, fin: int, nonlinearity: str) -> torch.Tensor:
    """(T, fout, fin), each slice Kaiming-normal with fan_out mode (the reference's init)."""
    weight = torch.empty(n_tasks, fout, fin)
    for t in range(n_tasks):
        nn.init.kaiming_normal_(weight[t], mode="fan_out", nonlinearity=nonlinearity)
    return weight


class ConditionalLinear(nn.Module):
    """``y = W_tau x`` with one ``(fout, fin)`` matrix per task, no bias."""

    def __init__(self, fin: int, fout: int, n_tasks: int, nonlinearity: str = "relu") -> None:
        super().__init__()
        self.weight = nn.Parameter(_kaiming_per_task(n_tasks, fout, fin, nonlinearity))

    def forward(self, x: torch.Tensor, groups: TaskGroups) -> torch.Tensor:
        return groups.apply(x, lambda rows, t: rows @ self.weight[t].t())


class ConditionalBatchNorm(nn.Module):
    """Batch norm without affine parameters, then a per-task scale and shift.

    Scale starts at N(1, 0.02), shift at 0 (as in the reference). A training batch of one row
    has no batch statistics; it is normalised with the running statistics instead.
    """

    def __init__(self, num_features: int, n_tasks: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.momentum = 0.1
        self.eps = 1e-5
        self.gamma = nn.Parameter(torch.empty(n_tasks, num_features).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(n_tasks, num_features))

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        use_batch = self.training and x.shape[0] > 1
        out = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            training=use_batch,
            momentum=self.momentum,
            eps=self.eps,
        )
        shape = (x.shape[0], self.num_features) + (1,) * (x.dim() - 2)
        return self.gamma[task_ids].view(shape) * out + self.beta[task_ids].view(shape)


class ChannelBranch(nn.Module):
    """``ch = tanh(CBN(W1 g)) * sigmoid(CBN'(W2 g)) + W3 g`` with ``g = GAP(F_t)``."""

    def __init__(self, channels: int, n_tasks: int) -> None:
        super().__init__()
        self.l1 = ConditionalLinear(channels, channels, n_tasks, "tanh")
        self.bn1 = ConditionalBatchNorm(channels, n_tasks)
        self.l2 = ConditionalLinear(channels, channels, n_tasks, "sigmoid")
        self.bn2 = ConditionalBatchNorm(channels, n_tasks)
        self.lres = ConditionalLinear(channels, channels, n_tasks, "relu")

    def forward(self, fm_t: torch.Tensor, groups: TaskGroups) -> torch.Tensor:
        g = fm_t.mean(dim=(2, 3))
        a = torch.tanh(self.bn1(self.l1(g, groups), groups.task_ids))
        b = torch.sigmoid(self.bn2(self.l2(g, groups), groups.task_ids))
        return a * b + self.lres(g, groups)


class SpatialBranch(nn.Module):
    """1x1 conv C->C/r, two dilated 3x3 convs, 1x1 conv ->1; each followed by a conditional BN
    (and a ReLU except the last): ``sp`` of shape (B, 1, H, W)."""

    def __init__(self, channels: int, n_tasks: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(channels, hidden, kernel_size=1),
                nn.Conv2d(hidden, hidden, kernel_size=3, dilation=2, padding=2),
                nn.Conv2d(hidden, hidden, kernel_size=3, dilation=2, padding=2),
                nn.Conv2d(hidden, 1, kernel_size=1),
            ]
        )
        self.norms = nn.ModuleList(
            [ConditionalBatchNorm(c, n_tasks) for c in (hidden, hidden, hidden, 1)]
        )

    def forward(self, fm_t: torch.Tensor, groups: TaskGroups) -> torch.Tensor:
        x = fm_t
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x), groups.task_ids)
            if i < last:
                x = F.relu(x)
        return x


class AttentionModule(nn.Module):
    """Channel + spatial attention of one layer and its per-task projection to mask logits.

    ``forward`` returns ``(z0, z1)``, each (B, C, H, W): channel c's two logits come from the
    projection's output channels 2c and 2c+1. The mask keeps component 0: training draws it with
    a hard Gumbel-softmax (straight-through), evaluation uses ``1[z0 > z1]``.

    ``projection_init``: ``normal`` = N(0, 1), what the reference's projection actually gets (its
    Kaiming init is never called); ``kaiming`` = Kaiming-normal, fan_out.
    ``mode``: ``chsp`` (both branches, the reference), ``ch`` or ``sp`` (ablations: the missing
    branch is replaced by ones, as in the reference's ``chan_only`` / ``space_only``).
    """

    def __init__(
        self,
        channels: int,
        n_tasks: int,
        reduction: int = 4,
        projection_init: str = "normal",
        mode: str = "chsp",
    ) -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, not {mode!r}")
        self.channels = channels
        self.mode = mode
        self.channel = ChannelBranch(channels, n_tasks) if "ch" in mode else None
        self.spatial = SpatialBranch(channels, n_tasks, reduction) if "sp" in mode else None
        if projection_init == "normal":
            projection = torch.randn(n_tasks, 2 * channels, channels)
        elif projection_init == "kaiming":
            projection = _kaiming_per_task(n_tasks, 2 * channels, channels, "relu")
        else:
            raise ValueError(
                f"projection_init must be 'normal' or 'kaiming', not {projection_init!r}"
            )
        self.projection = nn.Parameter(projection)

    def forward(self, fm_t: torch.Tensor, groups: TaskGroups) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = fm_t.shape
        ones = fm_t.new_ones(())
        ch = self.channel(fm_t, groups)[:, :, None, None] if self.channel is not None else ones
        sp = self.spatial(fm_t, groups) if self.spatial is not None else ones
        x = (ch + sp).expand(b, c, h, w)

        def project(rows: torch.Tensor, t: int) -> torch.Tensor:
            return F.conv2d(rows, self.projection[t][:, :, None, None])

        z = groups.apply(x, project).view(b, c, 2, h, w)
        return z[:, :, 0], z[:, :, 1]


def binary_mask(
    z0: torch.Tensor,
    z1: torch.Tensor,
    training: bool,
    tau: float = GUMBEL_TAU,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Binary mask from two logits: component 0 of a 2-way softmax.

    Training: hard Gumbel-softmax with temperature ``tau`` and straight-through gradients. With
    two classes, ``g0 - g1`` of two Gumbel draws is a standard logistic draw ``L``, so the soft
    sample is ``sigmoid((z0 - z1 + L) / tau)`` and the hard one ``1[z0 - z1 + L > 0]`` (the same
    distribution as ``F.gumbel_softmax(hard=True)[..., 0]``, drawn from a private generator).
    The forward value is the hard mask, the gradient that of the soft sample.
    Evaluation: ``1[z0 > z1]``, no gradient.
    """
    diff = z0 - z1
    if not training:
        return (diff > 0).to(z0.dtype)
    u = torch.rand(diff.shape, generator=generator, device=diff.device, dtype=diff.dtype)
    u = u.clamp_(torch.finfo(diff.dtype).tiny, 1.0 - torch.finfo(diff.dtype).eps)
    logistic = torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid((diff + logistic) / tau)
    hard = (diff + logistic > 0).to(z0.dtype)
    # soft - soft.detach() is exactly zero in value: the forward value stays exactly binary
    return hard + (soft - soft.detach())
