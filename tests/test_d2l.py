"""Dream2Learn: generator interface, prompt gradient, frozen generator, oracle, inventory,
dream heads through the head manager, exact resume, clf-pretrain-generator, configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_framework.build import build_runner
from cl_framework.engine.plugin import Batch
from cl_framework.errors import ConfigError, RunInterrupted
from cl_framework.generators import load_generator, match_shape
from cl_framework.generators.tiny_diffusion import (
    TinyDiffusion,
    TinyDiffusionConfig,
    checkpoint_payload,
)
from cl_framework.run_config import validate_run_config
from cl_framework.strategies.d2l import Dream2Learn
from cl_framework.strategies.d2l.dreaming import (
    DreamObjective,
    PromptSearch,
    classify,
    dream_loss,
    optimise_prompt,
)
from cl_framework.strategies.d2l.inventory import DreamClass, PromptInventory
from cl_framework.strategies.d2l.oracle import (
    ACCEPT,
    BUDGET,
    COLLAPSE,
    CONTINUE,
    DreamStats,
    FeatureRuleOracle,
    Oracle,
    build_oracle,
    fit_learned_oracle,
)
from cl_framework.strategies.d2l.plugin import OWNER
from cl_framework.train import run as train_run
from tests.conftest import CONF_DIR, compose_config

LIMIT = 15  # training batches per experience in the short real runs
FAULT = "extra_modules=[tests.fault_injection]"


def _tiny_generator(seed: int = 0) -> TinyDiffusion:
    torch.manual_seed(seed)
    cfg = TinyDiffusionConfig(base_channels=8, channel_mult=[1, 2], prompt_dim=16, emb_dim=32)
    return TinyDiffusion(cfg, sample_steps=2, class_names=[f"c{i}" for i in range(10)])


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> Path:
    """A randomly initialised tiny diffusion checkpoint (what clf-pretrain-generator writes)."""
    path = tmp_path_factory.mktemp("gen") / "tiny.pt"
    model = _tiny_generator()
    torch.save(checkpoint_payload(model, {"class_names": model.class_names}), path)
    return path


def _overrides(data_dir: Path, generator: Path, *extra: str) -> list[str]:
    return [
        "experiment=seq-mnist/erace-d2l-500",
        f"paths.data_dir={data_dir}",
        f"trainer.limit_train_batches={LIMIT}",
        f"strategy.d2l.generator.path={generator}",
        "strategy.d2l.search.max_steps=3",
        "strategy.d2l.search.refresh_steps=1",
        "strategy.d2l.search.samples_per_step=4",
        "strategy.d2l.images_per_class=20",
        "strategy.d2l.grid_per_class=2",
        *extra,
    ]


# --------------------------------------------------------------------------- generator
def test_tiny_generator_is_deterministic_per_seed_and_shapes_output():
    gen = _tiny_generator().freeze()
    prompt = gen.init_prompt(3, torch.Generator().manual_seed(0))
    assert torch.equal(prompt, gen.embedding.weight[3])
    a = gen.generate(prompt, 4, seed=11, out_shape=(1, 8, 8))
    b = gen.generate(prompt, 4, seed=11, out_shape=(1, 8, 8))
    c = gen.generate(prompt, 4, seed=12, out_shape=(1, 8, 8))
    assert a.shape == (4, 1, 8, 8) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    rgb = match_shape(torch.rand(2, 1, 28, 28), (3, 32, 32))
    assert rgb.shape == (2, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(ValueError, match="prompt of shape"):
        gen.generate(torch.zeros(5), 1, seed=0)
    random_prompt = gen.init_prompt(None, torch.Generator().manual_seed(0))
    mean_norm = gen.embedding.weight[:10].norm(dim=1).mean()
    assert float(random_prompt.norm()) == pytest.approx(float(mean_norm), rel=1e-5)


def test_denoising_loss_falls_when_training_on_real_fashion_mnist(real_data_dir):
    from cl_framework.scenarios import load_source

    source = load_source("fashion-mnist", real_data_dir)
    x = source.train_x[:256].float() / 255 * 2 - 1
    y = source.train_y[:256]
    gen = _tiny_generator()
    gen.train()
    opt = torch.optim.Adam(gen.parameters(), lr=3e-3)
    noise = torch.Generator().manual_seed(0)
    losses = []
    for step in range(60):
        idx = torch.arange(step * 32, step * 32 + 32) % 256
        loss = gen.loss(x[idx], y[idx], noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # the noise-prediction MSE of an untrained net is about 1 (predicting ~0 for unit noise)
    assert np.mean(losses[:5]) > 0.6
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_generator_file_errors_name_the_key(tmp_path, generator_file):
    with pytest.raises(ConfigError, match=r"strategy\.d2l\.generator\.path.*no generator"):
        load_generator({"backend": "tiny_diffusion", "path": str(tmp_path / "missing.pt")})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a loadable generator checkpoint"):
        load_generator({"backend": "tiny_diffusion", "path": str(bad)})
    foreign = tmp_path / "foreign.pt"
    torch.save({"backbone": {}}, foreign)
    with pytest.raises(ConfigError, match="not a tiny_diffusion checkpoint"):
        load_generator({"backend": "tiny_diffusion", "path": str(foreign)})
    with pytest.raises(ConfigError, match=r"generator\.backend"):
        load_generator({"backend": "nope", "path": str(generator_file)})
    with pytest.raises(ConfigError, match=r"options\.steps"):
        load_generator(
            {"backend": "tiny_diffusion", "path": str(generator_file), "options": {"steps": 3}}
        )
    gen = load_generator({"backend": "tiny_diffusion", "path": str(generator_file)})
    assert not any(p.requires_grad for p in gen.parameters()) and not gen.training


# ------------------------------------------------------------------------------ oracle
def _stats(**kw) -> DreamStats:
    base = dict(
        seen_similarity=0.5,
        dream_similarity=0.2,
        compactness=0.8,
        dream_prob=0.9,
        real_prob=0.05,
        progress=0.5,
    )
    return DreamStats(**{**base, **kw})


def test_feature_rule_oracle_decides_by_its_documented_rule():
    oracle = FeatureRuleOracle()
    assert oracle.decide(_stats(), step=3, max_steps=10) == ACCEPT
    assert oracle.decide(_stats(), step=1, max_steps=10) == CONTINUE  # before min_steps
    assert oracle.decide(_stats(real_prob=0.8), 3, 10) == CONTINUE  # still a seen class
    assert oracle.decide(_stats(seen_similarity=0.97), 3, 10) == CONTINUE  # not novel
    assert oracle.decide(_stats(dream_similarity=0.97), 3, 10) == CONTINUE  # duplicate dream
    assert oracle.decide(_stats(compactness=0.3), 3, 10) == CONTINUE  # incoherent
    assert oracle.decide(_stats(real_prob=0.8), 10, 10) == BUDGET
    assert oracle.decide(_stats(compactness=0.999), 3, 10) == COLLAPSE  # checked first
    assert oracle.decide(_stats(compactness=0.999), 1, 10) == CONTINUE  # nothing to revert to
    strict = FeatureRuleOracle(min_dream_prob=0.5)
    assert strict.decide(_stats(dream_prob=0.2), 3, 10) == CONTINUE
    assert strict.decide(_stats(dream_prob=0.6), 3, 10) == ACCEPT


def test_budget_oracle_never_stops_early():
    oracle = build_oracle({"name": "budget"})
    assert oracle.decide(_stats(), 3, 10) == CONTINUE
    assert oracle.decide(_stats(compactness=0.999), 3, 10) == CONTINUE
    assert oracle.decide(_stats(), 10, 10) == BUDGET


def test_learned_oracle_fits_saves_loads_and_stops(tmp_path):
    # label "stop" when the dream head is confident: the learned oracle must find the rule
    gen = torch.Generator().manual_seed(0)
    records, labels = [], []
    for _ in range(200):
        p = float(torch.rand(1, generator=gen))
        records.append(_stats(dream_prob=p).as_dict())
        labels.append(int(p > 0.5))
    path = tmp_path / "oracle.pt"
    fit_learned_oracle(records, labels, path, epochs=400)
    oracle = build_oracle({"name": "learned", "path": str(path)})
    assert oracle.decide(_stats(dream_prob=0.95), 2, 10) == ACCEPT
    assert oracle.decide(_stats(dream_prob=0.05), 2, 10) == CONTINUE
    assert oracle.decide(_stats(dream_prob=0.05), 10, 10) == BUDGET
    with pytest.raises(ConfigError, match=r"oracle\.path"):
        build_oracle({"name": "learned", "path": str(tmp_path / "none.pt")})
    with pytest.raises(ConfigError, match=r"oracle\.name"):
        build_oracle({"name": "psychic"})


# ----------------------------------------------------------------- prompt optimisation
@pytest.fixture(scope="module")
def built(tmp_path_factory, real_data_dir, generator_file):
    out = tmp_path_factory.mktemp("built")
    return build_runner(compose_config(_overrides(real_data_dir, generator_file)), out)


class _StopAt(Oracle):
    def __init__(self, step: int) -> None:
        self.step = step

    def decide(self, stats, step, max_steps):
        return ACCEPT if step >= self.step else CONTINUE


def test_gradient_reaches_the_prompt_only(built):
    module = built.module
    plugin = next(p for p in module.plugins if isinstance(p, Dream2Learn))
    gen = plugin.generator
    weights = {k: v.clone() for k, v in gen.state_dict().items()}
    start = gen.init_prompt(2, torch.Generator().manual_seed(0))
    module.zero_grad(set_to_none=True)
    result = optimise_prompt(
        module,
        gen,
        start,
        head=7,
        seen_heads=torch.tensor([0, 1]),
        seen_prototypes=torch.zeros(0),
        other_prototypes=torch.zeros(0),
        oracle=_StopAt(4),
        objective=DreamObjective(),
        search=PromptSearch(lr=0.1, samples_per_step=4),
        max_steps=10,
        seed=0,
        out_shape=(1, 28, 28),
    )
    assert result.steps == 4 and result.stop == ACCEPT  # the oracle stopped it at its step
    assert len(result.trace) == 4
    moved = (result.prompt - start).abs()
    assert float(moved.max()) > 0.05  # 3 Adam steps of lr 0.1 moved the prompt
    assert all(torch.equal(weights[k], v) for k, v in gen.state_dict().items())
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is None for p in module.parameters())  # the classifier is untouched
    # the gradient is the objective's: a small step against it lowers the loss at fixed noise
    module.eval()
    prompt = start.clone().requires_grad_(True)

    def objective(p: torch.Tensor) -> torch.Tensor:
        logits, features = classify(module, gen.generate(p, 8, seed=99, out_shape=(1, 28, 28)))
        return dream_loss(
            logits, features, 7, torch.tensor([0, 1]), torch.zeros(0), p, start, DreamObjective()
        )[0]

    (grad,) = torch.autograd.grad(objective(prompt), prompt)
    assert torch.isfinite(grad).all() and float(grad.norm()) > 0
    with torch.no_grad():
        step = 1e-2 * start.norm() * grad / grad.norm()
        assert (
            float(objective(start - step))
            < float(objective(start))
            < float(objective(start + step))
        )
    module.train()


def test_interpolation_dreams_mix_two_classes_without_optimisation(built):
    plugin = next(p for p in built.module.plugins if isinstance(p, Dream2Learn))
    plugin.cfg.init = "interpolation"
    try:
        dream = plugin._new_dream(head=9, experience=0, gen=torch.Generator().manual_seed(3))
    finally:
        plugin.cfg.init = "generator_class"
    table = plugin.generator.embedding.weight[:10]
    a = table[dream.source_class]
    # the prompt is the midpoint of the source class and exactly one other class
    other = 2 * dream.prompt - a
    assert sum(torch.allclose(other, e, atol=1e-6) for e in table) == 1
    result = optimise_prompt(
        built.module,
        plugin.generator,
        dream.prompt,
        9,
        torch.tensor([0, 1]),
        torch.zeros(0),
        torch.zeros(0),
        FeatureRuleOracle(),
        DreamObjective(),
        PromptSearch(),
        max_steps=0,
        seed=0,
        out_shape=(1, 28, 28),
    )
    assert result.steps == 0 and torch.equal(result.prompt, dream.prompt)


# ----------------------------------------------------------------------------- inventory
def test_inventory_regenerates_identical_samples_and_round_trips(generator_file):
    gen = load_generator({"backend": "tiny_diffusion", "path": str(generator_file)})
    inv = PromptInventory()
    prompt = gen.init_prompt(4, torch.Generator().manual_seed(0)) + 0.3
    inv.add(DreamClass(dream_id=0, prompt=prompt, seed=123, head=9, source_class=4, born=0))
    a = inv.regenerate(gen, inv.entries[0], 10, seed=5, out_shape=(1, 28, 28), chunk=4)
    b = inv.regenerate(gen, inv.entries[0], 10, seed=5, out_shape=(1, 28, 28), chunk=4)
    c = inv.regenerate(gen, inv.entries[0], 10, seed=6, out_shape=(1, 28, 28), chunk=4)
    assert a.dtype == torch.uint8 and a.shape == (10, 1, 28, 28)
    assert torch.equal(a, b) and not torch.equal(a, c)
    copy = PromptInventory()
    copy.load_state(inv.state())
    assert torch.equal(copy.regenerate(gen, copy.entries[0], 10, 5, (1, 28, 28), chunk=4), a)
    copy.retire(0, "test", 1)
    assert len(copy) == 0 and copy.retired[0]["head"] == 9 and copy.new_id() == 1


# ------------------------------------------------------------------------ short real runs
@pytest.fixture(scope="module")
def short_run(tmp_path_factory, real_data_dir, generator_file):
    """ER-ACE + D2L, LIMIT batches per experience; records heads and dream heads each time."""
    out = tmp_path_factory.mktemp("short")
    cfg = compose_config(_overrides(real_data_dir, generator_file, FAULT, "+strategy._fault={}"))
    runner = build_runner(cfg, out)
    plugin = next(p for p in runner.module.plugins if isinstance(p, Dream2Learn))
    weights = {k: v.clone() for k, v in plugin.generator.state_dict().items()}
    records: list[dict] = []
    assign = plugin.assign_heads

    def recording_assign(experience):
        before = plugin.ctx.heads.bindings(OWNER)[0].tolist()
        trained = plugin.trained_dream_heads(experience.index)
        assign(experience)
        heads = plugin.ctx.heads.heads_of(experience.classes).tolist()
        records.append(
            {
                "experience": experience.index,
                "dream_heads": before,
                "trained_dream_heads": trained,
                "heads": heads,
            }
        )

    plugin.assign_heads = recording_assign
    result = runner.run()
    return cfg, runner, plugin, result, records, weights


def test_generator_weights_bit_identical_after_the_run(short_run):
    _, _, plugin, _, _, weights = short_run
    after = plugin.generator.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_dream_heads_are_bound_and_reused_by_incoming_classes(short_run):
    _, runner, plugin, result, records, _ = short_run
    heads = runner.module.heads
    assert heads.n_heads == 10 + 4
    # experience 0 takes the lowest heads; the 4 dreams of episode 1 have not trained yet when
    # experience 1 arrives, so it takes plain free heads and leaves them alive; from experience
    # 2 on, the classes take dream heads that trained for at least one experience
    assert records[0]["heads"] == [0, 1] and records[0]["dream_heads"] == []
    first = records[1]
    assert len(first["dream_heads"]) == 4 and first["trained_dream_heads"] == []
    assert not set(first["heads"]) & set(first["dream_heads"])
    for rec in records[2:]:
        assert len(rec["dream_heads"]) == 4 and len(rec["trained_dream_heads"]) >= 2
        assert set(rec["heads"]) <= set(rec["trained_dream_heads"])
    # 4 episodes (none after the last experience); dream classes are retired when taken:
    # experiences 2, 3, 4 took two each, so the 2 dreamed after experience 4 are left
    assert len(plugin.episodes) == 4
    assert len(plugin.inventory) == 2 and {d.born for d in plugin.inventory} == {3}
    bound, classes = heads.bindings(OWNER)
    assert sorted(classes.tolist()) == sorted(d.dream_id for d in plugin.inventory)
    free = set(heads.free_heads().tolist())
    assert set(bound.tolist()) <= free
    assert len(plugin.inventory.retired) == 2 * 3
    # every retired dream had trained: dreamed after experience b, taken at experience >= b + 2
    assert all(r["experience"] >= r["born"] + 2 for r in plugin.inventory.retired)
    real_heads = set(heads.label_to_head.tolist())
    assert all(r["head"] in real_heads for r in plugin.inventory.retired)
    assert np.isfinite(result.class_il).all()


def test_dream_rows_join_batches_with_their_heads_but_never_the_buffer(short_run):
    _, runner, plugin, _, _, _ = short_run
    module = runner.module
    buffer = module.buffer
    assert buffer.num_seen == module.step_count * 10  # only the stream rows were offered
    dream_heads = set(plugin.ctx.heads.bindings(OWNER)[0].tolist())
    assert not dream_heads & set(buffer.all(["y"])["y"].tolist())
    pool = plugin.pool(torch.device("cpu"))
    assert len(pool.heads) == 2 * 20 and set(pool.heads.tolist()) == dream_heads
    x = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    batch = Batch(
        x=module.transform.train(x),
        y=torch.zeros(10, dtype=torch.long),
        t=torch.zeros(10, dtype=torch.long),
        x_raw=x,
        n_stream=10,
    )
    out = plugin.prepare_batch(batch)
    assert len(out.y) == 15 and out.n_stream == 10  # dream_ratio 0.5
    assert set(out.y[10:].tolist()) <= dream_heads


def test_outputs_record_every_episode_and_a_grid(short_run):
    _, runner, _, _, _, _ = short_run
    out = Path(runner.output_dir) / "dreams"
    summary = json.loads((out / "d2l.json").read_text())
    assert len(summary["episodes"]) == 4 and summary["dream_seconds"] > 0
    kinds = [d["kind"] for d in summary["episodes"][1]["dreams"]]  # none taken at experience 1
    assert kinds.count("refresh") == 4 and kinds.count("new") == 0
    kinds = [d["kind"] for d in summary["episodes"][2]["dreams"]]  # two taken at experience 2
    assert kinds.count("refresh") == 2 and kinds.count("new") == 2
    first = summary["episodes"][0]["dreams"][0]
    assert first["stop"] in (ACCEPT, BUDGET, COLLAPSE) and first["trace"]
    assert sorted(p.name for p in out.glob("*.png")) == [f"experience_{k}.png" for k in range(1, 5)]


def test_resume_after_an_interrupt_is_exact(
    short_run, tmp_path, real_data_dir, generator_file, monkeypatch
):
    cfg, _, _, result, _, _ = short_run
    broken = tmp_path / "broken"
    monkeypatch.setenv("CLF_FAULT", "interrupt")
    monkeypatch.setenv("CLF_FAULT_STEP", str(2 * LIMIT + 5))  # inside experience 3
    with pytest.raises(RunInterrupted):
        train_run(cfg, broken)
    monkeypatch.delenv("CLF_FAULT")
    again = _overrides(real_data_dir, generator_file, FAULT, "+strategy._fault={}")
    resumed = train_run(compose_config([*again, f"resume={broken}"]), broken)
    np.testing.assert_allclose(resumed["acc_matrix"]["class_il"], result.class_il, atol=1e-3)
    np.testing.assert_allclose(resumed["acc_matrix"]["task_il"], result.task_il, atol=1e-3)


# ----------------------------------------------------------------------- configs / errors
def test_experiment_configs_compose_and_validate():
    for name in ("seq-mnist/erace-500", "seq-mnist/erace-d2l-500", "seq-mnist/derpp-d2l-500"):
        rc = validate_run_config(compose_config([f"experiment={name}"]))
        assert rc.buffer.size == 500
    rc = validate_run_config(compose_config(["experiment=seq-mnist/erace-d2l-500"]))
    assert list(rc.strategy) == ["er_ace", "d2l"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.d2l.dream_classes=0", "strategy.d2l.dream_classes"),
        ("strategy.d2l.extra_heads=2", "strategy.d2l.extra_heads"),
        ("strategy.d2l.init=zero", "strategy.d2l.init"),
        ("strategy.d2l.search.max_steps=-1", "strategy.d2l.search"),
        ("+strategy.d2l.objective.beauty=1.0", "strategy.d2l.objective.beauty"),
        ("strategy.d2l.oracle.name=psychic", "strategy.d2l.oracle.name"),
        ("strategy.d2l.generator.path=/nonexistent/g.pt", "strategy.d2l.generator.path"),
    ],
)
def test_bad_d2l_config_fails_before_training(override, key, tmp_path, real_data_dir):
    cfg = compose_config(
        [
            "experiment=seq-mnist/erace-d2l-500",
            f"paths.data_dir={real_data_dir}",
            "strategy.d2l.generator.path=/nonexistent/g.pt",
            override,
        ]
    )
    with pytest.raises(ConfigError) as info:
        build_runner(cfg, tmp_path / "run")
    assert key in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_image_to_image_starts_from_the_given_images():
    gen = _tiny_generator().freeze()
    gen.img2img_strength = 0.5
    prompt = gen.init_prompt(1, torch.Generator().manual_seed(0)).requires_grad_(True)
    start = torch.rand(1, 1, 28, 28)
    images = gen.generate(prompt, 3, seed=0, init_images=start)
    assert images.shape == (3, 1, 28, 28)
    assert gen.timesteps(0.5) == gen.timesteps()[-1:]  # 2 steps x 0.5: only the last one
    (grad,) = torch.autograd.grad(images.mean(), prompt)
    assert float(grad.abs().sum()) > 0
    other = gen.generate(prompt.detach(), 3, seed=0, init_images=1 - start)
    assert not torch.equal(images.detach(), other)  # the start image matters


def test_clf_pretrain_generator_writes_a_loadable_frozen_generator(tmp_path, real_data_dir):
    from hydra import compose, initialize_config_dir

    from cl_framework.pretrain_generator import pretrain_generator
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "pretrain_generator",
            overrides=[
                "experiment=pretrain/generator-fashion-mnist",
                f"paths.data_dir={real_data_dir}",
                f"output={tmp_path}/g.pt",
                "training.epochs=1",
                "training.max_train_per_class=32",
                "training.batch_size=64",
                "model.base_channels=8",
                "model.channel_mult=[1,2]",
                "sampling.steps=2",
                "sampling.grid_per_class=2",
                "sampling.eval_per_class=2",
            ],
        )
    summary = pretrain_generator(cfg)
    assert summary["train_images"] == 320 and summary["source"] == "fashion-mnist"
    assert (tmp_path / "g.json").exists() and (tmp_path / "g_samples.png").exists()
    assert 0 <= summary["sample_accuracy"] <= 100
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    assert payload["meta"]["class_names"][0] == "T-shirt/top"
    gen = load_generator({"backend": "tiny_diffusion", "path": str(tmp_path / "g.pt")})
    assert gen.image_shape == (1, 28, 28) and gen.n_classes == 10
    with pytest.raises(ConfigError, match=r"data\.normalize"):
        from cl_framework.pretrain_generator import validate_generator_config

        validate_generator_config({**cfg, "data": {**cfg.data, "normalize": True}})


@pytest.mark.parametrize(
    "name",
    sorted(p.stem for p in (CONF_DIR / "experiment" / "d2l-paper").glob("[!_]*.yaml")),
)
def test_paper_configs_compose_validate_and_fail_only_at_the_data_step(name, tmp_path):
    from cl_framework.errors import DataError

    no_download = ["+scenario.source_options.download=false"] if "imagenet-r" in name else []
    cfg = compose_config(
        [f"experiment=d2l-paper/{name}", f"paths.data_dir={tmp_path}", *no_download]
    )
    rc = validate_run_config(cfg)
    assert rc.scenario.n_experiences == 10 and rc.backbone["name"] == "resnet18"
    assert rc.strategy["d2l"]["generator"]["backend"] == "diffusers"
    # a dream trains one experience before a real class may take it: with fewer dreams than
    # twice the incoming classes, every other experience would find no trained dream at all
    per_experience = (200 if "imagenet-r" in name else 100) // rc.scenario.n_experiences
    assert rc.strategy["d2l"]["dream_classes"] >= 2 * per_experience
    with pytest.raises(DataError):
        build_runner(cfg, tmp_path / "run")


def test_spare_heads_give_the_base_the_d2l_output_layer(tmp_path, real_data_dir):
    """The FWT control: the base gets D2L's 14 heads, and no class ever takes a spare one."""
    cfg = compose_config(
        [
            "experiment=seq-mnist/erace-500",
            "strategy=[er_ace,spare_heads]",
            f"paths.data_dir={real_data_dir}",
            "trainer.limit_train_batches=5",
        ]
    )
    runner = build_runner(cfg, tmp_path / "run")
    result = runner.run()
    heads = runner.module.heads
    assert heads.n_heads == 10 + 4
    module = runner.module.eval()
    assert module.predict_logits(torch.zeros(3, 1, 28, 28, dtype=torch.uint8)).shape == (3, 14)
    assert heads.label_to_head.tolist() == list(range(10))  # identity, spare heads unused
    assert set(heads.free_heads().tolist()) == {10, 11, 12, 13}
    assert np.isfinite(result.class_il).all()
    bad = compose_config(
        [
            "experiment=seq-mnist/erace-500",
            "strategy=[er_ace,spare_heads]",
            "strategy.spare_heads.count=-1",
            f"paths.data_dir={real_data_dir}",
        ]
    )
    with pytest.raises(ConfigError, match=r"spare_heads\.count"):
        build_runner(bad, tmp_path / "bad")


