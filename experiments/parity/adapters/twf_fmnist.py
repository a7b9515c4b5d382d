"""Dataset class for Mammoth's TwF (aimagelab/mammoth ``models/twf.py``): the parity proxy.

Built for the Mammoth commit ``72c1947`` (2023-12-31, "Minor fixes lider, twf"), the last TwF
version whose ``datasets/__init__.py`` imports nothing that needs the network (later versions
import ``open_clip`` through their CLIP datasets). It gives the official code the offline proxy
our ``seq-fashion-mnist/twf-500`` config runs, from **the same arrays**:

* ``seq-fmnist32twf``: Fashion-MNIST 5 x 2 in natural class order, upsampled to 32 x 32 x 3 by
  cl_framework's ``resized`` source (the one ``scenario=seq-fashion-mnist-rgb32`` reads), with
  the same seeded per-class subsets (``subset_seed`` 0) - image for image what our side trains
  on. Items follow Mammoth's ``MyCIFAR10``: a PIL image through ``TRANSFORM`` (random crop,
  padding 4 + horizontal flip, ``ToTensor``), the label and the un-augmented ``ToTensor`` copy.
  No normalisation (our scenario has none): ``Normalize`` with mean 0 and std 1, which TwF's
  buffer transform and Mammoth's kornia conversion both accept.

The sibling: Mammoth's TwF loads ``--loadcheck`` into the student and deep-copies it into the
frozen teacher. ``parity_cases._twf_sibling`` writes our ``clf-pretrain`` checkpoint's backbone
weights as a Mammoth model-only checkpoint (the key names of our ``CifarResNet`` are Mammoth's
``ResNet``'s; ``register()`` checks them) with a freshly initialised 10-class classifier (the
official loader asserts one), as our side starts from fresh heads.

Sizes come from environment variables (the official argparse takes no new flags):
``TWF_PARITY_TRAIN`` / ``TWF_PARITY_TEST`` images per class (default 100 / 100),
``TWF_PARITY_NF`` the ResNet-18 width (20 = reduced).
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as transforms
from backbone.ResNet18 import resnet18
from datasets.transforms.denormalization import DeNormalize
from datasets.utils.continual_dataset import ContinualDataset, store_masked_loaders
from PIL import Image
from torch.utils.data import Dataset

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@cache
def _arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images and int64 labels of our ``resized`` source."""
    from cl_framework.scenarios.sources import load_source

    source = load_source(
        "resized",
        os.environ["CLF_DATA_DIR"],
        base="fashion-mnist",
        size=32,
        channels=3,
        max_train_per_class=_env_int("TWF_PARITY_TRAIN", 100),
        max_test_per_class=_env_int("TWF_PARITY_TEST", 100),
        subset_seed=0,
    )
    x = getattr(source, f"{split}_x")
    y = getattr(source, f"{split}_y")
    return x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy().astype(np.int64)


class FashionImages(Dataset):
    """Mammoth's item contract: train ``(aug, y, not_aug)``, test ``(img, y)``."""

    def __init__(self, split: str, transform) -> None:
        self.data, targets = _arrays(split)
        self.targets = targets.copy()
        self.train, self.transform = split == "train", transform
        self.not_aug_transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index], mode="RGB")
        target = int(self.targets[index])
        out = self.transform(img)
        return (out, target, self.not_aug_transform(img)) if self.train else (out, target)


class FashionMNIST32TwF(ContinualDataset):
    NAME = "seq-fmnist32twf"
    SETTING = "class-il"
    N_CLASSES_PER_TASK = 2
    N_TASKS = 5
    N_CLASSES = 10
    SIZE = (32, 32)
    TRANSFORM = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(ZERO, ONE),
        ]
    )
    TEST_TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize(ZERO, ONE)])

    def get_data_loaders(self):
        train = FashionImages("train", self.TRANSFORM)
        test = FashionImages("test", self.TEST_TRANSFORM)
        return store_masked_loaders(train, test, self)

    @staticmethod
    def get_transform():
        return transforms.Compose([transforms.ToPILImage(), FashionMNIST32TwF.TRANSFORM])

    @staticmethod
    def get_backbone():
        return resnet18(10, nf=_env_int("TWF_PARITY_NF", 20))

    @staticmethod
    def get_loss():
        return F.cross_entropy

    @staticmethod
    def get_normalization_transform():
        return transforms.Normalize(ZERO, ONE)

    @staticmethod
    def get_denormalization_transform():
        return DeNormalize(ZERO, ONE)

    @staticmethod
    def get_scheduler(model, args):
        return None

    @staticmethod
    def get_epochs():
        return 2

    @staticmethod
    def get_batch_size():
        return 32

    @staticmethod
    def get_minibatch_size():
        return 32


def check_loadcheck(path: str) -> None:
    """The checkpoint's keys and shapes are exactly Mammoth's ResNet's."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    FashionMNIST32TwF.get_backbone().load_state_dict(state)  # strict: raises on any mismatch


def register() -> None:
    """Make the dataset known to the official ``get_dataset``; check ``--loadcheck``."""
    import sys

    import datasets

    datasets.NAMES[FashionMNIST32TwF.NAME] = FashionMNIST32TwF
    if "--loadcheck" in sys.argv:
        check_loadcheck(sys.argv[sys.argv.index("--loadcheck") + 1])
