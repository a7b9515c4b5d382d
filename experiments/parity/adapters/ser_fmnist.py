"""Dataset classes for the official SER code (perceivelab/SER): the parity proxy.

The official code ships ImageNet-100 / mini-ImageNet / FG-ImageNet datasets whose saliency maps
are PNG files beside the images, and a saliency-predictor checkpoint that is not in the public
repository (its Git LFS blob is missing). This module gives it the offline proxy our
``seq-fashion-mnist/erace{,-sam}-500`` configs run, built from **the same arrays and the same
maps**:

* ``seq-fmnist32``: Fashion-MNIST 5 x 2 in natural class order, upsampled to 32 x 32 x 3 by
  cl_framework's ``derived`` source (bilinear, antialiased, gray replicated to 3 channels),
  seeded per-class subsets (``subset_seed`` 0) - image for image what our side trains on;
* ``seq-fmnist32sal``: the same, each image paired with its target map, ``((img, map), y)``
  as the official ``Imagenet100Sal``. The maps are cl_framework's spectral-residual targets
  (``saliency.targets.spectral_residual_maps``: OpenCV, uint8 with maximum 255), normalised to
  sum 1 as the official ``map_transform`` does. Test images carry maps too: the official
  ``evaluate`` computes saliency metrics on them (they do not affect accuracy).

Everything else is the official code: ``ErACESER`` / ``ErACE``, the UNISAL branch built from the
backbone, the multiplicative modulation, the buffer, both optimisers and the evaluation.

Sizes come from environment variables (the official argparse takes no new flags):
``SER_PARITY_TRAIN`` / ``SER_PARITY_TEST`` images per class, ``SER_PARITY_NF`` the ResNet-18
width (20 = reduced). No augmentation and no normalisation, as our configs.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as transforms
from backbone.ResNet18 import resnet18
from datasets.utils.continual_dataset import ContinualDataset, store_masked_loaders
from torch.utils.data import Dataset


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@cache
def _arrays(split: str) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images, labels and (N, 1, 32, 32) sum-1 maps of our source."""
    from cl_framework.saliency.sources import load_derived
    from cl_framework.saliency.targets import spectral_residual_maps

    source = load_derived(
        os.environ["CLF_DATA_DIR"],
        base="fashion-mnist",
        size=32,
        channels=3,
        max_train_per_class=_env_int("SER_PARITY_TRAIN", 200),
        max_test_per_class=_env_int("SER_PARITY_TEST", 100),
        subset_seed=0,
    )
    x = getattr(source, f"{split}_x")
    y = getattr(source, f"{split}_y").numpy().astype(np.int64)
    maps = spectral_residual_maps(x).float()
    maps = maps / maps.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return x, y, maps


class ArrayImages(Dataset):
    """The official item contract: train ``(inp, y, not_aug)``, test ``(inp, y)``; ``inp`` is
    the image, or ``(image, map)`` with maps. ``data`` holds row indices so that the official
    ``store_masked_loaders`` (which masks ``data`` and ``targets``) keeps images and maps
    aligned."""

    def __init__(self, split: str, with_maps: bool) -> None:
        self.images, targets, self.maps = _arrays(split)
        self.train, self.with_maps = split == "train", with_maps
        self.data = np.arange(len(targets))
        self.targets = targets.copy()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        row = int(self.data[index])
        img = self.images[row].float() / 255.0  # = ToTensor() of the uint8 image
        target = int(self.targets[index])
        inp = (img, self.maps[row]) if self.with_maps else img
        return (inp, target, img.clone()) if self.train else (inp, target)


class FashionMNIST32(ContinualDataset):
    NAME = "seq-fmnist32"
    SETTING = "class-il"
    N_CLASSES_PER_TASK = 2
    N_TASKS = 5
    WITH_MAPS = False
    TRANSFORM = None  # read by the official ContinualModel, never applied here
    TEST_TRANSFORM = None

    def get_data_loaders(self):
        train = ArrayImages("train", self.WITH_MAPS)
        test = ArrayImages("test", self.WITH_MAPS)
        return store_masked_loaders(train, test, self)

    @staticmethod
    def get_backbone():
        return resnet18(10, nf=_env_int("SER_PARITY_NF", 20))

    @staticmethod
    def get_loss():
        return F.cross_entropy

    def get_transform(self):
        return None  # replayed rows are not augmented (no augmentation in this setting)

    @staticmethod
    def get_normalization_transform():
        return transforms.Lambda(lambda x: x)

    @staticmethod
    def get_denormalization_transform():
        return transforms.Lambda(lambda x: x)

    @staticmethod
    def get_scheduler(model, args):
        return None

    @staticmethod
    def get_epochs():
        return 1

    @staticmethod
    def get_batch_size():
        return 10

    @staticmethod
    def get_minibatch_size():
        return 10


class FashionMNIST32Sal(FashionMNIST32):
    NAME = "seq-fmnist32sal"
    WITH_MAPS = True


def register() -> None:
    """Make both datasets known to the official ``get_dataset``."""
    import datasets

    for cls in (FashionMNIST32, FashionMNIST32Sal):
        datasets.NAMES[cls.NAME] = cls
