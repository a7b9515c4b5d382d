"""Dataset classes for the official WSCL code (perceivelab/wscl): the parity proxy.

The official code ships dream datasets for CIFAR / Tiny-ImageNet / ImageNet only. This module
gives it the offline proxy our side runs, built from **the same arrays** (loaded by
cl_framework's ``resized`` source, so image for image identical):

* ``dream-seq-fmnist32``: Fashion-MNIST 5 x 2 in natural class order, upsampled to 32 x 32 x 3,
  seeded per-class subsets; free heads are trained on MNIST digits (same resize) bound in order
  (10 dream classes for 10 heads, as the official ``DreamDataset`` does when counts match);
* ``seq-fmnist32``: the same benchmark without dreams (the official "forward dataset" whose
  training images the most-activated head assignment counts).

Everything else is the official code: the dream/real union and its relabelling rules
(re-implemented here from ``seq_dream_cifar10.DreamDataset`` because that class hard-wires the
CIFAR files), the held-out splits (``store_previous_masked_loaders``), the training loop with
dynamic freezing, ER-ACE, the buffer, the head assignment and the evaluation.

Sizes come from environment variables (the official argparse cannot take new flags):
``WSCL_PARITY_TRAIN`` / ``WSCL_PARITY_TEST`` / ``WSCL_PARITY_DREAM`` images per class
(benchmark train / test, dreams), ``WSCL_PARITY_NF`` the ResNet-18 width (20 = reduced).
No augmentation and no normalisation, as our ``seq-fashion-mnist`` configs.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torchvision.transforms as transforms
from backbone.ResNet18 import resnet18
from datasets.seq_cifar10 import SequentialCIFAR10
from datasets.seq_dream_cifar10 import DreamCIFAR10
from datasets.utils.continual_dataset import store_masked_loaders, store_previous_masked_loaders
from datasets.utils.validation import get_train_val
from PIL import Image
from torch.utils.data import Dataset


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@cache
def _arrays(base: str, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(N, 32, 32, 3) uint8 images and labels of our ``resized`` source (same subsets)."""
    from cl_framework.scenarios.sources import load_source

    per_class = {
        ("fashion-mnist", "train"): _env_int("WSCL_PARITY_TRAIN", 150),
        ("fashion-mnist", "test"): _env_int("WSCL_PARITY_TEST", 100),
        ("mnist", "train"): _env_int("WSCL_PARITY_DREAM", 80),
    }
    options = {"base": base, "size": 32, "channels": 3, "subset_seed": 0}
    if base == "fashion-mnist":
        options["max_train_per_class"] = per_class[(base, "train")]
        options["max_test_per_class"] = per_class[(base, "test")]
    else:
        options["max_train_per_class"] = per_class[(base, "train")]
    source = load_source("resized", os.environ["CLF_DATA_DIR"], **options)
    x = getattr(source, f"{split}_x").permute(0, 2, 3, 1).contiguous().numpy()
    y = getattr(source, f"{split}_y").numpy().astype(np.int64)
    return x, y, tuple(source.class_names)


class ArrayImages(Dataset):
    """Images + targets with the official ``MyCIFAR10.__getitem__`` contract."""

    def __init__(self, data, targets, classes, transform=None) -> None:
        self.data, self.targets, self.classes = data, targets, list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.transform = transform
        self.not_aug_transform = transforms.Compose([transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index], mode="RGB")
        not_aug = self.not_aug_transform(img.copy())
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index], not_aug


def joined(split: str, labels: list, transform) -> ArrayImages:
    """The benchmark's classes at their heads (``labels[h]`` = class of head h or None) plus
    the dream class bound to every free head: the official ``DreamDataset`` rules."""
    x1, y1, names1 = _arrays("fashion-mnist", split)
    keep = np.isin(y1, [c for c in labels if c is not None])
    x1, y1 = x1[keep], y1[keep].copy()
    y1 = np.array([labels.index(c) for c in y1], dtype=np.int64)
    data, targets = [x1], [y1]
    if split == "train":  # the official code joins dreams into the test set too; the test
        x2, y2, _ = _arrays("mnist", "train")  # mask drops them (only real heads are tested)
        dream_heads = [h for h, c in enumerate(labels) if c is None]
        keep2 = np.isin(y2, dream_heads)  # 10 dream classes for 10 heads: bound in order
        data.append(x2[keep2])
        targets.append(y2[keep2])
    classes = [names1[c] if c is not None else f"dream {h}" for h, c in enumerate(labels)]
    return ArrayImages(np.concatenate(data), np.concatenate(targets), classes, transform)


class DreamFashionMNIST32(DreamCIFAR10):
    NAME = "dream-seq-fmnist32"
    TRANSFORM = transforms.Compose([transforms.ToTensor()])

    def get_data_loaders(self):
        test_transform = transforms.Compose([transforms.ToTensor()])
        labels = list(self.pos_to_label.values())
        train = joined("train", labels, self.TRANSFORM)
        test = joined("test", labels, test_transform)
        val = ArrayImages(train.data.copy(), train.targets.copy(), train.classes, self.TRANSFORM)
        return store_previous_masked_loaders(
            train, test, self, val if self.args.validation else None
        )

    @staticmethod
    def get_transform():
        return None  # replayed rows are not augmented (no augmentation in this setting)

    @staticmethod
    def get_backbone():
        return resnet18(10, nf=_env_int("WSCL_PARITY_NF", 20))

    @staticmethod
    def get_normalization_transform():
        return transforms.Lambda(lambda x: x)


class FashionMNIST32(SequentialCIFAR10):
    NAME = "seq-fmnist32"
    TRANSFORM = transforms.Compose([transforms.ToTensor()])

    def get_data_loaders(self):
        x, y, names = _arrays("fashion-mnist", "train")
        train = ArrayImages(x.copy(), y.copy(), names, self.TRANSFORM)
        if self.args.validation:  # as the official SequentialCIFAR10: 10 % held out
            train, test = get_train_val(train, transforms.ToTensor(), self.NAME)
        else:
            tx, ty, _ = _arrays("fashion-mnist", "test")
            test = ArrayImages(tx.copy(), ty.copy(), names, transforms.ToTensor())
        return store_masked_loaders(train, test, self)

    def get_task_labels(self, t: int) -> list[int]:
        """Positional heads of task ``t``: the official ``evaluate`` asks every dataset for
        them, but only its dream datasets define it (the plain ER-ACE baseline crashed)."""
        c = self.N_CLASSES_PER_TASK
        return list(range(t * c, (t + 1) * c))

    @staticmethod
    def get_transform():
        return None

    @staticmethod
    def get_backbone():
        return DreamFashionMNIST32.get_backbone()


def register() -> None:
    """Make both datasets known to the official ``get_dataset`` / ``get_forward_dataset``."""
    import datasets

    for cls in (DreamFashionMNIST32, FashionMNIST32):
        datasets.NAMES[cls.NAME] = cls
