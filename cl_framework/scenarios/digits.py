"""scikit-learn's bundled 8x8 digits as a data source: real data that needs no download.

It is the embedded default for quick runs and smoke tests. The dataset has no official test set,
so a stratified split is drawn with a private, fixed-seed generator (identical on every machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cl_framework.errors import ConfigError
from cl_framework.scenarios.sources import DataSource, register_source

DIGITS_CLASS_NAMES = tuple(str(d) for d in range(10))
_MAX_PIXEL = 16.0  # load_digits counts set pixels in 4x4 blocks: values 0..16


@register_source("digits")
def load_digits_source(
    data_dir: Path, *, test_fraction: float = 0.25, split_seed: int = 0
) -> DataSource:
    """Load the 1797 digits as uint8 (N, 1, 8, 8) with a stratified train/test split.

    ``data_dir`` is unused (the data ships with scikit-learn); it is accepted so every source
    has the same loader signature.
    """
    del data_dir
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(
            "scenario.test_fraction",
            f"must lie strictly between 0 and 1, got {test_fraction!r}",
            fix="use e.g. scenario.test_fraction=0.25",
        )
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    bunch = load_digits()
    pixels = np.rint(bunch.data * (255.0 / _MAX_PIXEL)).astype(np.uint8)
    images = torch.from_numpy(pixels.reshape(-1, 1, 8, 8))
    labels = torch.from_numpy(bunch.target.astype(np.int64))

    test_mask = _stratified_test_mask(bunch.target, float(test_fraction), split_seed)
    train_x, train_y = images[~test_mask], labels[~test_mask]
    scaled = train_x.to(torch.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(dim=(0, 2, 3)))
    std = tuple(float(s) for s in scaled.std(dim=(0, 2, 3)))
    return DataSource(
        name="digits",
        train_x=train_x,
        train_y=train_y,
        test_x=images[test_mask],
        test_y=labels[test_mask],
        class_names=DIGITS_CLASS_NAMES,
        mean=mean,
        std=std,
    )


def _stratified_test_mask(targets: np.ndarray, fraction: float, seed: int) -> torch.Tensor:
    """Pick round(fraction * n_c) test samples of every class c; original order is kept."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(targets), dtype=bool)
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        n_test = min(max(round(fraction * len(members)), 1), len(members) - 1)
        mask[rng.choice(members, size=n_test, replace=False)] = True
    return torch.from_numpy(mask)
