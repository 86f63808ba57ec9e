"""Iterative pruning (``iterative_steps``): one step is today's one-shot plan, k steps reach exactly the
one-shot budget (unit counts, parameter share), every step after the first ranks units by the scores of
the *shrunken* model, and the plans compose into one base-relative plan that rebuilds the same model."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.budget import lift, prune_to_param_sparsity, prune_to_unit_sparsity, schedule
from edgeadapt.pruning.checkpoint import load_pruned, save_pruned
from edgeadapt.pruning.importance import score
from edgeadapt.pruning.plan import BlockPlan, PruningPlan
from edgeadapt.pruning.prune import prune
from edgeadapt.pruning.select import select
from tests.conftest import make_batches, outputs


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def widths(plan: PruningPlan) -> list[tuple[int, int, int]]:
    return [(b.index, len(plan.kept_heads(b)), len(plan.kept_neurons(b))) for b in plan.blocks]


@pytest.fixture(scope="module")
def llama():
    adapter = load_adapter("tiny-llama")  # 2 layers, 2 KV groups, FFN 128
    return adapter, make_batches(adapter, n=2, size=4, length=16)


@pytest.fixture(scope="module")
def bert():
    adapter = load_adapter("tiny-bert")  # 2 layers, 4 heads, FFN 128
    return adapter, make_batches(adapter, n=2, size=4, length=16)


def counting(importance: str, batches):
    """A rescore callable that records the unit counts of every model it scores."""
    seen: list[list[tuple[int, int]]] = []

    def rescore(a):
        seen.append([(b.attention.num_units, b.mlp.width) for b in a.blocks()])
        return score(a, importance, batches)

    return rescore, seen


def test_schedule_is_linear_and_ends_exactly_on_the_target():
    assert schedule(0.3, 3) == pytest.approx([0.1, 0.2, 0.3])
    assert schedule(0.3, 3)[-1] == 0.3 and schedule(0.7, 7)[-1] == 0.7
    assert schedule(0.5, 1) == [0.5]


@pytest.mark.parametrize("targets", [["heads", "neurons"], ["layers", "neurons"]])
def test_one_step_is_the_one_shot_plan(bert, targets):
    dense, batches = bert
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    plan = prune(a, targets, "taylor", batches, unit_sparsity=0.5, iterative_steps=1)
    for kind in targets:  # today's algorithm, spelled out: score, select, apply, per kind
        apply_plan(b, select(b, score(b, "taylor", batches), kind, 0.5))
    assert plan.to_dict() == b.plan.to_dict()


@pytest.mark.parametrize("budget", ["unit", "param"])
def test_budget_functions_with_one_step_never_rescore(llama, budget):
    dense, batches = llama
    fn = prune_to_unit_sparsity if budget == "unit" else prune_to_param_sparsity
    scores = score(dense, "taylor", batches)
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    rescore, seen = counting("taylor", batches)
    one = fn(a, 0.4, ["heads", "neurons"], scores, iterative_steps=1, rescore=rescore)
    ref = fn(b, 0.4, ["heads", "neurons"], scores)
    assert seen == [] and one.plan.to_dict() == ref.plan.to_dict()


@pytest.mark.parametrize("scope", ["uniform", "global"])
@pytest.mark.parametrize("targets", [["heads", "neurons"], ["layers", "neurons"]])
def test_unit_budget_in_k_steps_removes_exactly_the_one_shot_counts(bert, scope, targets):
    dense, batches = bert
    scores = score(dense, "taylor", batches)
    one = prune_to_unit_sparsity(copy.deepcopy(dense), 0.5, targets, scores, scope=scope)
    a = copy.deepcopy(dense)
    rescore, seen = counting("taylor", batches)
    it = prune_to_unit_sparsity(a, 0.5, targets, scores, scope=scope, iterative_steps=4, rescore=rescore)
    assert len(seen) == 3  # re-scored before steps 2, 3 and 4
    if scope == "uniform":
        assert widths(it.plan) == [(i, h, n) for i, h, n in widths(one.plan)]
    assert (sum(w[1] for w in widths(it.plan)), sum(w[2] for w in widths(it.plan)), len(it.plan.blocks)) == \
        (sum(w[1] for w in widths(one.plan)), sum(w[2] for w in widths(one.plan)), len(one.plan.blocks))
    assert params(a) == one.params_after and it.unit_sparsity == one.unit_sparsity


@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_param_budget_in_k_steps_hits_the_one_shot_share_and_rescores_shrunken_models(llama, scope):
    dense, batches = llama
    scores = score(dense, "fisher", batches)
    one = prune_to_param_sparsity(copy.deepcopy(dense), 0.3, ["heads", "neurons"], scores, scope=scope)
    a = copy.deepcopy(dense)
    rescore, seen = counting("fisher", batches)
    it = prune_to_param_sparsity(a, 0.3, ["heads", "neurons"], scores, scope=scope, iterative_steps=3,
                                 rescore=rescore)
    assert it.param_sparsity == one.param_sparsity and it.unit_sparsity == one.unit_sparsity
    assert params(a) == one.params_after
    assert len(seen) == 2 and all(sum(n for _, n in s) < 2 * 128 for s in seen)  # scored shrunken models


def test_steps_after_the_first_rank_by_the_rescored_model_and_compose_on_the_base(llama, tmp_path):
    """Dense scores rank neuron n by n (0..31 go first); the re-scores rank by *descending current
    position*, so step 2 must remove the 32 highest base indices: 32..95 stay. One shot keeps 64..127."""
    dense, batches = llama
    blocks = dense.blocks()
    scores = {"heads": [torch.ones(b.attention.num_units) for b in blocks],
              "neurons": [torch.arange(128.0) for _ in blocks], "layers": [torch.ones(len(blocks))]}

    def rescore(a):
        return {"heads": [torch.ones(b.attention.num_units) for b in a.blocks()],
                "neurons": [-torch.arange(float(b.mlp.width)) for b in a.blocks()],
                "layers": [torch.ones(len(a.blocks()))]}

    a = copy.deepcopy(dense)
    out = prune_to_unit_sparsity(a, 0.5, ["neurons"], scores, iterative_steps=2, rescore=rescore)
    assert [out.plan.kept_neurons(b) for b in out.plan.blocks] == [list(range(32, 96))] * 2
    one = prune_to_unit_sparsity(copy.deepcopy(dense), 0.5, ["neurons"], scores)
    assert [one.plan.kept_neurons(b) for b in one.plan.blocks] == [list(range(64, 128))] * 2
    # the composed plan is relative to the base: applied to a fresh dense copy it rebuilds the same model
    batch = batches[0]
    rebuilt = apply_plan(copy.deepcopy(dense), PruningPlan.from_dict(a.plan.to_dict()))
    torch.testing.assert_close(outputs(rebuilt, batch), outputs(a, batch), atol=0, rtol=0)
    save_pruned(a, tmp_path)
    torch.testing.assert_close(outputs(load_pruned(tmp_path), batch), outputs(a, batch), atol=0, rtol=0)


@pytest.mark.parametrize("budget", [{"unit_sparsity": 0.5}, {"param_sparsity": 0.3}])
def test_prune_in_k_steps_keeps_the_budget_and_rebuilds_from_the_base(bert, budget):
    dense, batches = bert
    one, it = copy.deepcopy(dense), copy.deepcopy(dense)
    p1 = prune(one, ["heads", "neurons"], "taylor", batches, **budget)
    pk = prune(it, ["heads", "neurons"], "taylor", batches, iterative_steps=3, **budget)
    assert widths(pk) == widths(p1) and params(it) == params(one)
    rebuilt = apply_plan(copy.deepcopy(dense), pk)
    torch.testing.assert_close(outputs(rebuilt, batches[0]), outputs(it, batches[0]), atol=0, rtol=0)


def test_prune_in_k_steps_counts_from_an_already_pruned_model(llama):
    dense, batches = llama
    a = copy.deepcopy(dense)
    prune(a, ["neurons"], "magnitude", unit_sparsity=0.25)  # 128 -> 96
    prune(a, ["neurons", "heads"], "taylor", batches, unit_sparsity=0.5, iterative_steps=3)  # 96 -> 48
    assert [(h, n) for _, h, n in widths(a.plan)] == [(1, 48), (1, 48)]


def test_lift_marks_removed_units_and_layers_minus_infinity():
    arch = {"model_type": "x", "num_layers": 3, "hidden_size": 8, "num_heads": 2, "num_kv_heads": 2,
            "ffn_width": 4}
    dense = PruningPlan.dense(arch)
    now = PruningPlan(arch, [BlockPlan(0, None, [1, 3]), BlockPlan(2, [1], None)])
    scores = {"layers": [torch.tensor([5.0, 7.0])], "heads": [torch.tensor([1.0, 2.0]), torch.tensor([3.0])],
              "neurons": [torch.tensor([10.0, 30.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])]}
    up = lift(scores, now, dense)
    inf = float("-inf")
    assert up["layers"][0].tolist() == [5.0, inf, 7.0]
    assert up["neurons"][0].tolist() == [inf, 10.0, inf, 30.0] and up["neurons"][1].tolist() == [inf] * 4
    assert up["heads"][2].tolist() == [inf, 3.0]
    assert lift(scores, now, now)["neurons"][0].tolist() == [10.0, 30.0]


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "2"])
def test_bad_iterative_steps_are_refused(llama, steps):
    dense, batches = llama
    with pytest.raises(ConfigError, match="iterative_steps"):
        prune(copy.deepcopy(dense), ["neurons"], "taylor", batches, unit_sparsity=0.5, iterative_steps=steps)


@pytest.mark.parametrize("fn", [prune_to_unit_sparsity, prune_to_param_sparsity])
def test_more_than_one_step_needs_a_rescore(llama, fn):
    dense, batches = llama
    with pytest.raises(ConfigError, match="rescore"):
        fn(copy.deepcopy(dense), 0.3, ["neurons"], score(dense, "taylor", batches), iterative_steps=2)


def test_llm_prune_config_exposes_iterative_steps_and_the_sweep_stays_one_shot(llama):
    from edgeadapt.config import parse_config
    from edgeadapt.llm.pipeline import prune_to_budget

    dense, batches = llama
    cfg = parse_config({"kind": "llm-prune", "model": "tiny-llama", "param_sparsity": 0.3,
                        "targets": ["neurons"], "pruning": {"iterative_steps": 3}})
    assert cfg.pruning.iterative_steps == 3
    assert parse_config({"kind": "llm-prune", "model": "tiny-llama", "param_sparsity": 0.3}
                        ).pruning.iterative_steps == 1
    with pytest.raises(ConfigError):
        parse_config({"kind": "llm-prune", "model": "tiny-llama", "param_sparsity": 0.3,
                      "pruning": {"iterative_steps": 0}})
    scores = score(dense, "taylor", batches)
    rescore, seen = counting("taylor", batches)
    one = prune_to_budget(cfg, copy.deepcopy(dense), scores)  # no rescore: one shot (the sweep)
    it = prune_to_budget(cfg, copy.deepcopy(dense), scores, rescore=rescore)
    assert len(seen) == 2 and it.param_sparsity == one.param_sparsity
