"""Typos on the command line fail inside Hydra's composition: they must still get our message
(the key, the fix, the valid keys or choices) and exit 2, never Hydra's "not in struct" (exit 1),
and the ``+`` that Hydra suggests must not silently enable a strategy that is not selected."""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_clf_train

CASES = [
    (
        ["strategy.derpp.alpah=1"],
        "config key 'strategy.derpp.alpah': unknown key. Fix: valid keys are: alpha, beta, "
        "minibatch_size",
    ),
    (["trainer.epoch=2"], "config key 'trainer.epoch': unknown key. Fix: valid keys are: epochs,"),
    (
        ["scenario.random_resized_crop.sizee=3"],
        "valid keys are: size, scale, ratio",
    ),
    (["strategy=[nosuch]"], "config key 'strategy': unknown choice 'nosuch'"),
    (["strategy=nosuch"], "valid choices are: agem, agem_r, auxiliary, d2l, der"),
    (["experiment=seq-mnist/nosuch"], "valid choices are: seq-mnist/agem-200, seq-mnist/agem-500"),
    (
        ["strategy=[er]", "strategy.derpp.alpha=1"],
        "'strategy.derpp': this strategy is not selected",
    ),
    (
        ["+strategy.ewc_on.e_lambda=10"],
        "would enable strategy 'ewc_on', which the run does not select (selected: ['derpp'])",
    ),
    (["+strategy.derpp.alpha=1"], "'strategy.derpp.alpha': already exists; '+' only adds new"),
    (["trainer.epochs==2"], "'trainer.epochs==2': cannot parse this override"),
]


@pytest.mark.parametrize(("overrides", "expected"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_typo_gets_our_message_and_exit_2(tmp_path, overrides, expected):
    env = {**os.environ, "HYDRA_FULL_ERROR": ""}
    proc = run_clf_train(tmp_path, *overrides, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("clf-train: config key '"), proc.stderr
    assert expected in proc.stderr
    assert "not in struct" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_section_keys_come_from_the_schemas():
    """The valid keys an unknown-key message lists are the schema fields of that section."""
    from cl_framework.cli_errors import section_keys

    assert section_keys(["strategy", "derpp"]) == ["alpha", "beta", "minibatch_size"]
    assert section_keys(["strategy", "nosuch"]) is None
    assert "epochs" in section_keys(["trainer"])
    assert "seed" in section_keys([])
