"""Structured channel pruning of CNNs (:class:`~edgeadapt.models.cnn.CNNAdapter`) through
torch-pruning's dependency graph, behind edgeadapt's nouns.

- **group**: torch-pruning's ``DependencyGraph`` couples every convolution, BatchNorm, residual
  add and concatenation that shares a channel axis (a ResNet stage's residual width, an inverted
  residual's expansion). A group is named by its *root*: the first, by name, of the convolutions
  whose output channels it prunes. Groups that reach into attention or LayerNorm layers
  (MobileViT's transformer width) or any ``nn.Linear`` but the classifier are not prunable here.
- **importance**: torch-pruning's own scores (:data:`CHANNEL_IMPORTANCES`), per channel of a group.
- **plan**: :class:`~edgeadapt.pruning.channel_plan.ChannelPlan`, kept channel indices of the *base*
  model per pruned group, JSON.
- **apply**: :func:`apply_channel_plan` removes exactly the channels the plan does not keep, so a
  plan saved and applied to a fresh model of the same base gives identical weights.

A grouped convolution (RegNet's ResNeXt 3×3) must lose the same positions in every channel group,
so its groups are scored and pruned per position across channel groups (torch-pruning's
``MetaPruner`` does the same); a plan that breaks the pattern is a :class:`PlanError`.

>>> adapter = load_adapter("tiny-resnet")                       # doctest: +SKIP
>>> plan = prune_channels(adapter, "magnitude", unit_sparsity=0.3)  # doctest: +SKIP
>>> plan.save("plan.json")                                      # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgeadapt.errors import ConfigError, InfeasibleError, PlanError
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.pruning.channel_plan import ChannelGroup, ChannelPlan, current_channel_plan
from edgeadapt.training.device import resolve_device, to_device

CHANNEL_IMPORTANCES: dict[str, str] = {
    "magnitude": "L1 norm of the group's weights per channel (torch-pruning GroupMagnitudeImportance p=1)",
    "magnitude-l2": "L2 norm of the group's weights per channel (GroupMagnitudeImportance p=2)",
    "taylor": "first-order Taylor |w·dL/dw| per channel over calibration batches (GroupTaylorImportance)",
    "random": "seeded uniform random scores (a baseline that knows nothing)",
}
NEEDS_BATCHES = ("taylor",)

# what a prunable group may contain besides convolutions and BatchNorm (and the classifier's input)
_PASS_THROUGH = ("_ElementWiseOp", "_ConcatOp", "_SplitOp", "_ReshapeOp")


# -- groups ----------------------------------------------------------------------------------
def dependency_graph(adapter: CNNAdapter) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``adapter.model``, traced with one blank image at the
    model's ``image_size`` (in eval mode, so BatchNorm takes a batch of one)."""
    model, config = adapter.model, adapter.model.config
    param = next(model.parameters())
    size = config.image_size
    example = {"pixel_values": torch.zeros(1, config.num_channels, size, size, device=param.device,
                                           dtype=param.dtype)}
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                     output_transform=lambda out: out.logits, verbose=False)
    finally:
        model.train(was_training)


def _names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def _problem(graph: tp.DependencyGraph, group: Any, head: nn.Module | None) -> str | None:
    """Why torch-pruning's ``group`` is not prunable here (``None`` when it is): it may hold
    convolutions, BatchNorm, adds, concatenations, splits, the flatten before the classifier and
    the classifier's input columns, nothing else (no attention, LayerNorm or other Linear)."""
    for dep, _ in group:
        module = dep.target.module
        if module is head and not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        kind = type(module).__name__
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or kind in _PASS_THROUGH:
            continue
        return f"it reaches a {kind}"
    return None


def _root_name(graph: tp.DependencyGraph, group: Any, names: dict[nn.Module, str]) -> str:
    convs = [names[dep.target.module] for dep, _ in group
             if isinstance(dep.target.module, nn.Conv2d) and graph.is_out_channel_pruning_fn(dep.handler)]
    return min(convs)


