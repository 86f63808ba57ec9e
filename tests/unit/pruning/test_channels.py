"""CNN channel pruning through torch-pruning's dependency graph: exact, deterministic, saved and reloaded."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgeadapt.cli.main import main
from edgeadapt.errors import ArtifactError, ConfigError, InfeasibleError, PlanError
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.channel_plan import ChannelGroup, ChannelPlan
from edgeadapt.pruning.channels import (
    apply_channel_plan,
    channel_scores,
    dependency_graph,
    prunable_groups,
    prune_channels,
    select_channels,
)
from edgeadapt.pruning.checkpoint import load_model, save_pruned
from edgeadapt.pruning.plan import PruningPlan
from tests.conftest import make_batches

CNNS = ["tiny-resnet", "tiny-regnet", "tiny-mobilenetv2", "tiny-mobilevit"]


def _params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


@pytest.mark.parametrize("name", CNNS)
def test_pruning_shrinks_every_tiny_cnn_and_it_still_runs(name):
    adapter = load_adapter(name)
    batch = make_batches(adapter, n=1)[0]
    before = _params(adapter)
    plan = prune_channels(adapter, "magnitude", unit_sparsity=0.3)
    assert _params(adapter) < 0.8 * before
    assert adapter.logits(batch).shape == (4, 10)
    assert adapter.plan is plan or adapter.plan.to_dict() == plan.to_dict()
    assert plan.architecture == adapter.fingerprint() and not plan.is_dense()
    loss = adapter.task_loss(batch)
    loss.backward()  # the shrunken model trains
    assert all(p.grad is not None for p in adapter.model.parameters() if p.requires_grad)


def warm(adapter) -> dict[str, torch.Tensor]:
    """A batch, after resetting every BatchNorm to unit scale and that batch's statistics:
    random-init MobileNetV2/MobileViT (unit running variance; MobileViT's BatchNorm scales drawn
    near 0.02) shrink activations to ~0, which would make any output comparison pass."""
    batch = make_batches(adapter, n=1, size=8)[0]
    for m in adapter.model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.momentum = None  # cumulative average: one pass sets the batch's statistics
    adapter.model.train()
    with torch.no_grad():
        adapter.logits(batch)
    adapter.model.eval()
    assert adapter.logits(batch).std(0).mean() > 1e-3
    return batch


def _channels_of(group) -> list[int]:
    return list(range(len(group[0].idxs)))


def _zero(graph, group, channels: set[int]) -> None:
    """Zero every weight slice the group's ``channels`` own, in every member of the group."""
    with torch.no_grad():
        for i, (dep, idxs) in enumerate(group):
            module = dep.target.module
            local = [int(ix) for ix, root in zip(idxs, group[i].root_idxs) if int(root) in channels]
            if not hasattr(module, "weight") or not local:
                continue
            out = graph.is_out_channel_pruning_fn(dep.handler)
            if isinstance(module, nn.BatchNorm2d) or out:
                module.weight[local] = 0
                if module.bias is not None:
                    module.bias[local] = 0
            else:  # input columns of a convolution or the classifier
                module.weight[:, local] = 0


