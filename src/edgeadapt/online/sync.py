"""Sync: write what the edge learned back into the knowledge base (KB), and the KB into the FM.

A proxy is the KB physically shrunk to the units its plan keeps (KB-relative ids, in ascending
order), with each kept unit's mean window saliency folded into the output-projection columns it
feeds (:func:`edgeadapt.online.proxy.extract_proxy`). :func:`proxy_to_kb` is the inverse: every
member slice of a kept unit (q/k/v rows and biases and o columns of a head unit; an FFN neuron's
input-projection rows and biases and output-projection column) goes back to the unit's KB position
with the folded scale divided out, and everything no unit owns (embeddings, norms, o/down biases,
the task head) is copied whole. :func:`kb_to_fm` then maps the KB onto the FM through the neuron
index. The gates are not synced: the edge never trains them.

>>> counts = proxy_to_kb(kb, proxy)             # doctest: +SKIP
>>> kb_to_fm(kb, fm)                            # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.offline.gates import gate_point
from edgeadapt.offline.knowledge_base import KnowledgeBase
from edgeadapt.offline.neuron_index import check_index_matches, index_of, kb_state_to_fm
from edgeadapt.online.proxy import Proxy
from edgeadapt.pruning import ops
from edgeadapt.pruning.apply import current_plan
from edgeadapt.pruning.groups import block_members, num_units
from edgeadapt.pruning.plan import PlanError, PruningPlan

Key = tuple[str, str]  # (KB module path, axis)


@dataclass
class _AxisMap:
    """One (module, axis) of the proxy: ``ids[p]`` is the KB feature at proxy feature ``p``;
    ``keep[p]`` says whether it is copied; ``scale[p]`` is the saliency folded into it (or None)."""

    ids: torch.Tensor
    keep: torch.Tensor
    scale: torch.Tensor | None


def check_blend(blend: float, name: str = "blend") -> float:
    """A blend weight must be a fraction in (0, 1]: 1 overwrites, 0.5 moves halfway."""
    if isinstance(blend, bool) or not isinstance(blend, (int, float)) or not 0 < blend <= 1:
        raise ConfigError(f"{name} must be a fraction in (0, 1], got {blend!r}")
    return float(blend)


def proxy_to_kb(kb: KnowledgeBase, proxy: Proxy, blend: float = 1.0) -> dict[str, int]:
    """Write the (retrained) proxy's weights into the KB at the KB positions its plan keeps, in place.

    Kept unit ``j`` of a proxy block (KB unit ``plan.blocks[pos].heads[j]`` / ``.neurons[j]``) is
    copied from the proxy's local position ``j``; its output-projection columns are divided by the
    saliency :func:`~edgeadapt.online.proxy.extract_proxy` multiplied in. A unit whose folded
    saliency is 0 (or not finite) is skipped entirely and keeps its KB values: its output was
    multiplied by 0 on the edge, so the proxy learned nothing for it and its columns cannot be
    unfolded. Unowned parameters are copied whole; units and blocks the plan drops, buffers and the
    gates are left alone. ``blend`` in (0, 1] mixes: ``new = (1 - blend) * old + blend * proxy``.

    Raises ``ValueError`` (before writing anything) for a bad ``blend`` or a proxy that does not
    come from this KB (other architecture, base model or neuron index, a plan that is no subset of
    the KB, or weights that do not fit the plan). Returns ``{"tensors_updated", "values_updated"}``:
    KB parameters written and entries written (whether or not their value changed).
    """
    blend = check_blend(blend)
    plan = _check_proxy(kb, proxy)
    lp = kb.adapter.layers_path()
    where = {b.index: pos for pos, b in enumerate(plan.blocks)}  # KB block -> proxy block position
    maps = _feature_maps(kb, proxy, plan)
    kb_params = dict(kb.adapter.model.named_parameters())
    px_params = dict(proxy.adapter.model.named_parameters())
    names = {n: _proxy_name(n, lp, where) for n in kb_params}
    if {p for p in names.values() if p is not None} != set(px_params):
        odd = sorted(set(px_params) ^ {p for p in names.values() if p is not None})
        raise ConfigError(f"the proxy's parameters are not the KB's (merge any adapters first): {odd[:4]}")

    writes = []  # every check runs before the first write, so a refused call changes nothing
    for name, param in kb_params.items():
        if names[name] is not None:
            path, _, attr = name.rpartition(".")
            dims = _dim_maps(kb.adapter, path, attr, maps)
            writes.append((param, *_gather(name, param, px_params[names[name]], dims)))
    tensors = values = 0
    with torch.no_grad():
        for param, src, index in writes:
            if src.numel() == 0:
                continue
            old = param[index] if index is not None else param
            new = src if blend == 1.0 else (1 - blend) * old.to(src.dtype) + blend * src
            if index is None:
                param.copy_(new.to(param.dtype))
            else:
                param.index_put_(index, new.to(param.dtype))
            tensors, values = tensors + 1, values + src.numel()
    return {"tensors_updated": tensors, "values_updated": values}


def kb_to_fm(kb: KnowledgeBase, fm: ModelAdapter, blend: float = 1.0) -> int:
    """Blend the KB, mapped back into FM order by the neuron index, into ``fm`` in place:
    ``new = (1 - blend) * fm + blend * kb``. Refuses (``ValueError``, nothing written) a bad
    ``blend``, a KB passed as ``fm``, a pruned FM, or an FM the index was not built for. Returns
    how many FM state tensors changed."""
    blend = check_blend(blend)
    _check_fm(kb, fm)
    state, target = kb_state_to_fm(kb.adapter, kb.index), fm.model.state_dict()
    bad = sorted(k for k in {*state, *target} if k not in state or k not in target
                 or state[k].shape != target[k].shape)
    if bad:
        raise ConfigError(f"the KB's state does not fit the FM: {bad[:4]}")
    changed, seen = 0, set()
    with torch.no_grad():
        for key, old in target.items():
            if old.data_ptr() in seen:  # a tied weight (GPT-2's lm_head): blend its storage once
                continue
            seen.add(old.data_ptr())
            new = state[key].to(old.device)
            if blend < 1.0 and old.is_floating_point():
                work = torch.promote_types(old.dtype, torch.float32)
                new = (1 - blend) * old.to(work) + blend * new.to(work)
            new = new.to(old.dtype)
            if not torch.equal(old, new):
                old.copy_(new)
                changed += 1
    return changed


def sync(kb: KnowledgeBase, proxy: Proxy, fm: ModelAdapter | None = None, blend_kb: float = 1.0,
         blend_fm: float = 1.0) -> dict[str, int]:
    """:func:`proxy_to_kb`, then (when ``fm`` is given) :func:`kb_to_fm`. Every argument is checked
    before anything is written. Returns proxy_to_kb's counts plus ``fm_tensors_changed`` with an FM."""
    check_blend(blend_kb, "blend_kb")
    check_blend(blend_fm, "blend_fm")
    if fm is not None:
        _check_fm(kb, fm)
    counts = proxy_to_kb(kb, proxy, blend_kb)
    if fm is not None:
        counts["fm_tensors_changed"] = kb_to_fm(kb, fm, blend_fm)
    return counts