def _channel_groups(group: Any) -> int:
    """Channel groups a grouped (not depthwise) convolution in ``group`` imposes (1 when none)."""
    counts = [dep.target.module.groups for dep, _ in group
              if isinstance(dep.target.module, nn.Conv2d) and 1 < dep.target.module.groups
              and dep.target.module.groups != dep.target.module.out_channels]
    return max(counts, default=1)


def prunable_groups(adapter: CNNAdapter, graph: tp.DependencyGraph | None = None) -> dict[str, Any]:
    """Root name -> torch-pruning group (all channels) of every prunable channel group, by name."""
    graph = graph or dependency_graph(adapter)
    model = adapter.model
    head = model.get_submodule(adapter.head()) if adapter.head() else None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    names = _names(model)
    out = {}
    for group in graph.get_all_groups(ignored_layers=linears, root_module_types=[nn.Conv2d]):
        if _problem(graph, group, head) is None:
            out[_root_name(graph, group, names)] = group
    return dict(sorted(out.items()))


# -- importance ------------------------------------------------------------------------------
def _scorer(importance: str) -> Any:
    if importance == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    if importance == "magnitude-l2":
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    if importance == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=None)
    if importance == "random":
        return tp.importance.RandomImportance()
    raise ConfigError(f"importance {importance!r} is not available for CNN channels; choose one of "
                      f"{', '.join(CHANNEL_IMPORTANCES)}")


def channel_scores(adapter: CNNAdapter, importance: str = "magnitude",
                   batches: Iterable[dict[str, torch.Tensor]] | None = None, seed: int = 0,
                   graph: tp.DependencyGraph | None = None) -> dict[str, torch.Tensor]:
    """Root name -> one score per (current) channel of every prunable group, by ``importance``
    (:data:`CHANNEL_IMPORTANCES`). ``taylor`` accumulates gradients of the task loss over
    ``batches`` first (and clears them after); a :class:`ConfigError` without batches."""
    scorer = _scorer(importance)
    groups = prunable_groups(adapter, graph)
    model = adapter.model
    if importance in NEEDS_BATCHES:
        batches = list(batches or [])
        if not batches:
            raise ConfigError(f"importance {importance!r} needs calibration batches")
        model.zero_grad(set_to_none=True)
        for batch in batches:
            adapter.task_loss(batch).backward()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scores = {}
            for name, group in groups.items():
                s = scorer(group)
                if s is not None:
                    scores[name] = s.detach().float().cpu()
    finally:
        if importance in NEEDS_BATCHES:
            model.zero_grad(set_to_none=True)
    return scores


# -- select ----------------------------------------------------------------------------------
def select_channels(scores: torch.Tensor, sparsity: float, channel_groups: int = 1,
                    min_keep: int = 1) -> list[int]:
    """Kept (current) channel positions: drop ``round(sparsity * n)`` of the lowest-scoring
    positions of each of the ``channel_groups`` equal parts (the same positions in every part,
    scores summed across parts), never keeping fewer than ``min_keep`` per part. Ties keep the
    lower index."""
    n = len(scores) // channel_groups
    local = scores.reshape(channel_groups, n).sum(0)
    drop = max(0, min(round(sparsity * n), n - min_keep))
    order = sorted(range(n), key=lambda i: (float(local[i]), i))
    kept_local = sorted(order[drop:])
    return [g * n + j for g in range(channel_groups) for j in kept_local]


def _stage_of(name: str, stages: list[str]) -> int | None:
    return next((i for i, s in enumerate(stages) if name == s or name.startswith(s + ".")), None)


def _stage_params(adapter: CNNAdapter) -> int:
    return sum(p.numel() for path in adapter.stages() for p in adapter.model.get_submodule(path).parameters())