@pytest.mark.parametrize("name", CNNS)
def test_zero_importance_channels_are_removed_exactly(name):
    adapter = load_adapter(name)
    batch = warm(adapter)
    graph = dependency_graph(adapter)
    groups = prunable_groups(adapter, graph)
    root, group = max(groups.items(), key=lambda kv: (len(_channels_of(kv[1])), kv[0]))
    n = len(_channels_of(group))
    parts = max([m.groups for m in (d.target.module for d, _ in group)
                 if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels], default=1)
    width = n // parts
    zeroed = {p * width + j for p in range(parts) for j in (0, 2)}  # the same positions in every part
    _zero(graph, group, zeroed)
    expected = adapter.logits(batch)
    scores = channel_scores(adapter, "magnitude", graph=graph)
    assert all(float(scores[root][c]) == 0.0 for c in zeroed)
    kept = select_channels(scores[root], 2 / width, parts)
    assert set(kept) == set(range(n)) - zeroed
    apply_channel_plan(adapter, ChannelPlan(adapter.fingerprint(), [ChannelGroup(root, n, kept)]))
    assert adapter.model.get_submodule(root).out_channels == n - len(zeroed)
    torch.testing.assert_close(adapter.logits(batch), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-regnet"])
def test_a_plan_round_trips_json_and_rebuilds_identical_weights(tmp_path, name):
    adapter = load_adapter(name)
    batches = make_batches(adapter, n=1)
    plan = prune_channels(adapter, "taylor", batches, unit_sparsity=0.4)
    plan.save(tmp_path / "plan.json")
    again = ChannelPlan.load(tmp_path / "plan.json")
    assert again.to_dict() == plan.to_dict()
    fresh = load_adapter(name)
    apply_channel_plan(fresh, again)
    mine, theirs = adapter.model.state_dict(), fresh.model.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_pruning_a_pruned_model_keeps_base_indices():
    adapter = load_adapter("tiny-resnet")
    first = prune_channels(adapter, "magnitude", unit_sparsity=0.25)
    second = prune_channels(adapter, "magnitude", unit_sparsity=0.25)
    for g in second.groups:
        assert set(g.kept) <= set(first.group(g.module).kept) and g.channels == first.group(g.module).channels
    fresh = load_adapter("tiny-resnet")
    apply_channel_plan(fresh, second)  # the second plan alone, from the base, gives the same model
    batch = make_batches(adapter, n=1)[0]
    torch.testing.assert_close(fresh.logits(batch), adapter.logits(batch))


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-mobilenetv2"])
def test_a_pruned_cnn_saves_and_reloads_with_equal_outputs(tmp_path, name):
    adapter = load_adapter(name)
    batch = warm(adapter)
    base = adapter.base_hash()
    prune_channels(adapter, "magnitude", unit_sparsity=0.3)
    save_pruned(adapter, tmp_path / "art")
    again = load_model(tmp_path / "art")
    torch.testing.assert_close(again.logits(batch), adapter.logits(batch))
    assert again.base_hash() == base
    assert again.plan.to_dict() == adapter.plan.to_dict()


def test_a_dense_cnn_saves_and_reloads(tmp_path):
    adapter = load_adapter("tiny-mobilevit")
    batch = warm(adapter)
    save_pruned(adapter, tmp_path / "art")
    again = load_model(tmp_path / "art")
    torch.testing.assert_close(again.logits(batch), adapter.logits(batch))


def test_a_tampered_plan_in_an_artifact_is_an_artifact_error(tmp_path):
    adapter = load_adapter("tiny-resnet")
    prune_channels(adapter, "magnitude", unit_sparsity=0.3)
    save_pruned(adapter, tmp_path / "art")
    data = json.loads((tmp_path / "art" / "plan.json").read_text())
    data["groups"][0]["kept"] = data["groups"][0]["kept"][:-1]
    (tmp_path / "art" / "plan.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError):
        load_model(tmp_path / "art")


def test_bad_plans_are_refused():
    adapter = load_adapter("tiny-regnet")
    fp = adapter.fingerprint()
    root = next(iter(prunable_groups(adapter)))
    with pytest.raises(PlanError, match="another architecture"):
        apply_channel_plan(adapter, ChannelPlan(load_adapter("tiny-resnet").fingerprint(), []))
    with pytest.raises(PlanError, match="not an edgeadapt channel plan"):
        ChannelPlan.from_dict(PruningPlan.dense(load_adapter("tiny-vit").fingerprint()).to_dict())
    with pytest.raises(PlanError, match="unique ascending"):
        ChannelPlan(fp, [ChannelGroup(root, 16, [3, 1])]).validate()
    with pytest.raises(PlanError, match="no such module"):
        apply_channel_plan(adapter, ChannelPlan(fp, [ChannelGroup("regnet.nope", 16, [0])]))
    with pytest.raises(PlanError, match="output channels"):
        apply_channel_plan(adapter, ChannelPlan(fp, [ChannelGroup(root, 99, [0])]))


def test_a_grouped_convolution_must_lose_the_same_positions_in_every_group():
    adapter = load_adapter("tiny-regnet")
    graph = dependency_graph(adapter)
    grouped = next(name for name, g in prunable_groups(adapter, graph).items()
                   if any(isinstance(d.target.module, nn.Conv2d) and 1 < d.target.module.groups
                          < d.target.module.out_channels for d, _ in g))
    n = adapter.model.get_submodule(grouped).out_channels
    with pytest.raises(PlanError, match="grouped convolution"):
        apply_channel_plan(adapter, ChannelPlan(adapter.fingerprint(),
                                                [ChannelGroup(grouped, n, list(range(1, n)))]))


def test_taylor_needs_batches_and_a_zero_budget_is_infeasible():
    adapter = load_adapter("tiny-resnet")
    with pytest.raises(ConfigError, match="calibration batches"):
        prune_channels(adapter, "taylor", unit_sparsity=0.3)
    with pytest.raises(InfeasibleError):
        prune_channels(adapter, "magnitude", unit_sparsity=0.0)
    with pytest.raises(ConfigError, match="not available for CNN channels"):
        prune_channels(adapter, "fisher", unit_sparsity=0.3)


def test_protected_stages_keep_their_channels():
    adapter = load_adapter("tiny-resnet")
    plan = prune_channels(adapter, "magnitude", unit_sparsity=0.5, protect_first=2)
    stages = adapter.stages()
    assert plan.groups and all(not g.module.startswith((stages[0] + ".", stages[1] + "."))
                               for g in plan.groups)


def test_cli_prunes_a_cnn_by_channels_and_inspects_the_artifact(tmp_path, capsys):
    out = str(tmp_path / "p")
    assert main(["--quiet", "prune", "tiny-resnet", "--unit-sparsity", "0.3", "--out", out]) == 0
    assert "channel groups pruned" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "p"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stages"][0] == "resnet.embedder" and info["total_params"] < 79962
    assert main(["prune", "tiny-resnet", "--unit-sparsity", "0.3", "--target", "heads",
                 "--out", str(tmp_path / "q")]) == 2
    assert "pruned by channels" in capsys.readouterr().err
    out = str(tmp_path / "r")
    assert main(["--quiet", "prune", "tiny-resnet", "--param-sparsity", "0.5", "--out", out]) == 0


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-regnet"])
def test_param_sparsity_removes_about_that_share_of_the_stage_parameters(name):
    adapter = load_adapter(name)
    stage_params = lambda: sum(p.numel() for s in adapter.stages()  # noqa: E731
                               for p in adapter.model.get_submodule(s).parameters())
    before = stage_params()
    prune_channels(adapter, "magnitude", param_sparsity=0.5)
    assert abs(1 - stage_params() / before - 0.5) < 0.06
    with pytest.raises(ConfigError, match="exactly one budget"):
        prune_channels(adapter, "magnitude", unit_sparsity=0.1, param_sparsity=0.1)