# -- checks ----------------------------------------------------------------------------------------

def _check_proxy(kb: KnowledgeBase, proxy: Proxy) -> PruningPlan:
    """The plan the proxy's model realises, after checking the proxy was cut from this KB."""
    check_index_matches(kb.index, kb.adapter)
    arch, px = kb.adapter.fingerprint(), proxy.adapter
    if px.fingerprint() != arch:
        diff = {k: (arch.get(k), px.fingerprint().get(k)) for k in {*arch, *px.fingerprint()}
                if arch.get(k) != px.fingerprint().get(k)}
        raise ConfigError(f"the proxy comes from another architecture (KB, proxy): {diff}")
    try:
        px_hash = px.base_hash()
    except RuntimeError:  # pruned before its base hash was taken: its origin is unknown
        px_hash = None
    if px_hash != kb.index.base_hash:
        raise ConfigError("the proxy comes from another base model: its base hash "
                         f"{(px_hash or 'unknown')[:12]} is not the KB's {kb.index.base_hash[:12]}")
    mark = index_of(px)
    if mark is not None and mark.to_dict() != kb.index.to_dict():
        raise ConfigError("the proxy was cut from a KB with another neuron index (another unit order)")
    plan = current_plan(px)
    try:
        plan.validate(arch)
        plan.check_subset_of(current_plan(kb.adapter))
    except PlanError as exc:
        raise ConfigError(f"the proxy's plan does not fit this KB: {exc}") from None
    try:
        plan.check_subset_of(proxy.plan)
    except PlanError as exc:
        raise ConfigError(f"the proxy's model keeps units its extraction plan does not: {exc}") from None
    sal, blocks = proxy.saliency, kb.adapter.blocks()
    for kind, tables in (("heads", sal.heads_raw), ("neurons", sal.neurons_raw)):
        sizes = [tuple(getattr(t, "shape", ())) for t in tables]
        if sizes != [(num_units(b, kind),) for b in blocks]:
            raise ConfigError(f"the proxy's {kind} saliency does not fit this KB's blocks")
    for b, spec in zip(plan.blocks, px.blocks()):
        kept = (len(plan.kept_heads(b)), len(plan.kept_neurons(b)))
        if (spec.attention.num_units, spec.mlp.width) != kept:
            raise ConfigError(f"the proxy's block {b.index} does not have the units its plan keeps")
    return plan


def _check_fm(kb: KnowledgeBase, fm: ModelAdapter) -> None:
    if index_of(fm) is not None:
        raise ConfigError("kb_to_fm needs the foundation model, got a knowledge base")
    plan = getattr(fm, "plan", None)
    if plan is not None and not plan.is_dense():
        raise ConfigError(f"kb_to_fm needs the full-width FM, this one is pruned ({plan.summary()})")
    check_index_matches(kb.index, fm)


# -- the feature maps ------------------------------------------------------------------------------