def _plan_at(adapter: CNNAdapter, scores: dict[str, torch.Tensor], groups: dict[str, Any], sparsity: float,
             open_stages: range, min_keep: int) -> tuple[ChannelPlan, int]:
    """The plan removing ``sparsity`` of every open group's current channels, and how many it removes."""
    stages = adapter.stages()
    current = current_channel_plan(adapter)
    new = {g.module: g for g in current.groups}
    removed = 0
    for name, s in scores.items():
        if _stage_of(name, stages) not in open_stages:
            continue
        kept_now = select_channels(s, sparsity, _channel_groups(groups[name]), min_keep)
        if len(kept_now) == len(s):
            continue
        removed += len(s) - len(kept_now)
        base = current.group(name)
        base_kept = base.kept if base is not None else list(range(len(s)))
        new[name] = ChannelGroup(name, base.channels if base else len(s), [base_kept[i] for i in kept_now])
    return ChannelPlan(current.architecture, [new[k] for k in sorted(new)]), removed


def _unit_for_params(adapter: CNNAdapter, target: float, plan_at: Any) -> float:
    """The unit sparsity whose plan removes the share of stage parameters closest to ``target``
    (bisection; removed parameters grow with the unit sparsity), each probe applied to a copy."""
    before = _stage_params(adapter)

    def removed_share(s: float) -> float:
        probe = copy.deepcopy(adapter)
        apply_channel_plan(probe, plan_at(s)[0])
        return 1 - _stage_params(probe) / before

    lo, hi = 0.0, 0.999
    best, best_err = 0.0, target
    for _ in range(14):
        mid = (lo + hi) / 2
        share = removed_share(mid)
        if abs(share - target) < best_err:
            best, best_err = mid, abs(share - target)
        lo, hi = (mid, hi) if share < target else (lo, mid)
    return best


def prune_channels(adapter: CNNAdapter, importance: str = "magnitude",
                   batches: Iterable[dict[str, torch.Tensor]] | None = None, *,
                   unit_sparsity: float | None = None, param_sparsity: float | None = None,
                   min_keep: int = 1, protect_first: int = 0, protect_last: int = 0,
                   seed: int = 0, device: str = "auto") -> ChannelPlan:
    """Prune the channels of every prunable group (uniform), lowest ``importance`` first, to exactly
    one budget, and return the plan now realised by ``adapter.model``:

    - ``unit_sparsity=s``: remove ``round(s * n)`` of each group's ``n`` channels;
    - ``param_sparsity=p``: remove the closest achievable share ``p`` of the stages' parameters
      (one unit sparsity for every group, found by bisection on the scores of the model as it is).

    Groups whose root lies in the first ``protect_first`` or last ``protect_last`` stages
    (:meth:`~edgeadapt.models.cnn.CNNAdapter.stages`) are left alone. Scoring runs on ``device``
    (``"auto"``: CUDA when present); the model stays there. A request that removes nothing is an
    :class:`~edgeadapt.errors.InfeasibleError`."""
    if not isinstance(adapter, CNNAdapter):
        raise ConfigError(f"channel pruning is for CNN adapters; {type(adapter).__name__} is pruned by "
                          "heads/neurons/layers (edgeadapt.pruning.prune.prune)")
    if (unit_sparsity is None) == (param_sparsity is None):
        raise ConfigError("give exactly one budget: unit_sparsity (share of each group's channels) or "
                          "param_sparsity (share of the stages' parameters)")
    budget = "unit_sparsity" if unit_sparsity is not None else "param_sparsity"
    sparsity = float(unit_sparsity if unit_sparsity is not None else param_sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"{budget} must be in [0, 1), got {sparsity}")
    adapter.base_hash()  # cached now, so the probes copied below do not hash their weights again
    dev = resolve_device(device)
    adapter.model.to(dev)
    batches = [to_device(b, dev) for b in batches] if batches is not None else None
    graph = dependency_graph(adapter)
    groups = prunable_groups(adapter, graph)
    scores = channel_scores(adapter, importance, batches, seed, graph)
    open_stages = range(protect_first, len(adapter.stages()) - protect_last)

    def plan_at(s: float) -> tuple[ChannelPlan, int]:
        return _plan_at(adapter, scores, groups, s, open_stages, min_keep)

    unit = sparsity if budget == "unit_sparsity" else _unit_for_params(adapter, sparsity, plan_at)
    plan, removed = plan_at(unit)
    if removed == 0:
        raise InfeasibleError(f"{budget} {sparsity} removes no channel of {adapter.name!r} "
                              f"({len(scores)} prunable groups, min_keep {min_keep}, protected stages "
                              f"first {protect_first} / last {protect_last}); raise the sparsity")
    apply_channel_plan(adapter, plan, graph=graph)
    return plan


