"""Loss functions shared by strategies that are not plain cross-entropy or MSE.

* :func:`supervised_contrastive_loss`: SupCon (Khosla et al., NeurIPS 2020, eq. 2, the
  "L_out" form), as X-DER uses it to prepare the future heads.
* :func:`similarity_preserving_loss`: SP-KD (Tung & Mori, ICCV 2019), X-DER's optional
  distance-preserving term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    base_temperature: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """SupCon over ``features`` (n, views, d): every view of every sample is an anchor; its
    positives are the other views of the same label, its contrast set every other view.

    Per anchor ``i``: ``-(T / T_base) * mean_{p in P(i)} log(exp(z_i.z_p / T) /
    sum_{a != i} exp(z_i.z_a / T))``. The per-anchor losses are averaged over the views of
    each sample; ``reduction`` ``"mean"`` averages over samples, ``"sum"`` sums them. The
    features are used as given (normalise them first for the usual cosine form).
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (n, views, d), got shape {tuple(features.shape)}")
    n, views = features.shape[:2]
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},), got shape {tuple(labels.shape)}")
    base = temperature if base_temperature is None else base_temperature
    # view-major rows, as torch.cat(torch.unbind(features, 1)): row v * n + s
    flat = features.transpose(0, 1).reshape(n * views, -1)
    scores = flat @ flat.T / temperature
    scores = scores - scores.max(1, keepdim=True).values.detach()
    rows = torch.arange(n * views, device=flat.device)
    not_self = torch.ones_like(scores, dtype=torch.bool)
    not_self[rows, rows] = False
    tiled = labels.repeat(views)
    positive = (tiled.unsqueeze(0) == tiled.unsqueeze(1)) & not_self
    log_prob = scores - torch.logsumexp(scores.masked_fill(~not_self, float("-inf")), 1, True)
    mean_pos = (log_prob * positive).sum(1) / positive.sum(1).clamp_min(1)
    per_sample = (-(temperature / base) * mean_pos).view(views, n).mean(0)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def similarity_preserving_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SP-KD: squared Frobenius distance between the row-normalised Gram matrices of ``a``
    and ``b`` (both (n, ...)), divided by n^2."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b need the same number of rows: {a.shape[0]} vs {b.shape[0]}")
    n = a.shape[0]

    def gram(z: torch.Tensor) -> torch.Tensor:
        z = z.flatten(1)
        return F.normalize(z @ z.T, dim=1)

    return (gram(a) - gram(b)).pow(2).sum() / n**2
