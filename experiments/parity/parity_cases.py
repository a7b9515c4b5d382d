"""The parity cases: one official command and one of ours per row, for each method.

A :class:`Case` names the official repository it needs (``repo``), the arguments of its
``utils/main.py`` for a seed, the data layout to prepare in the checkout, and our Hydra
overrides for the same setting. The settings and their sources are argued in RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prepare_data import torchvision_layout

Args = Callable[[int], list[str]]


@dataclass(frozen=True)
class Case:
    method: str
    name: str
    label: str
    repo: str
    official_args: Args | None
    our_overrides: Args | None
    launch_flags: tuple[str, ...] = ()
    layout: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (dataset, root, subclasses)
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def prepare_official(self, checkout: Path, data_dir: Path) -> None:
        """Lay the shared data out where the official code reads it (``<checkout>/data``)."""
        for dataset, root, subclasses in self.layout:
            torchvision_layout(data_dir, checkout / "data", dataset, root, subclasses)


# ------------------------------------------------------------ auxiliary (cl-mah)
_MNIST_LAYOUT = (("mnist", "MNIST", ("MyMNIST", "JoinedDataset")),)
_FMNIST_LAYOUT = (("fashion-mnist", "fashionMNIST", ()),)


def _clmah(dataset: str, *extra: str, buffer: int = 500) -> Args:
    def args(seed: int) -> list[str]:
        return [
            "--dataset",
            dataset,
            "--model",
            "derpp",
            "--buffer_size",
            str(buffer),
            "--load_best_args",
            "--seed",
            str(seed),
            "--device",
            "cpu",
            *extra,
        ]

    return args


def _ours(experiment: str, *overrides: str) -> Args:
    return lambda seed: [f"experiment={experiment}", *overrides]


_AUX_NAMES = {"fashionMNIST": "fmnist", "MNIST": "mnist"}
_AUX_LABELS = {
    "fashionMNIST": "Fashion-MNIST",
    "MNIST": "MNIST (the benchmark's own training images)",
}


def _aux_cases(buffer: int, aux_sets: tuple[str, ...]) -> tuple[Case, ...]:
    """DER++ alone and DER++ + each auxiliary set (official ``--dataset_2`` names) at ``buffer``."""
    base = Case(
        method="aux",
        name=f"derpp-{buffer}",
        label=f"DER++, buffer {buffer}",
        repo="perceivelab/cl-mah",
        official_args=_clmah("seq-mnist", buffer=buffer),
        our_overrides=_ours(f"future-seq-mnist/derpp-{buffer}"),
        launch_flags=("--no-plots", "--plain-eval-fix", "--csv-log"),
        layout=_MNIST_LAYOUT,
    )
    with_aux = tuple(
        Case(
            method="aux",
            name=f"derpp-aux-{_AUX_NAMES[aux]}-{buffer}",
            label=f"DER++ + auxiliary {_AUX_LABELS[aux]}, buffer {buffer}",
            repo="perceivelab/cl-mah",
            official_args=_clmah(
                "future-seq-mnist",
                *("--dataset_2", aux, "--next_heads", "most_activated"),
                *("--forward_dataset", "seq-mnist"),
                buffer=buffer,
            ),
            our_overrides=_ours(
                f"future-seq-mnist/derpp-aux-{buffer}",
                *(["strategy.auxiliary.dataset=mnist"] if aux == "MNIST" else []),
            ),
            launch_flags=("--no-plots", "--csv-log"),
            layout=_MNIST_LAYOUT + (_FMNIST_LAYOUT if aux == "fashionMNIST" else ()),
        )
        for aux in aux_sets
    )
    return (base, *with_aux)


AUX_CASES = _aux_cases(500, ("fashionMNIST", "MNIST")) + _aux_cases(200, ("fashionMNIST",))

# ------------------------------------------------------------------ WSCL (perceivelab/wscl)
_WSCL_ADAPTER = str(Path(__file__).resolve().parent / "adapters" / "wscl_fmnist.py")
_WSCL_COMMON = (
    "--model",
    "er_ace",
    "--buffer_size",
    "500",
    "--lr",
    "0.03",
    "--batch_size",
    "10",
    "--minibatch_size",
    "10",
    "--n_epochs",
    "2",
    "--device",
    "cpu",
    "--nowand",
    "1",
    "--non_verbose",
    "1",
)


def _wscl(*extra: str) -> Args:
    return lambda seed: [*_WSCL_COMMON, "--seed", str(seed), *extra]


_WSCL_FLAGS = ("--register", _WSCL_ADAPTER, "--threads", "1")
WSCL_CASES = (
    Case(
        method="wscl",
        name="erace",
        label="ER-ACE",
        repo="perceivelab/wscl",
        official_args=_wscl("--dataset", "seq-fmnist32", "--forward_dataset", "seq-fmnist32"),
        our_overrides=_ours("wscl-proxy/erace"),
        launch_flags=_WSCL_FLAGS,
    ),
    Case(
        method="wscl",
        name="erace-wscl",
        label="ER-ACE + WSCL (freezing + dreams)",
        repo="perceivelab/wscl",
        official_args=_wscl(
            "--dataset",
            "dream-seq-fmnist32",
            "--forward_dataset",
            "seq-fmnist32",
            "--freezing_eval",
            "training_and_buff",
            "--validation",
            "1",
            "--val_dataset_size",
            "40",
            "--freezing_buff_size",
            "20",
        ),
        our_overrides=_ours("wscl-proxy/erace-wscl"),
        launch_flags=_WSCL_FLAGS,
    ),
    Case(
        method="wscl",
        name="erace-wscl-reference",
        label="ER-ACE + WSCL, ours with the reference's scoring and adoption quirks",
        repo="perceivelab/wscl",
        official_args=None,
        our_overrides=_ours("wscl-proxy/erace-wscl-reference"),
    ),
)

# ------------------------------------------------------------------- SER (perceivelab/SER)
_SER_ADAPTER = str(Path(__file__).resolve().parent / "adapters" / "ser_fmnist.py")
_SER_COMMON = (
    "--buffer_size",
    "500",
    "--lr",
    "0.03",
    "--batch_size",
    "10",
    "--minibatch_size",
    "10",
    "--n_epochs",
    "1",
    "--device",
    "cpu",
    "--nowand",
    "1",
    "--non_verbose",
    "1",
)
# the SER README's ER-ACE + SER command, less its ImageNet-only flags (checkpoints, scheduler)
_SER_SALIENCY = (
    "--mnp",
    "multiply",
    "--mnp_blocks",
    *("1",) * 5,
    "--sal_lr",
    "0.005",
    "--sal_coeff",
    "1",
    "--sal_n_gaussians",
    "0",
)
# the proxy: 200 training / 100 test images per class, 3 channels (the official ResNet's stem)
_SER_OURS = (
    "scenario.source_options.channels=3",
    "scenario.source_options.max_train_per_class=200",
    "scenario.source_options.max_test_per_class=100",
)


def _ser(model: str, dataset: str, *extra: str) -> Args:
    return lambda seed: ["--model", model, "--dataset", dataset, *_SER_COMMON, *extra,
                         "--seed", str(seed)]  # fmt: skip


_SER_FLAGS = ("--register", _SER_ADAPTER, "--threads", "1", "--iter-next-fix")
SER_CASES = (
    Case(
        method="ser",
        name="erace",
        label="ER-ACE, buffer 500",
        repo="perceivelab/SER",
        official_args=_ser("er_ace", "seq-fmnist32"),
        our_overrides=_ours("seq-fashion-mnist/erace-500", *_SER_OURS),
        launch_flags=_SER_FLAGS,
    ),
    Case(
        method="ser",
        name="erace-ser",
        label="ER-ACE + SER (SAM), buffer 500",
        repo="perceivelab/SER",
        official_args=_ser("er_ace_ser", "seq-fmnist32sal", *_SER_SALIENCY),
        our_overrides=_ours("seq-fashion-mnist/erace-sam-500", *_SER_OURS),
        launch_flags=_SER_FLAGS,
    ),
)

METHODS: dict[str, tuple[Case, ...]] = {"aux": AUX_CASES, "wscl": WSCL_CASES, "ser": SER_CASES}
