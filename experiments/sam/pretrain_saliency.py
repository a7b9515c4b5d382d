"""Pretrain a SAM saliency branch on another dataset (the role of SER's saliency checkpoint).

SER starts its saliency branch from a predictor trained on external data; that checkpoint is not
public. This script trains a :class:`~cl_framework.saliency.branch.SaliencyBranch` on the
reduced ResNet-18 for 1x32x32 inputs to predict spectral-residual maps of **MNIST** digits (a
dataset disjoint from the Fashion-MNIST stream, so no future-task data leaks), and saves its state
dict for ``strategy.sam.checkpoint=<file>``.

    CLF_DATA_DIR=../shared/data .venv/bin/python experiments/sam/pretrain_saliency.py \
        --out outputs/sam_offline/saliency_mnist.pt
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from cl_framework.backbones import build_backbone
from cl_framework.saliency import sources  # noqa: F401  (registers 'derived')
from cl_framework.saliency.branch import SaliencyBranch
from cl_framework.saliency.loss import kl_saliency
from cl_framework.saliency.targets import spectral_residual_maps
from cl_framework.scenarios import load_source

ROOT = Path(__file__).resolve().parent.parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CLF_DATA_DIR", "../shared/data"))
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "outputs/sam_offline/saliency_mnist.pt"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    source = load_source(
        "derived", args.data_dir, base="mnist", size=32, max_train_per_class=args.per_class
    )
    x = source.train_x
    maps = spectral_residual_maps(x)
    branch = SaliencyBranch(build_backbone({"name": "reduced_resnet18"}, (1, 32, 32)), (1, 32, 32))
    optimizer = torch.optim.SGD(branch.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.process_time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            predicted, _ = branch(x[idx].float() / 255.0)
            loss = kl_saliency(predicted, maps[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch}: KL {total / len(x):.4f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": branch.state_dict()}, out)
    print(f"{len(x)} MNIST images, {time.process_time() - start:.0f} s CPU; saved {out}")


if __name__ == "__main__":
    main()