def _feature_maps(kb: KnowledgeBase, proxy: Proxy, plan: PruningPlan) -> dict[Key, _AxisMap]:
    """Per (KB module, axis) that units own: where each proxy feature sits in the KB. Mirrors
    :func:`edgeadapt.pruning.apply._shrink`: a proxy keeps the kept units' features and every
    feature no unit owns, in ascending KB order."""
    model, kb_blocks = kb.adapter.model, kb.adapter.blocks()
    parts, owned, skip = defaultdict(list), defaultdict(list), defaultdict(list)
    scaled: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}
    raw = {"heads": proxy.saliency.heads_raw, "neurons": proxy.saliency.neurons_raw}
    for bplan in plan.blocks:
        block = kb_blocks[bplan.index]
        for kind in ("heads", "neurons"):
            kept = plan.kept_heads(bplan) if kind == "heads" else plan.kept_neurons(bplan)
            kept_t = torch.tensor(kept, dtype=torch.long)
            sal = torch.as_tensor(raw[kind][bplan.index]).detach().cpu().double()[kept_t]
            zero = kept_t[~((sal > 0) & torch.isfinite(sal))]
            gate = gate_point(block, kind)
            for m in block_members(block, kind):
                key = (m.slice.module, m.slice.axis)
                parts[key].append(m.index[kept_t].reshape(-1))
                owned[key].append(m.index.reshape(-1))
                skip[key].append(m.index[zero].reshape(-1))
                if key == (gate.module, "in"):
                    scaled[key] = (m.index[kept_t].reshape(-1), sal.repeat_interleave(m.index.shape[1]))
    maps = {}
    for key, kept_parts in parts.items():
        size = ops.weight_matrix(model.get_submodule(key[0])).shape[0 if key[1] == "out" else 1]
        covered = torch.zeros(size, dtype=torch.bool)
        covered[torch.cat(owned[key])] = True
        ids = torch.cat([*kept_parts, torch.nonzero(~covered).reshape(-1)]).sort().values
        keep = ~torch.isin(ids, torch.cat(skip[key]))
        scale = None
        if key in scaled:
            full = torch.ones(size, dtype=torch.float64)
            full[scaled[key][0]] = scaled[key][1]
            scale = torch.where(keep, full[ids], torch.ones(()))  # skipped features are never divided
        maps[key] = _AxisMap(ids, keep, scale)
    return maps


def _dim_maps(adapter: ModelAdapter, path: str, attr: str, maps: dict[Key, _AxisMap]) -> dict[int, _AxisMap]:
    """The storage dimensions of parameter ``path.attr`` that units own (Conv1D stores ``[in, out]``)."""
    if attr not in ("weight", "bias") or not any((path, a) in maps for a in ("out", "in")):
        return {}
    transposed = ops.is_transposed(adapter.model.get_submodule(path))
    dims = {}
    for axis in ("out", "in") if attr == "weight" else ("out",):
        if (path, axis) in maps:
            on_dim0 = (axis == "out") != transposed  # where a weight stores ``axis``; a bias is 1-D
            dims[0 if attr == "bias" or on_dim0 else 1] = maps[(path, axis)]
    return dims


def _gather(name: str, param: torch.Tensor, src: torch.Tensor, dims: dict[int, _AxisMap]):
    """The proxy values to write (unfolded, in float) and the KB index they go to (None: whole)."""
    work = torch.promote_types(param.dtype, torch.float32) if param.is_floating_point() else param.dtype
    src = src.detach().to(param.device, work)
    if not dims:
        if src.shape != param.shape:
            raise ConfigError(f"proxy parameter for {name} has shape {tuple(src.shape)}, the KB's is "
                             f"{tuple(param.shape)}")
        return src, None
    index = []
    for d in range(param.dim()):
        m = dims.get(d)
        if m is None:
            if src.shape[d] != param.shape[d]:
                raise ConfigError(f"proxy parameter for {name} does not fit the KB along dim {d}")
            index.append(torch.arange(param.shape[d]))
            continue
        if src.shape[d] != m.ids.numel():
            raise ConfigError(f"proxy parameter for {name} has {src.shape[d]} features along dim {d}, "
                             f"its plan keeps {m.ids.numel()}")
        view = [1] * param.dim()
        view[d] = -1
        if m.scale is not None:  # undo extract_proxy's fold
            src = (src.double() / m.scale.to(src.device).view(view)).to(work)
        kept = torch.nonzero(m.keep).reshape(-1)
        src = src.index_select(d, kept.to(src.device))
        index.append(m.ids[kept])
    index = [ix.to(param.device).view([-1 if i == d else 1 for i in range(param.dim())])
             for d, ix in enumerate(index)]
    return src, tuple(index)


def _proxy_name(name: str, layers_path: str, where: dict[int, int]) -> str | None:
    """The proxy's name for KB parameter ``name`` (its block renumbered), None if its block was dropped."""
    head = f"{layers_path}."
    if not name.startswith(head):
        return name
    block, _, rest = name[len(head):].partition(".")
    if not block.isdigit():
        return name
    pos = where.get(int(block))
    return None if pos is None else f"{head}{pos}.{rest}"

