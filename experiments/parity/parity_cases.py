"""The parity cases: one official command and one of ours per row, for each method.

A :class:`Case` names the official repository it needs (``repo``), the arguments of its
``utils/main.py`` for a seed, the data layout to prepare in the checkout, and our Hydra
overrides for the same setting. The settings and their sources are argued in RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    setup: Callable[[], None] | None = None  # run once before either side (e.g. a checkpoint)
    official_of: str | None = None  # an ours-only variant: judged against this case's official
    judge: str = "class_il"  # the accuracy the parity verdict compares (task_il for PNN)

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

# --------------------------------------------------- TwF (aimagelab/mammoth models/twf.py)
# The checkout: Mammoth at 72c1947 (see adapters/twf_fmnist.py for why this commit).
_TWF_ADAPTER = str(Path(__file__).resolve().parent / "adapters" / "twf_fmnist.py")
_TWF_DIR = Path(__file__).resolve().parents[2] / "outputs" / "parity" / "twf"
TWF_SIBLING = _TWF_DIR / "mnist-resnet18-reduced.pt"  # ours (clf-pretrain)
TWF_LOADCHECK = _TWF_DIR / "mnist-resnet18-reduced.mammoth.pt"  # the same weights, Mammoth keys
# the offline comparison's scale (experiments/twf/RESULTS.md): 100 train / 100 test images per
# class, 2 epochs, batch 32, lr 0.1, Mammoth's best-config TwF coefficients
_TWF_OFFICIAL = (
    *("--model", "twf", "--dataset", "seq-fmnist32twf", "--buffer_size", "500"),
    *("--lr", "0.1", "--batch_size", "32", "--minibatch_size", "32", "--n_epochs", "2"),
    *("--der_alpha", "0.3", "--der_beta", "0.9", "--lambda_fp", "0.0005"),
    *("--lambda_diverse_loss", "0.1", "--lambda_fp_replay", "0.1"),
    *("--resize_maps", "1", "--min_resize_threshold", "16"),
    *("--loadcheck", str(TWF_LOADCHECK), "--num_workers", "0", "--non_verbose", "1"),
    *("--enable_other_metrics", "1"),
)
_TWF_OURS = (
    f"strategy.twf.sibling.path={TWF_SIBLING}",
    "trainer.epochs=2",
    "trainer.checkpoint=false",
    "scenario.source_options.max_train_per_class=100",
    "scenario.source_options.max_test_per_class=100",
)


def _twf_sibling() -> None:
    """Pre-train the MNIST sibling once (ours) and write its Mammoth-format copy."""
    import subprocess
    import sys

    import torch

    if not TWF_SIBLING.exists():
        TWF_SIBLING.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                str(Path(sys.executable).parent / "clf-pretrain"),
                "experiment=pretrain/mnist-resnet18-reduced",
                "+data.source_options.max_train_per_class=300",
                "+data.source_options.max_test_per_class=100",
                "training.epochs=2",
                f"output={TWF_SIBLING}",
                f"hydra.run.dir={TWF_SIBLING.parent / 'pretrain'}",
            ],
            check=True,
        )
    if not TWF_LOADCHECK.exists():
        state = torch.load(TWF_SIBLING, map_location="cpu", weights_only=True)["backbone"]
        # Mammoth's model-only loading (ignore_classifier=False) asserts a classifier in the
        # file: a fresh nn.Linear over the 10 classes (PyTorch's default init, seeded), as
        # our side's fresh heads; the sibling's MNIST head is not used on either side.
        width = state["bn1.weight"].numel()
        head = torch.nn.Linear(8 * width, 10)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            head.reset_parameters()
        state |= {f"classifier.{k}": v for k, v in head.state_dict().items()}
        torch.save(state, TWF_LOADCHECK)  # key names checked by the adapter at load time


_TWF_FLAGS = ("--register", _TWF_ADAPTER, "--threads", "1")
TWF_CASES = (
    Case(
        method="twf",
        name="twf-500",
        label="TwF, buffer 500 (ours: sibling BN in eval mode, our default)",
        repo="aimagelab/mammoth",
        official_args=lambda seed: [*_TWF_OFFICIAL, "--seed", str(seed)],
        our_overrides=_ours("seq-fashion-mnist/twf-500", *_TWF_OURS),
        launch_flags=_TWF_FLAGS,
        setup=_twf_sibling,
    ),
    Case(
        method="twf",
        name="twf-500-bn-train",
        label="TwF, buffer 500, ours with Mammoth's train-mode sibling BN",
        repo="aimagelab/mammoth",
        official_args=None,
        our_overrides=_ours(
            "seq-fashion-mnist/twf-500", *_TWF_OURS, "strategy.twf.teacher_bn=train"
        ),
        setup=_twf_sibling,
        official_of="twf-500",
    ),
)


# ------------------------------------------- DER-paper baselines (aimagelab/mammoth)
# Seq-MNIST with the Mammoth code behind the DER paper's Table 2 (its first public commit,
# 7ab9db9, 2020), its own dataset class and --load_best_args: the check of our A-GEM / GEM /
# iCaRL / SI ports, the paper's numbers being unreadable here.
def _mammoth_baseline(model: str, buffer: int | None) -> Args:
    def args(seed: int) -> list[str]:
        buf = ["--buffer_size", str(buffer)] if buffer is not None else []
        return [
            *("--dataset", "seq-mnist", "--model", model, *buf),
            *("--load_best_args", "--seed", str(seed)),
        ]

    return args


def _baseline_case(
    model: str, buffer: int | None, experiment: str, label: str, judge: str = "class_il"
) -> Case:
    return Case(
        judge=judge,
        method="baselines",
        name=experiment.split("/")[-1],
        label=label,
        repo="aimagelab/mammoth@7ab9db9",
        official_args=_mammoth_baseline(model, buffer),
        our_overrides=_ours(experiment, "trainer.checkpoint=false"),
        launch_flags=("--threads", "1", "--csv-log"),
        layout=_MNIST_LAYOUT,
    )


BASELINE_CASES = (
    _baseline_case("agem", 500, "seq-mnist/agem-500", "A-GEM, buffer 500"),
    _baseline_case("icarl", 500, "seq-mnist/icarl-500", "iCaRL, buffer 500"),
    Case(
        method="baselines",
        name="icarl-500-no-replay",
        label="iCaRL, buffer 500, ours without exemplar replay in training (the 2020 code's)",
        repo="aimagelab/mammoth@7ab9db9",
        official_args=None,
        our_overrides=_ours(
            "seq-mnist/icarl-500",
            "trainer.checkpoint=false",
            "strategy.icarl.replay_exemplars=false",
        ),
        layout=_MNIST_LAYOUT,
        official_of="icarl-500",
    ),
    _baseline_case("si", None, "seq-mnist/si", "SI"),
    _baseline_case("gem", 500, "seq-mnist/gem-500", "GEM, buffer 500"),
    _baseline_case("fdr", 500, "seq-mnist/fdr-500", "FDR, buffer 500"),
    _baseline_case("mer", 500, "seq-mnist/mer-500", "MER, buffer 500"),
    _baseline_case("gss", 500, "seq-mnist/gss-500", "GSS, buffer 500"),
    _baseline_case("hal", 500, "seq-mnist/hal-500", "HAL, buffer 500"),
    _baseline_case(
        "pnn",
        None,
        "seq-mnist/pnn-independent",
        "PNN, task-IL (ours without laterals, as the 2020 code runs)",
        judge="task_il",
    ),
)


# ------------------------------------------------------- X-DER (aimagelab/mammoth, current)
# Mammoth's current code (e75a491): the maintained xder / xder_ce. Its seq-mnist defaults to
# batch 64; --batch_size 10 gives the DER-paper protocol our configs use. Only xder_ce runs on
# Seq-MNIST (xder needs the dataset's denormalisation, which seq-mnist lacks): RESULTS.md.
XDER_REPO = "aimagelab/mammoth@e75a491"


def _xder_ce_official(seed: int) -> list[str]:
    return [
        *("--dataset", "seq-mnist", "--model", "xder_ce", "--buffer_size", "500"),
        *("--lr", "0.03", "--batch_size", "10", "--minibatch_size", "10"),
        *("--alpha", "1.0", "--beta", "0.5", "--constr_eta", "0.01"),
        *("--seed", str(seed), "--num_workers", "0", "--enable_other_metrics", "1"),
        *("--non_verbose", "1"),
    ]


XDER_CASES = (
    Case(
        method="xder",
        name="xder-ce-500",
        label="X-DER without SupCon (xder_ce), buffer 500",
        repo=XDER_REPO,
        official_args=_xder_ce_official,
        our_overrides=_ours("seq-mnist/xder-ce-500", "trainer.checkpoint=false"),
        launch_flags=("--threads", "1"),
        layout=_MNIST_LAYOUT,
    ),
)


def _gdumb_official(seed: int) -> list[str]:
    return [
        *("--dataset", "seq-mnist", "--model", "gdumb", "--buffer_size", "500"),
        *("--batch_size", "10", "--seed", str(seed), "--num_workers", "0"),
        *("--enable_other_metrics", "1", "--non_verbose", "1"),
    ]


# GDumb is not in the 2020 code; Mammoth's current gdumb with its defaults (maxlr 0.05, minlr
# 5e-4, 256 epochs, CutMix alpha 1 with probability 0.5, momentum 0, no clipping, reservoir
# memory, one fit after the last task), batch 10 (the fit's batch is the stream's). Ours: the
# same values through the strategy's keys.
GDUMB_CASES = (
    Case(
        method="gdumb",
        name="gdumb-500-mammoth",
        label="GDumb, buffer 500, Mammoth's learner and reservoir memory",
        repo=XDER_REPO,
        official_args=_gdumb_official,
        our_overrides=_ours(
            "seq-mnist/gdumb-500",
            "trainer.checkpoint=false",
            "buffer.policy=reservoir",
            "strategy.gdumb.fit_every_experience=false",
            "strategy.gdumb.batch_size=10",
            "strategy.gdumb.momentum=0.0",
            "strategy.gdumb.weight_decay=0.0",
            "strategy.gdumb.clip_grad_norm=0.0",
        ),
        launch_flags=("--threads", "1"),
        layout=_MNIST_LAYOUT,
    ),
)

METHODS: dict[str, tuple[Case, ...]] = {
    "baselines": BASELINE_CASES,
    "xder": XDER_CASES,
    "gdumb": GDUMB_CASES,
    "aux": AUX_CASES,
    "wscl": WSCL_CASES,
    "ser": SER_CASES,
    "twf": TWF_CASES,
}