# -- apply -----------------------------------------------------------------------------------
def apply_channel_plan(adapter: CNNAdapter, plan: ChannelPlan,
                       graph: tp.DependencyGraph | None = None) -> CNNAdapter:
    """Physically remove the channels ``plan`` does not keep from ``adapter.model`` (dense or
    pruned by an earlier plan that keeps a superset), in place, and record ``adapter.plan``.

    Deterministic: the result depends only on the model and the plan. Raises
    :class:`~edgeadapt.errors.PlanError` for a plan of another architecture, a group that is not
    a prunable group root of this model, a channel count that is not the group's, a channel
    already removed, or a grouped convolution pruned unevenly."""
    if not isinstance(adapter, CNNAdapter):
        raise ConfigError("apply_channel_plan is for CNN adapters; apply a PruningPlan with "
                          "edgeadapt.pruning.apply.apply_plan")
    plan.validate(adapter.fingerprint())
    adapter.base_hash()  # taken (and cached) while the base weights are still whole
    current = current_channel_plan(adapter)
    graph = graph or dependency_graph(adapter)
    names = _names(adapter.model)
    head = adapter.model.get_submodule(adapter.head()) if adapter.head() else None
    work = []
    for g in sorted(plan.groups, key=lambda g: g.module):
        cur = current.group(g.module)
        cur_kept = cur.kept if cur is not None else list(range(g.channels))
        missing = sorted(set(g.kept) - set(cur_kept))
        if missing:
            raise PlanError(f"group {g.module} keeps channels {missing[:5]} that were already pruned")
        try:
            module = adapter.model.get_submodule(g.module)
        except AttributeError:
            raise PlanError(f"group {g.module}: no such module in {adapter.name!r}") from None
        if not isinstance(module, nn.Conv2d) or module.out_channels != len(cur_kept) or \
                (cur is None and module.out_channels != g.channels):
            raise PlanError(f"group {g.module}: the plan says {g.channels} base channels but the module "
                            f"has {getattr(module, 'out_channels', '?')} output channels now")
        keep = set(g.kept)
        remove = [pos for pos, base in enumerate(cur_kept) if base not in keep]
        group = graph.get_pruning_group(module, tp.prune_conv_out_channels, list(range(len(cur_kept))))
        why = _problem(graph, group, head)
        if why is not None or _root_name(graph, group, names) != g.module:
            raise PlanError(f"group {g.module} is not a prunable channel group of this model"
                            f"{f' ({why})' if why else ''}")
        k = _channel_groups(group)
        if k > 1:
            n = len(cur_kept) // k
            parts = [[p % n for p in remove if p // n == j] for j in range(k)]
            if any(part != parts[0] for part in parts):
                raise PlanError(f"group {g.module} feeds a grouped convolution ({k} groups): it must lose "
                                "the same positions in every channel group")
        if remove:
            work.append((module, remove))
    for module, remove in work:
        graph.get_pruning_group(module, tp.prune_conv_out_channels, remove).prune()
    merged = {g.module: g for g in current.groups}
    merged.update({g.module: g for g in plan.groups})
    adapter.plan = ChannelPlan(plan.architecture, [merged[k] for k in sorted(merged)])
    return adapter
