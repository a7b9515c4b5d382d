"""Fine-tuning (``sgd`` in the DER paper): plain cross-entropy on the current experience.

The lower bound of every table; the engine's base cross-entropy is the whole method.
"""

from __future__ import annotations

from cl_framework.engine.plugin import StrategyPlugin
from cl_framework.strategies.registry import register_strategy


@register_strategy
class Finetune(StrategyPlugin):
    """No continual-learning mechanism at all."""

    name = "finetune"
