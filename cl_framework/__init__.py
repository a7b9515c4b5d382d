"""cl_framework: continual learning for image classification on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
