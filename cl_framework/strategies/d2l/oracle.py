"""Oracles: when does the optimisation of a dream prompt stop?

Published [D2L, arXiv 2603.01935 and its public reviews]: an oracle network decides when to
stop, to avoid "dream collapse" and over-fitting, and its input is the classifier's features.
How its stop/continue labels are obtained is not public. Ours:

* :class:`FeatureRuleOracle` (default, ``oracle.name=feature_rule``): a documented rule on the
  classifier's features of the dream batch (see :class:`DreamStats`). It **accepts** when the
  dream class is novel (its feature prototype is far from every seen class's), coherent (its
  samples cluster around the prototype), apart from the other dream classes and recognised by its
  head; it stops on **collapse** (samples nearly identical) and on the step budget.
* :class:`BudgetOracle` (``oracle.name=budget``): no oracle, the whole step budget (ablation).
* :class:`LearnedOracle` (``oracle.name=learned``): a small MLP over the same statistics that
  outputs P(stop), loaded from a ``weights_only`` file; :func:`fit_learned_oracle` trains one on
  the traces every run writes (``dreams/d2l.json``) with labels of the user's choosing.

New oracles register with :func:`register_oracle` (``oracle.name=<yours>``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_framework.errors import ConfigError

CONTINUE, ACCEPT, COLLAPSE, BUDGET = "continue", "accept", "collapse", "budget"


@dataclass
class DreamStats:
    """Classifier-feature statistics of one dream batch (what every oracle sees).

    * ``seen_similarity``: max cosine between the dream prototype (mean normalised feature) and
      the prototypes of the seen real classes (low = novel);
    * ``dream_similarity``: max cosine to the other dream classes' prototypes (0 if none);
    * ``compactness``: mean cosine of the samples to their own prototype (coherence; ~1 =
      collapsed to one image);
    * ``dream_prob``: mean softmax probability of the dream head;
    * ``real_prob``: mean softmax mass on the seen real classes' heads;
    * ``progress``: step / max_steps.
    """

    seen_similarity: float
    dream_similarity: float
    compactness: float
    dream_prob: float
    real_prob: float
    progress: float

    def vector(self) -> torch.Tensor:
        return torch.tensor([float(getattr(self, f.name)) for f in fields(self)])

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 5) for k, v in asdict(self).items()}


def prototype(features: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Unit-norm mean of unit-norm features (the class direction in feature space).

    ``center``: subtracted from every feature first. Pooled ReLU features are non-negative, so
    raw cosines between any two classes are high (0.9+ for an MLP on MNIST); measured around
    the mean feature of the seen data, cosines separate classes (our choice).
    """
    if center is not None:
        features = features - center.to(features)
    return F.normalize(F.normalize(features, dim=1).mean(0), dim=0)


def dream_stats(
    features: torch.Tensor,
    logits: torch.Tensor,
    head: int,
    seen_heads: torch.Tensor,
    seen_prototypes: torch.Tensor,
    other_prototypes: torch.Tensor,
    progress: float,
    center: torch.Tensor | None = None,
) -> DreamStats:
    """:class:`DreamStats` of a dream batch (no gradient); cosines around ``center``."""
    with torch.no_grad():
        if center is not None:
            features = features - center.to(features)
        proto = prototype(features)
        zn = F.normalize(features, dim=1)
        probs = logits.softmax(1)

        def max_cos(protos: torch.Tensor) -> float:
            return float((protos.to(proto) @ proto).max()) if len(protos) else 0.0

        real = float(probs[:, seen_heads].sum(1).mean()) if len(seen_heads) else 0.0
        return DreamStats(
            seen_similarity=max_cos(seen_prototypes),
            dream_similarity=max_cos(other_prototypes),
            compactness=float((zn @ proto).mean()),
            dream_prob=float(probs[:, head].mean()),
            real_prob=real,
            progress=float(progress),
        )


class Oracle:
    """Decides, after each prompt-optimisation step, whether to stop (and why)."""

    def decide(self, stats: DreamStats, step: int, max_steps: int) -> str:
        """One of ``continue``, ``accept``, ``collapse``, ``budget``."""
        raise NotImplementedError