def test_seen_class_init_needs_the_benchmark_classes(tmp_path, real_data_dir, generator_file):
    """init=seen_class maps benchmark label c to generator class c: the same count is not enough
    (a Fashion-MNIST generator on Seq-MNIST started digit dreams from garments, unnoticed)."""
    cfg = compose_config(_overrides(real_data_dir, generator_file, "strategy.d2l.init=seen_class"))
    with pytest.raises(ConfigError, match=r"generator class 0 is 'c0', benchmark label 0 is '0'"):
        build_runner(cfg, tmp_path / "wrong")
    digits = tmp_path / "digits.pt"
    model = _tiny_generator()
    torch.save(checkpoint_payload(model, {"class_names": [str(d) for d in range(10)]}), digits)
    cfg = compose_config(_overrides(real_data_dir, digits, "strategy.d2l.init=seen_class"))
    runner = build_runner(cfg, tmp_path / "right")
    plugin = next(p for p in runner.module.plugins if isinstance(p, Dream2Learn))
    assert plugin.generator.class_names == [str(d) for d in range(10)]


def test_related_generator_setting_matches_its_base_and_builds(tmp_path, real_data_dir):
    """seq-fashion-mnist/erace-d2l-related-500 differs from its base only by D2L, and its
    seen-class start passes the class-name check with a Fashion-MNIST generator."""
    base = validate_run_config(compose_config(["experiment=seq-fashion-mnist/erace-mlp-500"]))
    related = validate_run_config(
        compose_config(["experiment=seq-fashion-mnist/erace-d2l-related-500"])
    )
    assert list(related.strategy) == ["er_ace", "d2l"] and list(base.strategy) == ["er_ace"]
    assert related.strategy["er_ace"] == base.strategy["er_ace"]
    assert related.scenario.source == base.scenario.source == "fashion-mnist"
    assert (related.buffer.size, related.backbone["name"]) == (base.buffer.size, "mlp")
    assert related.strategy["d2l"]["init"] == "seen_class" and related.strategy["d2l"]["img2img"]
    from cl_framework.scenarios.mnist import FASHION_MNIST

    gen = tmp_path / "fashion.pt"
    names = list(FASHION_MNIST.class_names)
    torch.save(checkpoint_payload(_tiny_generator(), {"class_names": names}), gen)
    cfg = compose_config(
        [
            "experiment=seq-fashion-mnist/erace-d2l-related-500",
            f"paths.data_dir={real_data_dir}",
            f"strategy.d2l.generator.path={gen}",
        ]
    )
    runner = build_runner(cfg, tmp_path / "run")
    assert runner.module.heads.n_heads == 14
