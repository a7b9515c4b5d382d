"""Strategy plug-ins: the baselines and the methods, one module each."""

from cl_framework.strategies.registry import (
    available_strategies,
    build_strategies,
    register_strategy,
    strategy_class,
)

__all__ = ["available_strategies", "build_strategies", "register_strategy", "strategy_class"]
