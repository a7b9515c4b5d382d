"""cl_framework: continual learning for image classification on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from cl_framework import load_trained`` without importing torch for every command."""
    if name in ("load_trained", "TrainedRun"):
        from cl_framework import load

        return getattr(load, name)
    raise AttributeError(f"module 'cl_framework' has no attribute {name!r}")
