"""Error types raised before training starts, so a user sees one clear message.

Every message names the offending config key or file and says how to fix it.
"""

from __future__ import annotations


class CLFrameworkError(Exception):
    """Base class of all errors this framework raises on bad user input."""


class ConfigError(CLFrameworkError, ValueError):
    """A config key is unknown, has the wrong type or an impossible value.

    ``key`` is the dotted config path (e.g. ``strategy.derpp.alpha``).
    """

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        message = f"config key '{key}': {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple:
        # picklable with its fields (raised in DataLoader worker processes)
        return (type(self), (self.key, self.problem, self.fix))


class DataError(CLFrameworkError, FileNotFoundError):
    """A data file is missing, truncated or corrupt."""

    def __init__(self, path: str, problem: str, fix: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        message = f"data file '{path}': {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple:
        # picklable with its fields (raised in DataLoader worker processes)
        return (type(self), (self.path, self.problem, self.fix))


class CheckpointError(CLFrameworkError):
    """A checkpoint file is missing, corrupt, unsafe (pickled objects) or from another run."""

    def __init__(self, path: str, problem: str, fix: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        message = f"checkpoint '{path}': {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple:
        # picklable with its fields (raised in DataLoader worker processes)
        return (type(self), (self.path, self.problem, self.fix))


class NonFiniteLossError(CLFrameworkError):
    """The training loss became NaN or infinite; the run stopped after saving its state."""

    def __init__(self, step: int, experience: int, terms: dict[str, float]) -> None:
        self.step = step
        self.experience = experience
        self.terms = terms
        values = ", ".join(f"{k}={v}" for k, v in terms.items())
        super().__init__(
            f"non-finite loss at step {step} (experience {experience}): {values}. "
            "The state before this step was checkpointed; lower the learning rate or check the "
            "strategy's loss terms"
        )


class RunInterrupted(CLFrameworkError):
    """SIGINT / SIGTERM: the run stopped at a step boundary after saving a checkpoint."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum = signum
        self.step = step
        super().__init__(f"interrupted by signal {signum} after step {step}")
