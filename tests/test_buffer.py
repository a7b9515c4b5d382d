"""ReplayBuffer: statistical properties of the policies, exactness of the vectorised insert,
checkpoint round trip, sampling contract and errors.

Statistical tests use fixed seeds, so they are deterministic; their bounds are chosen so that a
correct implementation would fail them with probability about 1e-3 or less for a random seed.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from cl_framework.buffer import ReplayBuffer
from cl_framework.buffer.policies import reservoir_slots, water_fill
from cl_framework.errors import ConfigError

CHI2_9DOF_999 = 27.877  # 0.999 quantile of chi-square with 9 degrees of freedom
CHI2_4DOF_999 = 18.467  # 0.999 quantile of chi-square with 4 degrees of freedom


def subset_chi2(counts: np.ndarray, k: int, runs: int, n_buckets: int) -> tuple[float, float]:
    """Chi-square statistic and bucket-frequency std for ``runs`` uniform k-subsets of n items.

    Items are split into ``n_buckets`` equal consecutive buckets (by stream position). In one
    run, the bucket counts of a uniform k-subset are multivariate hypergeometric: the covariance
    is ``k * fpc * (diag(p) - p p^T)`` with ``p_b = 1 / n_buckets`` and the finite-population
    correction ``fpc = (n - k) / (n - 1)``, i.e. a multinomial covariance scaled by ``fpc``.
    Summed over independent runs, Pearson's ``sum (O - E)^2 / (E * fpc)`` is then asymptotically
    chi-square with ``n_buckets - 1`` degrees of freedom (one lost because each run holds exactly
    k items). Also returns the std of one bucket's mean per-item inclusion frequency.
    """
    n = counts.size
    fpc = (n - k) / (n - 1)
    observed = counts.reshape(n_buckets, -1).sum(axis=1)
    expected = runs * k / n_buckets
    chi2 = float(((observed - expected) ** 2).sum() / (expected * fpc))
    p = 1.0 / n_buckets
    bucket_var = runs * k * fpc * p * (1 - p)
    bucket_std_freq = math.sqrt(bucket_var) / (runs * n / n_buckets)
    return chi2, bucket_std_freq


def reservoir_inclusion(
    n_items: int, capacity: int, batch: int, runs: int, first_seed: int = 0
) -> np.ndarray:
    """How often each stream item ends up in the buffer, over ``runs`` seeds."""
    counts = np.zeros(n_items)
    for seed in range(first_seed, first_seed + runs):
        buf = ReplayBuffer(capacity, seed=seed)
        for start in range(0, n_items, batch):
            buf.add(id=torch.arange(start, min(start + batch, n_items)))
        ids = buf.all()["id"]
        assert len(buf) == capacity and ids.unique().numel() == capacity
        counts[ids.numpy()] += 1
    return counts


# --------------------------------------------------------------------------- reservoir


def test_reservoir_inclusion_probability_is_uniform() -> None:
    n, k, batch, runs = 1000, 100, 10, 400
    counts = reservoir_inclusion(n, k, batch, runs)
    freq = counts / runs
    p = k / n  # algorithm R keeps a uniform k-subset: every item with probability 0.1

    # Per item: Binomial(400, 0.1) / 400 has std sqrt(0.1 * 0.9 / 400) = 0.015. Over 1000
    # items, P(max |dev| > 5 std) ~ 1000 * 5.7e-7: a bias of this size would be a real bug.
    item_std = math.sqrt(p * (1 - p) / runs)
    assert np.abs(freq - p).max() < 5 * item_std
    assert freq.mean() == pytest.approx(p)  # exactly k per run

    # Ten position buckets of 100 items: chi-square with 9 dof (see subset_chi2) under the
    # p = 0.999 quantile; each bucket's mean frequency within 5 of its std
    # (sqrt(400 * 100 * 0.9009 * 0.1 * 0.9) / 40000 = 0.00142).
    chi2, bucket_std = subset_chi2(counts, k, runs, n_buckets=10)
    assert chi2 < CHI2_9DOF_999, chi2
    bucket_freq = counts.reshape(10, -1).mean(axis=1) / runs
    assert np.abs(bucket_freq - p).max() < 5 * bucket_std

    # Early vs late items: in one run, first-100 count a and last-100 count b have variance
    # 8.108 each and covariance -k * 0.01 * fpc = -0.901, so Var(a - b) = 18.02; over 400 runs
    # the difference of mean per-item frequencies has std sqrt(18.02 * 400) / 40000 = 0.00212.
    fpc = (n - k) / (n - 1)
    var_diff = runs * (2 * k * fpc * 0.1 * 0.9 + 2 * k * fpc * 0.01)
    std_diff = math.sqrt(var_diff) / (runs * 100)
    assert abs(freq[:100].mean() - freq[-100:].mean()) < 4 * std_diff


def test_reservoir_batch_of_one_and_of_ten_give_the_same_distribution() -> None:
    n, k, runs = 100, 10, 400
    # Independent seeds for the two settings, so that this compares two samples of the
    # distribution (with equal seeds they are identical, see the next test).
    one = reservoir_inclusion(n, k, batch=1, runs=runs, first_seed=0)
    ten = reservoir_inclusion(n, k, batch=10, runs=runs, first_seed=10_000)
    # Each is a uniform k-subset per run, so both bucket profiles should be flat and equal.
    for counts in (one, ten):
        chi2, _ = subset_chi2(counts, k, runs, n_buckets=10)
        assert chi2 < CHI2_9DOF_999, chi2
    # Difference of the two independent bucket profiles: each bucket count has variance
    # runs * k * fpc * 0.1 * 0.9 per setting, i.e. twice that for the difference; since both
    # totals are fixed, sum d^2 / (2 * runs * k * fpc * 0.1) is again ~ chi-square(9).
    fpc = (n - k) / (n - 1)
    diff = one.reshape(10, -1).sum(1) - ten.reshape(10, -1).sum(1)
    chi2_diff = float((diff**2).sum() / (2 * runs * k * fpc * 0.1))
    assert chi2_diff < CHI2_9DOF_999, chi2_diff
    # Mean inclusion of the first half: per run the first-half count is hypergeometric with
    # variance k * fpc * 0.25, so the difference of the two mean frequencies has std
    # sqrt(2 * runs * k * fpc * 0.25) / (runs * n / 2) = 0.0067; allow 4 std.
    half_std = math.sqrt(2 * runs * k * fpc * 0.25) / (runs * n / 2)
    assert abs(one[: n // 2].mean() - ten[: n // 2].mean()) / runs < 4 * half_std


def test_reservoir_result_does_not_depend_on_batching() -> None:
    # One uniform is drawn per offered row whatever the batch size, and colliding rows resolve
    # as in the sequential loop, so the same seed gives the same contents for any batching.
    contents = []
    for batch in (1, 7, 10, 250):
        buf = ReplayBuffer(25, seed=11)
        for start in range(0, 250, batch):
            buf.add(id=torch.arange(start, min(start + batch, 250)))
        contents.append(buf.all()["id"])
    assert all(torch.equal(contents[0], other) for other in contents[1:])


def test_reservoir_small_stream_exact_probabilities() -> None:
    # Capacity 2, stream of 4 items: each item must be kept with probability exactly 2/4. An
    # off-by-one draw (j ~ U{0..n-1} instead of U{0..n}) gives 1/3 to the first two items and
    # 2/3 to the last two, a bias that a long stream (about 1/N) hides.
    runs = 2000
    counts = np.zeros(4)
    for seed in range(runs):
        buf = ReplayBuffer(2, seed=seed)
        buf.add(id=torch.arange(0, 1))
        buf.add(id=torch.arange(1, 4))
        counts[buf.all()["id"].numpy()] += 1
    # Binomial(2000, 0.5) / 2000 has std 0.0112; 5 std = 0.056 is far below the 1/6 shift.
    assert np.abs(counts / runs - 0.5).max() < 5 * math.sqrt(0.25 / runs)


def sequential_reservoir(num_seen: int, capacity: int, uniforms: list[float]) -> list[int]:
    """Algorithm R one sample at a time (Mammoth's loop), on given uniforms."""
    out = [-1] * len(uniforms)
    owner: dict[int, int] = {}
    for row, u in enumerate(uniforms):
        n = num_seen + row
        slot = n if n < capacity else min(math.floor(u * (n + 1)), n)
        if slot >= capacity:
            continue
        if slot in owner:
            out[owner[slot]] = -1  # overwritten by this later row
        owner[slot] = row
        out[row] = slot
    return out


@pytest.mark.parametrize(
    ("num_seen", "capacity", "batch"), [(0, 5, 12), (3, 4, 64), (50, 3, 200), (0, 100, 30)]
)
def test_vectorised_reservoir_equals_sequential_algorithm(
    num_seen: int, capacity: int, batch: int
) -> None:
    gen = torch.Generator().manual_seed(capacity * 1000 + batch)
    for _ in range(20):
        uniforms = torch.rand(batch, generator=gen, dtype=torch.float64)
        got = reservoir_slots(num_seen, capacity, uniforms).tolist()
        assert got == sequential_reservoir(num_seen, capacity, uniforms.tolist())


def test_colliding_rows_in_one_batch_keep_the_later_row() -> None:
    # Crafted draws: capacity 4, 4 seen. Row 0 (n=4): floor(0.7 * 5) = 3; row 1 (n=5):
    # floor(0.99 * 6) = 5 -> dropped; row 2 (n=6): floor(0.5 * 7) = 3 -> overwrites row 0.
    slots = reservoir_slots(4, 4, torch.tensor([0.7, 0.99, 0.5], dtype=torch.float64))
    assert slots.tolist() == [-1, -1, 3]

    # End to end: capacity 1, so many rows of one batch draw slot 0. The buffer draws one
    # float64 uniform per offered row from its generator; a mirror generator shows which rows
    # hit slot 0, and the stored row must be the last of them.
    buf = ReplayBuffer(1, seed=3)
    mirror = torch.Generator().manual_seed(3)
    buf.add(x=torch.tensor([-1.0]))
    torch.rand(1, generator=mirror, dtype=torch.float64)
    returned = buf.add(x=torch.arange(64, dtype=torch.float32))
    uniforms = torch.rand(64, generator=mirror, dtype=torch.float64)
    n = torch.arange(64, dtype=torch.float64) + 1
    hits = (torch.floor(uniforms * (n + 1)) == 0).nonzero().squeeze(1)
    assert hits.numel() >= 2
    winner = int(hits[-1])
    assert returned.tolist() == [0 if row == winner else -1 for row in range(64)]
    assert buf.all()["x"].tolist() == [float(winner)]


def test_cpu_add_matches_the_vectorised_policy_and_stores_the_kept_rows() -> None:
    # The CPU path of ``add`` decides in scalar Python and skips the copies when no row is
    # kept; its slots must equal ``reservoir_slots`` on the same draws (a mirror generator),
    # and the storage must hold exactly the rows those slots name, field by field.
    capacity = 7
    buf = ReplayBuffer(capacity, seed=11)
    mirror = torch.Generator().manual_seed(11)
    expected_x = [None] * capacity
    expected_g = [None] * capacity
    seen, skipped = 0, 0
    for step in range(60):
        batch = 1 + step % 5
        x = torch.arange(seen, seen + batch, dtype=torch.float32).unsqueeze(1)
        g = torch.randn(batch, 2, requires_grad=True) * 1.0  # a non-leaf that needs detaching
        slots = buf.add(x=x, g=g)
        uniforms = torch.rand(batch, generator=mirror, dtype=torch.float64)
        assert slots.tolist() == reservoir_slots(seen, capacity, uniforms).tolist()
        skipped += int((slots < 0).all())
        for row, slot in enumerate(slots.tolist()):
            if slot >= 0:
                expected_x[slot], expected_g[slot] = float(x[row, 0]), g[row].tolist()
        seen += batch
    stored = buf.all()
    assert stored["x"].squeeze(1).tolist() == expected_x
    assert torch.allclose(stored["g"], torch.tensor(expected_g), rtol=0, atol=0)
    assert not stored["g"].requires_grad and skipped > 10  # the no-copy branch ran


# --------------------------------------------------------------------------- class_balanced


def imbalanced_stream(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 has 10x the samples of classes 1..4 (500 vs 50), in shuffled order."""
    labels = np.concatenate(
        [np.zeros(500, dtype=np.int64)] + [np.full(50, c) for c in (1, 2, 3, 4)]
    )
    order = np.random.default_rng(seed).permutation(labels.size)
    return torch.arange(labels.size), torch.from_numpy(labels[order])


def test_class_balanced_counts_stay_within_one() -> None:
    ids, labels = imbalanced_stream(seed=0)
    capacity, n_classes = 50, 5
    buf = ReplayBuffer(capacity, policy="class_balanced", seed=1)
    seen = np.zeros(n_classes, dtype=np.int64)
    for start in range(0, ids.numel(), 7):
        y = labels[start : start + 7]
        slots = buf.add(id=ids[start : start + 7], y=y)
        seen += np.bincount(y.numpy(), minlength=n_classes)
        stored = buf.all()
        held = np.bincount(stored["y"].numpy(), minlength=n_classes)
        top = held.max()
        assert held.sum() == min(seen.sum(), capacity) == len(buf)
        assert (held <= seen).all()
        # Balance: a class that has seen at least as many samples as the largest class holds
        # keeps within one of it; the others hold every sample they have seen.
        enough = seen >= top
        assert (held[enough] >= top - 1).all(), (seen, held)
        assert (held[~enough] == seen[~enough]).all(), (seen, held)
        not_full = held < seen
        if not_full.any():
            assert held[not_full].max() - held[not_full].min() <= 1
        # Content is consistent: unique ids, each stored with its own label.
        assert stored["id"].unique().numel() == len(buf)
        assert torch.equal(labels[stored["id"]], stored["y"])
        kept = slots >= 0
        assert torch.equal(buf.get(slots[kept])["id"], ids[start : start + 7][kept])
    # At the end every class has seen >= capacity / n_classes samples: exactly balanced.
    assert held.tolist() == [10] * n_classes


def test_class_balanced_subset_is_uniform_within_each_class() -> None:
    ids, labels = imbalanced_stream(seed=1)
    capacity, runs = 50, 300
    class_ids = [ids[labels == c] for c in range(5)]  # stream order within each class
    counts = np.zeros(ids.numel())
    for seed in range(runs):
        buf = ReplayBuffer(capacity, policy="class_balanced", seed=seed)
        for start in range(0, ids.numel(), 20):
            buf.add(id=ids[start : start + 20], y=labels[start : start + 20])
        counts[buf.all()["id"].numpy()] += 1
    # Final quotas: level L = 10 fills 5 * 10 = 50 exactly, so k_c = 10 for every class and
    # each item of class c should be kept with probability k_c / n_c (0.02 or 0.2).
    for c, members in enumerate(class_ids):
        n_c = members.numel()
        per_item = counts[members.numpy()]
        assert per_item.sum() == 10 * runs
        # Buckets by arrival order within the class (10 for class 0, 5 of 10 items otherwise);
        # chi-square as in the reservoir test, with 9 or 4 dof, under its 0.999 quantile.
        buckets = 10 if n_c == 500 else 5
        chi2, _ = subset_chi2(per_item, 10, runs, buckets)
        assert chi2 < (CHI2_9DOF_999 if buckets == 10 else CHI2_4DOF_999), (c, chi2)
        # Per item: Binomial(300, k_c / n_c) / 300, within 5 std of k_c / n_c.
        p = 10 / n_c
        assert np.abs(per_item / runs - p).max() < 5 * math.sqrt(p * (1 - p) / runs)


def test_water_fill_quota() -> None:
    seen = torch.tensor([500, 50, 50, 0, 3])
    held = torch.tensor([20, 12, 13, 0, 3])
    quota = water_fill(seen, 50, held)
    # Class 4 keeps its 3; 47 slots over three classes: L = 15, 2 left over, given to the
    # classes holding most now (classes 0 and 2).
    assert quota.tolist() == [16, 15, 16, 0, 3]
    assert water_fill(torch.tensor([4, 2]), 10, torch.tensor([4, 2])).tolist() == [4, 2]
    assert water_fill(torch.tensor([4, 2]), 0, torch.tensor([0, 0])).tolist() == [0, 0]
    # Closed-form level against a brute-force search on random count vectors.
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        seen = torch.randint(0, 40, (int(torch.randint(1, 8, (1,), generator=gen)),), generator=gen)
        capacity = int(torch.randint(0, 120, (1,), generator=gen))
        held = torch.randint(0, 10, seen.shape, generator=gen)
        quota = water_fill(seen, capacity, held)
        assert int(quota.sum()) == min(int(seen.sum()), capacity) and (quota <= seen).all()
        if int(seen.sum()) > capacity:
            level = max(
                lv for lv in range(capacity + 1) if int(seen.clamp(max=lv).sum()) <= capacity
            )
            assert torch.equal(
                quota - seen.clamp(max=level), (quota > seen.clamp(max=level)).long()
            )
            assert (quota[seen > level] >= level).all()


# --------------------------------------------------------------------------- checkpoints


def _check_plain(value: object) -> None:
    """Only tensors and plain python values, so weights_only loading works."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _check_plain(item)
    elif isinstance(value, list):
        for item in value:
            _check_plain(item)
    else:
        assert isinstance(value, torch.Tensor | int | float | str | bool), type(value)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_state_dict_round_trip_continues_identically(policy: str) -> None:
    gen = torch.Generator().manual_seed(0)

    def batch(size: int = 16) -> dict[str, torch.Tensor]:
        return {
            "x": torch.randint(0, 256, (size, 3, 4, 4), generator=gen, dtype=torch.uint8),
            "y": torch.randint(0, 6, (size,), generator=gen),
            "logits": torch.randn(size, 6, generator=gen),
        }

    original = ReplayBuffer(40, policy=policy, seed=7)
    for _ in range(5):
        original.add(**batch())
    original.sample(8)

    state = original.state_dict()
    _check_plain(state)
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    restored = ReplayBuffer(40, policy=policy, seed=123)  # seed is overwritten by the state
    restored.load_state_dict(torch.load(blob, weights_only=True))

    assert len(restored) == len(original) and restored.num_seen == original.num_seen
    for name in original.fields:
        assert torch.equal(restored.all()[name], original.all()[name])
    for _ in range(4):
        data = batch()
        assert torch.equal(original.add(**data), restored.add(**data))
        a = original.sample(10, exclude_labels=torch.tensor([0]))
        b = restored.sample(10, exclude_labels=torch.tensor([0]))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(original.all()[k], restored.all()[k]) for k in original.fields)


def test_load_state_dict_rejects_other_capacity() -> None:
    buf = ReplayBuffer(10)
    buf.add(x=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(20).load_state_dict(buf.state_dict())


# --------------------------------------------------------------------------- sampling contract


def filled_buffer(policy: str = "reservoir") -> ReplayBuffer:
    buf = ReplayBuffer(30, policy=policy, seed=5)
    images = torch.arange(50 * 2 * 2, dtype=torch.int64).reshape(50, 2, 2).remainder(256)
    buf.add(x=images.to(torch.uint8), y=torch.arange(50) % 5)
    return buf


def test_sample_is_without_replacement_and_keeps_dtype() -> None:
    buf = filled_buffer()
    for n in (1, 7, 30, 100):
        out = buf.sample(n)
        assert out["index"].numel() == min(n, len(buf))
        assert out["index"].unique().numel() == out["index"].numel()
        assert out["x"].dtype == torch.uint8 and out["x"].shape[1:] == (2, 2)
        assert torch.equal(out["x"], buf.get(out["index"])["x"])
    assert set(buf.sample(3, fields=["y"])) == {"y", "index"}
    assert buf.sample(0)["x"].shape == (0, 2, 2)


def test_sample_excludes_labels() -> None:
    for policy in ("reservoir", "class_balanced"):
        buf = filled_buffer(policy)
        eligible = int((~torch.isin(buf.all()["y"], torch.tensor([1, 3]))).sum())
        out = buf.sample(100, exclude_labels=torch.tensor([1, 3]))
        assert out["index"].numel() == eligible > 0
        assert not torch.isin(out["y"], torch.tensor([1, 3])).any()
        assert buf.sample(5, exclude_labels=torch.arange(5))["index"].numel() == 0


def test_fields_on_demand_and_update() -> None:
    buf = ReplayBuffer(10, seed=0)
    buf.add(x=torch.ones(4, 3), y=torch.arange(4))
    # A new field in add after entries exist: zero-filled for the older slots.
    buf.add(x=torch.ones(2, 3), y=torch.arange(2), logits=torch.full((2, 5), 2.0))
    assert buf.fields == ("x", "y", "logits")
    assert torch.equal(buf.all()["logits"][:4], torch.zeros(4, 5))
    assert torch.equal(buf.all()["logits"][4:], torch.full((2, 5), 2.0))
    # update() allocates an unknown field zero-filled, writes only the given slots; a repeated
    # slot keeps the last row, as sequential writes would.
    buf.update(torch.tensor([1, 3, 1]), mask=torch.tensor([[1], [2], [3]], dtype=torch.uint8))
    assert buf.all()["mask"].squeeze(1).tolist() == [0, 3, 0, 2, 0, 0]
    logits = torch.randn(2, 5, requires_grad=True)
    buf.update(torch.tensor([0, 5]), logits=logits)
    assert not buf.all()["logits"].requires_grad
    assert torch.equal(buf.get(torch.tensor([5]), ["logits"])["logits"], logits[1:].detach())


def test_buffer_leaves_global_rng_alone_and_capacity_zero() -> None:
    before = torch.get_rng_state()
    buf = ReplayBuffer(0)
    assert buf.add(x=torch.ones(5, 2)).tolist() == [-1] * 5
    assert buf.is_empty and len(buf) == 0 and buf.num_seen == 5
    assert buf.sample(4)["x"].shape == (0, 2)
    filled_buffer("class_balanced").sample(5)
    assert torch.equal(torch.get_rng_state(), before)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"buffer\.policy") as err:
        ReplayBuffer(10, policy="fifo")
    assert "reservoir" in str(err.value) and "class_balanced" in str(err.value)
    with pytest.raises(ConfigError, match=r"buffer\.size"):
        ReplayBuffer(-1)
    buf = ReplayBuffer(10)
    buf.add(x=torch.zeros(2, 3, dtype=torch.uint8), y=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="'x'"):
        buf.add(x=torch.zeros(2, 4, dtype=torch.uint8), y=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="'x'"):
        buf.add(x=torch.zeros(2, 3), y=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"missing field.*'y'"):
        buf.add(x=torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch size"):
        buf.add(x=torch.zeros(2, 3, dtype=torch.uint8), y=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="label field 'y'"):
        ReplayBuffer(10, policy="class_balanced").add(x=torch.zeros(2, 3))
    with pytest.raises(KeyError, match="logits"):
        buf.sample(2, fields=["logits"])
    with pytest.raises(IndexError):
        buf.get(torch.tensor([2]))
    with pytest.raises(ValueError, match="label field"):
        ReplayBuffer(10).sample(1, exclude_labels=torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_buffer_on_cuda() -> None:
    for policy in ("reservoir", "class_balanced"):
        buf = ReplayBuffer(20, policy=policy, device="cuda", seed=0)
        buf.add(x=torch.zeros(30, 2, dtype=torch.uint8), y=torch.arange(30) % 3)
        out = buf.sample(8, exclude_labels=torch.tensor([0]))
        assert all(t.device.type == "cuda" for t in out.values())
        state = buf.state_dict()
        again = ReplayBuffer(20, policy=policy, device="cuda")
        again.load_state_dict(state)
        assert torch.equal(again.sample(5)["index"], buf.sample(5)["index"])
        buf.to("cpu")
        assert buf.sample(3)["x"].device.type == "cpu" and len(buf) == 20


def test_replace_contents_holds_exactly_the_given_rows() -> None:
    """A plug-in-managed memory (iCaRL's herding): the buffer then holds those rows only, in
    order, and sampling draws from them; class_balanced refuses (its bookkeeping would lie)."""
    buf = ReplayBuffer(10)
    buf.add(x=torch.arange(8.0).unsqueeze(1), y=torch.arange(8))
    buf.replace_contents(x=torch.tensor([[100.0], [101.0], [102.0]]), y=torch.tensor([5, 6, 7]))
    assert len(buf) == 3 and buf.num_seen == 8
    assert buf.all(["y"])["y"].tolist() == [5, 6, 7]
    assert set(buf.sample(10, fields=["x"])["x"].squeeze(1).tolist()) == {100.0, 101.0, 102.0}
    with pytest.raises(ValueError, match="capacity"):
        buf.replace_contents(x=torch.zeros(11, 1), y=torch.zeros(11, dtype=torch.long))
    with pytest.raises(ValueError, match="missing"):
        buf.replace_contents(x=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="reservoir"):
        ReplayBuffer(4, policy="class_balanced").replace_contents(
            y=torch.zeros(1, dtype=torch.long)
        )
