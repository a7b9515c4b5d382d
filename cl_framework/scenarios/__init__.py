"""Data sources and their splitting into experiences (class-IL, task-IL, domain-IL).

Importing this package registers the built-in sources: ``digits`` (bundled with scikit-learn),
``mnist``, ``fashion-mnist``, ``perm-mnist``, ``rot-mnist``, ``mnist-360``, ``cifar10``,
``cifar100``, ``cifar100-coarse12``, ``svhn``, ``tinyimagenet``, ``imagenet_subset``,
``imagenet-r``, ``cub200``, ``imagefolder`` and ``avalanche`` (any Avalanche benchmark, from a
factory). See ``docs/benchmarks.md`` for layouts and downloads.
"""

# The source modules are imported for their side effect: each registers its sources.
from cl_framework.scenarios import (  # noqa: F401
    avalanche_adapter,
    cifar,
    cub,
    digits,
    domains,
    imagefolder,
    imagenet,
    imagenet_r,
    mnist,
    mnist360,
    resized,
    svhn,
    tinyimagenet,
)
from cl_framework.scenarios.auxiliary import load_auxiliary, load_unused_classes
from cl_framework.scenarios.scenario import Experience, Scenario, Split, build_scenario
from cl_framework.scenarios.sources import (
    DataSource,
    available_sources,
    load_source,
    register_source,
    select_classes,
)

__all__ = [
    "DataSource",
    "Experience",
    "Scenario",
    "Split",
    "available_sources",
    "build_scenario",
    "load_auxiliary",
    "load_source",
    "load_unused_classes",
    "register_source",
    "select_classes",
]