@dataclass
class FeatureRuleOracle(Oracle):
    """The default rule. Checked in this order after step ``step`` (1-based):

    1. ``step >= 2`` and ``compactness >= collapse_compactness`` -> ``collapse`` (the samples
       became one image; the step's prompt is discarded, the previous one kept);
    2. ``step >= min_steps`` and ``real_prob <= max_real_prob`` (the classifier no longer calls
       the samples a seen class) and ``seen_similarity <= max_seen_similarity`` (novel) and
       ``dream_similarity <= max_dream_similarity`` (apart from the other dreams) and
       ``compactness >= min_compactness`` (coherent) and ``dream_prob >= min_dream_prob``
       -> ``accept``;
    3. ``step >= max_steps`` -> ``budget`` (the last prompt is kept: the best effort);
    4. otherwise ``continue``.
    """

    max_real_prob: float = 0.5
    max_seen_similarity: float = 0.95
    max_dream_similarity: float = 0.95
    min_compactness: float = 0.5
    collapse_compactness: float = 0.995
    min_dream_prob: float = 0.0
    min_steps: int = 2

    def decide(self, stats: DreamStats, step: int, max_steps: int) -> str:
        if step >= 2 and stats.compactness >= self.collapse_compactness:
            return COLLAPSE
        ok = (
            step >= self.min_steps
            and stats.real_prob <= self.max_real_prob
            and stats.seen_similarity <= self.max_seen_similarity
            and stats.dream_similarity <= self.max_dream_similarity
            and stats.compactness >= self.min_compactness
            and stats.dream_prob >= self.min_dream_prob
        )
        if ok:
            return ACCEPT
        return BUDGET if step >= max_steps else CONTINUE


class BudgetOracle(Oracle):
    """No oracle (ablation): every prompt runs the whole step budget."""

    def decide(self, stats: DreamStats, step: int, max_steps: int) -> str:
        return BUDGET if step >= max_steps else CONTINUE


class OracleNet(nn.Module):
    """MLP: :class:`DreamStats` vector (6) -> stop logit."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return self.net(stats).squeeze(-1)


@dataclass
class LearnedOracle(Oracle):
    """``accept`` when the network's P(stop) >= ``threshold`` (after ``min_steps``)."""

    path: str = ""
    threshold: float = 0.5
    min_steps: int = 1
    hidden: int = 16

    def __post_init__(self) -> None:
        key = "strategy.d2l.oracle.path"
        fix = "train one with cl_framework.strategies.d2l.oracle.fit_learned_oracle"
        file = Path(self.path).expanduser()
        if not self.path or not file.is_file():
            raise ConfigError(key, f"no learned-oracle file at '{self.path}'", fix)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            self.net = OracleNet(self.hidden)
            self.net.load_state_dict(state)
        except Exception as exc:
            raise ConfigError(
                key, f"'{file}' is not an OracleNet state_dict ({exc})", fix
            ) from None
        self.net.eval()

    def probability(self, stats: DreamStats) -> float:
        with torch.no_grad():
            return float(torch.sigmoid(self.net(stats.vector())))

    def decide(self, stats: DreamStats, step: int, max_steps: int) -> str:
        if step >= self.min_steps and self.probability(stats) >= self.threshold:
            return ACCEPT
        return BUDGET if step >= max_steps else CONTINUE


def fit_learned_oracle(
    stats: Sequence[Mapping[str, float]],
    labels: Sequence[int],
    path: str | Path,
    hidden: int = 16,
    epochs: int = 300,
    seed: int = 0,
) -> OracleNet:
    """Train an :class:`OracleNet` on (stats, stop label) pairs and save its state_dict.

    ``stats``: :meth:`DreamStats.as_dict` records (e.g. the ``trace`` of each prompt in a run's
    ``dreams/d2l.json``); ``labels``: 1 = should have stopped here, 0 = continue.
    """
    if len(stats) != len(labels) or not stats:
        raise ValueError("fit_learned_oracle needs as many labels as stats records (> 0)")
    names = [f.name for f in fields(DreamStats)]
    x = torch.tensor([[float(s[n]) for n in names] for s in stats])
    y = torch.tensor([float(v) for v in labels])
    torch.manual_seed(seed)
    net = OracleNet(hidden)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(epochs):
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


OracleFactory = Callable[..., Oracle]
_ORACLES: dict[str, OracleFactory] = {
    "feature_rule": FeatureRuleOracle,
    "learned": LearnedOracle,
    "budget": BudgetOracle,
}


def register_oracle(name: str, factory: OracleFactory) -> OracleFactory:
    """Make ``factory(**options)`` available as ``strategy.d2l.oracle.name=<name>``."""
    _ORACLES[name] = factory
    return factory


def build_oracle(config: Mapping[str, Any]) -> Oracle:
    """The oracle of the ``strategy.d2l.oracle`` node: ``{name, **options}``."""
    options = dict(config)
    name = options.pop("name", "feature_rule")
    if name not in _ORACLES:
        raise ConfigError(
            "strategy.d2l.oracle.name", f"unknown oracle {name!r}", f"use one of {sorted(_ORACLES)}"
        )
    try:
        return _ORACLES[name](**options)
    except TypeError as exc:
        raise ConfigError(
            "strategy.d2l.oracle", f"bad options for oracle '{name}': {exc}", "see docs/d2l.md"
        ) from None
