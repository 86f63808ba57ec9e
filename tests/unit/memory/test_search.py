"""Budgeted plan search: Pareto set, successive halving, infeasible budgets, the chosen plan fits,
and the ``edgeadapt memory plan/estimate`` commands."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from edgeadapt.cli.main import main
from edgeadapt.data.calibration import calibration_batches
from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.memory.estimator import measure, predict, profile
from edgeadapt.memory.knobs import block_chain, split_batch
from edgeadapt.memory.plan import ADAPTATION_LOSS, LossTraits, MemoryPlan
from edgeadapt.memory.plan_file import load_plan, save_plan
from edgeadapt.memory.probes import Prober, departure_of
from edgeadapt.memory.search import enumerate_plans, pareto, race, search, successive_halving, update_class
from edgeadapt.models.registry import load_adapter


def test_pareto_keeps_exactly_the_undominated_plans_of_a_synthetic_table():
    # (bytes, seconds, frozen blocks)
    table = [
        (100, 1.0, 0),  # 0: cheapest in time at no freezing
        (80, 2.0, 0),   # 1: less memory, slower: a trade-off, kept
        (90, 2.5, 0),   # 2: dominated by 1 (more memory and slower)
        (80, 2.0, 0),   # 3: identical to 1: only the first is kept
        (60, 0.5, 2),   # 4: freezes more: dominates nothing at fewer frozen blocks, kept
        (70, 0.8, 2),   # 5: dominated by 4 (same freezing)
        (100, 1.0, 1),  # 6: as 0 but freezes more: dominated by 0
        (120, 0.9, 0),  # 7: more memory but faster than 0: kept
    ]
    assert pareto(table) == [True, True, False, False, True, False, False, True]
    assert pareto([]) == [] and pareto([(1, 1.0, 0)]) == [True]


def test_successive_halving_keeps_the_best_arm_of_synthetic_gains():
    # each arm's measured gain/s is its true rate plus noise that shrinks with the steps it had;
    # the best arm looks worse than two others after its first probe
    true = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 0.5, "e": 2.7, "f": 0.1, "g": 1.5}
    early = {"b": -1.3, "e": 0.4, "c": 0.9}
    pulls: list[tuple[str, int]] = []

    def pull(arm: str, steps: int) -> tuple[float]:
        pulls.append((arm, steps))
        return (true[arm] + early.get(arm, 0.0) * (2 / steps) ** 2,)

    best, seen = successive_halving(list(true), pull, first_steps=2)
    assert best == "b"
    # 7 arms at 2 steps, 4 at 4, 2 at 8; the last one is not pulled again
    assert [s for _, s in pulls] == [2] * 7 + [4] * 4 + [8] * 2
    assert {a for a, s in pulls if s == 8} == {"b", "e"}
    assert seen[list(true).index("f")][0] == 2 and seen[list(true).index("b")][0] == 8
    only, _ = successive_halving(["x"], lambda a, s: (0.0,))
    assert only == "x"
    with pytest.raises(ConfigError):
        successive_halving([], pull)


def _plateau(ceiling: float, rate: float):
    return lambda steps: ceiling * (1 - math.exp(-steps / rate))


def test_race_compares_the_gain_reached_over_the_horizon_not_an_early_slope():
    """Before: ranking by gain per second over probes of 2-16 steps always chose the frozen arm,
    whose cheap steps rise fast early but plateau lower."""
    # arm 0 trains every block: 20 ms a step, slow to rise, keeps rising to 0.8;
    # arm 1 freezes 2 blocks: 10 ms a step, quick to rise, plateaus at 0.5
    curves = [_plateau(0.8, 20.0), _plateau(0.5, 5.0)]
    seconds, frozen = [0.02, 0.01], [0, 2]
    pulls: list[tuple[int, int]] = []

    def pull(k: int, steps: int) -> tuple[float]:
        pulls.append((k, steps))
        return (curves[k](steps),)

    # a 20 s retraining: probed for a share of it (1 s each), at equal seconds the unfrozen arm is ahead
    best, reached = race(seconds, frozen, pull, horizon_seconds=20.0, max_probe_seconds=2.0)
    assert best == 0 and reached == {0: 50, 1: 100}
    assert curves[1](2) / 0.02 > 4 * curves[0](2) / 0.04  # the old rule's 2-step slope favours arm 1
    # a 60 ms retraining: the frozen arm buys more in it
    pulls.clear()
    best, reached = race(seconds, frozen, pull, horizon_seconds=0.06)
    assert best == 1 and reached == {0: 3, 1: 6} and pulls == [(0, 3), (1, 6)]
    # step-budgeted: equal steps; 300 steps favour arm 0, 3 steps arm 1
    assert race(seconds, frozen, pull, horizon_steps=300, max_probe_seconds=60.0)[0] == 0
    assert race(seconds, frozen, pull, horizon_steps=3)[0] == 1


def test_race_prefers_fewer_frozen_blocks_within_the_probe_noise_and_bounds_the_probes():
    gains = [0.50, 0.51, 0.60]  # arm 1 freezes 1 block and is ahead by less than the noise (0.02)
    frozen = [0, 1, 3]          # arm 2 freezes 3 blocks and is ahead by 0.10 > 3 * 0.02
    pulls: list[tuple[int, int]] = []

    def pull(k: int, steps: int) -> tuple[float]:
        pulls.append((k, steps))
        return (gains[k],)

    assert race([0.1, 0.1, 0.1], frozen, pull, horizon_steps=8, noise=0.02)[0] == 2
    assert race([0.1, 0.1, 0.1], frozen, pull, horizon_steps=8, noise=0.04)[0] == 0
    # 3 arms: rounds of 3 then 2 arms; the final probe is the horizon unless the cost bound cuts it
    pulls.clear()
    race([0.1, 0.2, 0.4], frozen, pull, horizon_steps=1000, max_probe_seconds=10.0)
    last = {k: steps for k, steps in pulls}  # steps are cumulative per arm
    cost = sum(steps * [0.1, 0.2, 0.4][k] for k, steps in last.items())
    assert 5.0 <= cost <= 10.0 + 0.7 and max(last.values()) < 1000  # within a step per arm of the bound
    with pytest.raises(ConfigError):
        race([0.1], [0], pull, horizon_steps=3, horizon_seconds=1.0)
    assert race([0.1], [0], pull, horizon_steps=30, min_steps=2) == (0, {0: 2})


def test_plans_with_the_same_updates_share_a_class():
    # checkpointing and accumulation change no update; freezing and BatchNorm statistics do
    plain = update_class(MemoryPlan(), 8, 4, has_bn=True)
    assert update_class(MemoryPlan(checkpoint_segments=2), 8, 4, has_bn=True) == plain
    assert update_class(MemoryPlan(micro_batch_size=4), 8, 4, has_bn=False) == plain
    assert update_class(MemoryPlan(micro_batch_size=4), 8, 4, has_bn=True) == (0, "frozen", 0)
    both = MemoryPlan(micro_batch_size=2, checkpoint_segments=1)
    assert update_class(both, 8, 4, has_bn=True) == (0, "frozen", 0)
    noisy = MemoryPlan(micro_batch_size=4, batchnorm="train")
    assert update_class(noisy, 8, 4, has_bn=True) == (0, "micro", 4)
    assert update_class(MemoryPlan(freeze_blocks=1), 8, 4, has_bn=False) != plain


def test_the_plan_space_is_divisors_by_freezing_by_segments():
    plans = enumerate_plans(3, 8)
    assert {p.micro_batch_size for p in plans} == {None, 4, 2, 1}
    assert len(plans) == 4 * (4 + 3 + 2 + 1)  # segments 0..trainable blocks for 0..3 frozen
    assert max(p.checkpoint_segments for p in plans if p.freeze_blocks == 1) == 2
    # a loss over the whole batch is never micro-batched
    assert {p.micro_batch_size for p in enumerate_plans(3, 8, ADAPTATION_LOSS)} == {None}
    with pytest.raises(ConfigError, match="at least 2"):
        enumerate_plans(3, 1, ADAPTATION_LOSS)


def _setup(name: str, batch_size: int = 8):
    adapter = load_adapter(name)
    train = calibration_batches(adapter, 3, batch_size)
    held = calibration_batches(adapter, 2, batch_size, split="test")
    prof = profile(adapter, train[0])
    return adapter, train, held, prof


def test_an_infeasible_budget_names_the_smallest_feasible_budget_and_its_plan():
    adapter, train, held, prof = _setup("tiny-resnet")
    plans = enumerate_plans(len(block_chain(adapter).blocks), 8)
    smallest = min(predict(prof, p).predicted_bytes for p in plans)
    with pytest.raises(InfeasibleError, match="smallest feasible budget") as info:
        search(adapter, smallest - 1, train, held, prof=prof)
    message = str(info.value)
    assert f"({smallest} bytes), reached by plan" in message
    named = MemoryPlan.model_validate_json(re.search(r"reached by plan [^(]*\((\{.*?\})\)", message).group(1))
    assert predict(prof, named).predicted_bytes == smallest
    with pytest.raises(ConfigError, match="positive"):
        search(adapter, "0MiB", train, held, prof=prof)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet"])
def test_the_chosen_plan_is_measured_within_the_budget_and_the_model_is_left_as_it_was(name):
    adapter, train, held, prof = _setup(name)
    budget = int(predict(prof, MemoryPlan()).predicted_bytes * 0.5)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    rng = torch.random.get_rng_state()
    result = search(adapter, budget, train, held, prof=prof, max_probes=4)
    chosen = result.chosen
    assert chosen.status == "chosen" and chosen in result.candidates
    assert chosen.predicted_bytes <= budget and chosen.measured_bytes <= budget
    assert abs(chosen.measured_bytes / chosen.predicted_bytes - 1) <= 0.05
    assert chosen.plan != MemoryPlan()  # the no-knob plan does not fit half its own peak
    probed = [c for c in result.candidates if c.probe_steps]
    assert 1 <= len(probed) <= 4 and all(c.measured_bytes is not None for c in probed)
    # one probe per class of plans with the same updates: its fastest predicted Pareto plan
    keys = [update_class(c.plan, 8, result.num_blocks, name == "tiny-resnet") for c in probed]
    assert len(set(keys)) == len(keys)
    for c, key in zip(probed, keys, strict=True):
        twins = [t for t in result.candidates if t.status.startswith("same updates as")
                 and update_class(t.plan, 8, result.num_blocks, name == "tiny-resnet") == key]
        assert all(t.step_seconds >= c.step_seconds for t in twins)
    assert all(c.predicted_bytes > budget for c in result.candidates if c.status == "over budget")
    assert result.metric == "accuracy" and result.planning_seconds <= 60
    assert torch.equal(torch.random.get_rng_state(), rng)
    after = adapter.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_probes_are_seeded_and_a_language_model_is_ranked_by_loss_decrease():
    adapter, train, held, prof = _setup("tiny-llama", batch_size=4)
    budget = int(predict(prof, MemoryPlan()).predicted_bytes * 0.75)
    runs = [search(adapter, budget, train, held, prof=prof, max_probes=2, probe_steps=1) for _ in range(2)]
    assert runs[0].metric == "loss decrease"
    gains = [[(c.plan, c.gain) for c in r.candidates if c.probe_steps] for r in runs]
    assert gains[0] == gains[1] and len(gains[0]) == 2
    assert all(g is not None for _, g in gains[0])


def test_cli_memory_plan_json_schema_and_saved_plan(tmp_path, capsys):
    saved = tmp_path / "plan.json"
    argv = ["memory", "plan", "tiny-resnet", "--budget", "1MiB", "--json", "--max-probes", "3",
            "--probe-batches", "2", "--eval-batches", "2", "--save", str(saved)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_bytes"] == 2**20
    assert out["plans"] and all({"predicted_bytes", "measured_bytes", "step_seconds"} <= set(p)
                                for p in out["plans"])
    assert out["chosen"] in out["plans"] and out["chosen"]["status"] == "chosen"
    assert out["chosen"]["measured_bytes"] <= out["budget_bytes"]
    assert load_plan(saved) == MemoryPlan(**out["chosen"]["plan"])
    assert main(["validate", str(saved)]) == 0
    assert "valid memory-plan config" in capsys.readouterr().out

    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(saved), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["predicted_bytes"] == pytest.approx(out["chosen"]["predicted_bytes"], rel=1e-3)
    assert set(est["breakdown"]) >= {"weights", "optimizer_state", "gradients", "activations", "workspace"}


def test_cli_memory_plan_prints_the_table_and_the_choice(capsys):
    assert main(["memory", "plan", "tiny-resnet", "--budget", "1MiB", "--max-probes", "2",
                 "--probe-batches", "2", "--eval-batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "predicted" in out and "measured" in out and "acc gain/s" in out
    assert re.search(r"^chosen: .* of the 1\.0 MiB budget", out, re.M)


def test_cli_memory_errors_exit_2_with_the_fix(tmp_path, capsys):
    assert main(["memory", "plan", "tiny-resnet", "--budget", "1KiB"]) == 2
    err = capsys.readouterr().err
    assert "smallest feasible budget is" in err and "reached by plan" in err
    assert main(["memory", "plan", "tiny-resnet", "--budget", "lots"]) == 2
    assert "16MiB" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("kind: train\nmodel: tiny-vit\n")
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(other)]) == 2
    assert "not a memory plan" in capsys.readouterr().err
    bad = save_plan(MemoryPlan(checkpoint_segments=9), tmp_path / "bad.json")
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(bad)]) == 2
    assert "checkpoint_segments" in capsys.readouterr().err


def test_cli_memory_estimate_on_a_plan_file_with_measurement(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("kind: memory-plan\nmicro_batch_size: 4\ncheckpoint_segments: 2\n")
    assert main(["memory", "estimate", "tiny-vit", "--plan", str(plan), "--measure", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["plan"]["micro_batch_size"] == 4 and est["step_seconds"] > 0
    assert abs(est["measured_bytes"] / est["predicted_bytes"] - 1) <= 0.05
    assert main(["memory", "estimate", "tiny-vit", "--plan", str(plan)]) == 0
    assert "predicted peak" in capsys.readouterr().out


def test_a_custom_loss_over_the_whole_batch_is_never_micro_batched_and_ranked_by_its_decrease():
    adapter, train, held, prof = _setup("tiny-vit")
    unlabelled = [{"pixel_values": b["pixel_values"]} for b in train]
    held = [{"pixel_values": b["pixel_values"]} for b in held]

    def entropy(a, batch):  # a TENT-like label-free loss, over the batch as a whole
        p = a.model(pixel_values=batch["pixel_values"]).logits.softmax(-1)
        return -(p * p.clamp_min(1e-9).log()).sum(-1).mean()

    traits = LossTraits("entropy", per_sample=False, min_samples=2)
    budget = int(predict(prof, MemoryPlan()).predicted_bytes * 0.75)
    result = search(adapter, budget, unlabelled, held, loss_fn=entropy, traits=traits, max_probes=2)
    assert result.metric == "loss decrease"
    assert all(c.plan.micro_batch_size is None for c in result.candidates)
    assert result.chosen.measured_bytes <= budget and result.chosen.gain is not None


def test_race_gives_arms_at_a_smaller_batch_equal_samples_over_a_step_horizon():
    # arm 1 runs batches of a quarter of the data's: 4 steps per data-batch step, each cheaper
    pulls: list[tuple[int, int]] = []

    def pull(k: int, steps: int) -> tuple[float]:
        pulls.append((k, steps))
        return (float(steps),)

    race([0.02, 0.006], [0, 0], pull, horizon_steps=10, max_probe_seconds=60.0, step_scale=[1.0, 4.0])
    assert pulls == [(0, 10), (1, 40)]
    with pytest.raises(ConfigError, match="step_scale"):
        race([0.02, 0.006], [0, 0], pull, horizon_steps=10, step_scale=[1.0])


def test_a_smaller_effective_batch_is_a_knob_predicted_and_measured_at_its_own_batch():
    """Before: search had no batch_sizes. Now plans at a smaller effective batch (several optimizer
    steps per data batch, no accumulation) are enumerated, predicted at their batch, compete on
    the Pareto set within their batch size, and are measured and probed on split batches."""
    adapter, train, held, prof = _setup("tiny-vit")
    budget = predict(prof, MemoryPlan(), 4).predicted_bytes  # no knobs fits at batch 4, not at 8
    result = search(adapter, budget, train, held, prof=prof, batch_sizes=[4, 2], max_probes=12,
                    horizon_steps=4)
    by = {(c.plan, c.batch_size): c for c in result.candidates}
    assert by[(MemoryPlan(), None)].status == "over budget"
    assert by[(MemoryPlan(), 4)].status not in ("over budget", "dominated")
    assert by[(MemoryPlan(), 4)].describe == "batch 4" and by[(MemoryPlan(), 2)].describe == "batch 2"
    assert {c.batch_size for c in result.candidates} == {None, 4, 2}
    probed = [c for c in result.candidates if c.probe_steps]
    assert {c.batch_size for c in probed} >= {4, 2}
    chosen = result.chosen
    assert chosen.predicted_bytes <= budget and chosen.measured_bytes <= budget
    assert result.batch_size == 8 and chosen.to_dict()["batch_size"] == chosen.batch_size
    rows = chosen.batch_size or 8
    real = measure(adapter, chosen.plan, split_batch(train[0], rows)[0]).total_bytes
    assert real == chosen.measured_bytes
    with pytest.raises(ConfigError, match="divide"):
        search(adapter, budget, train, held, prof=prof, batch_sizes=[3])


def test_the_freezing_margin_is_the_standard_error_at_the_accuracy_an_arm_reached():
    """Before: one margin per frozen block, the standard error at the *starting* accuracy (largest
    near 0.5); now the resolution of the accuracy each arm reached, smaller near convergence."""
    adapter, _, held, _ = _setup("tiny-resnet")
    prober = Prober(adapter, held, optimizer="adam", lr=1e-3, seed=0, loss_fn=None,
                    traits=LossTraits())
    n = prober.held
    assert n == sum(len(b["labels"]) for b in held)
    up = 0.9 - prober.base[0]  # a gain that reaches 90% accuracy
    assert prober.noise((up, 0.0)) == pytest.approx(math.sqrt(0.9 * 0.1 / n))
    assert prober.noise((1.0 - prober.base[0], 0.0)) == pytest.approx(1.0 / n)  # at least one sample
    # race takes the margin as a function of the score reached: at 0.5 the frozen arm's 0.05 lead
    # is within the margin, at 0.95 it is not
    def pull(k: int, steps: int) -> tuple[float]:
        return ((0.40, 0.45)[k],)

    def margin(score: tuple[float, ...]) -> float:
        return 0.06 if score[0] < 0.42 else 0.02

    assert race([0.1, 0.1], [0, 1], pull, horizon_steps=4, noise=0.06)[0] == 0
    assert race([0.1, 0.1], [0, 1], pull, horizon_steps=4, noise=margin)[0] == 1


def test_plans_that_change_the_training_depart_from_it_and_exact_reformulations_do_not():
    """Before: only frozen blocks counted against an arm, so a batch of 8 instead of 32 (noisier
    updates; tiny ViT ended 4 points lower after 15 s) raced the full batch with no margin."""
    assert departure_of(MemoryPlan(micro_batch_size=8, checkpoint_segments=2), 32, 32, 4, False) == 0
    assert departure_of(MemoryPlan(), 8, 32, 4, False) == 2  # two halvings of the batch
    assert departure_of(MemoryPlan(freeze_blocks=1), 16, 32, 4, False) == 2
    assert departure_of(MemoryPlan(micro_batch_size=4), 32, 32, 3, True) == 1  # BatchNorm frozen
    assert departure_of(MemoryPlan(), 32, 32, 3, True) == 0
