"""Data sources and their splitting into experiences (class-IL, task-IL).

Importing this package registers the built-in sources: ``digits`` (bundled with scikit-learn),
``mnist`` and ``fashion-mnist``.
"""

# digits and mnist are imported for their side effect: each registers its sources.
from cl_framework.scenarios import digits, mnist  # noqa: F401
from cl_framework.scenarios.scenario import Experience, Scenario, Split, build_scenario
from cl_framework.scenarios.sources import (
    DataSource,
    available_sources,
    load_source,
    register_source,
)

__all__ = [
    "DataSource",
    "Experience",
    "Scenario",
    "Split",
    "available_sources",
    "build_scenario",
    "load_source",
    "register_source",
]
