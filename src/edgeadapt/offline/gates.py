"""Input-dependent channel gates (feature boosting and suppression) for the knowledge base.

Each block gets a tiny MLP that reads the block's pooled input and predicts a saliency for every
attention head unit and every FFN neuron. At width ``w`` only the top ``ceil(w * n)`` units by
saliency stay (k-winners-take-all); the kept units are *scaled* by their saliency, the rest are
zeroed. Gates act through forward pre-hooks on the attention output projection and the MLP
output projection (their inputs are the per-head and per-neuron channels), so the model itself
is never forked and pruning/adapters keep working on it.

The last layer of every gate starts at weight 0 and bias 1, so at initialisation every saliency
is exactly 1: at full width the gated knowledge base computes exactly the model it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.models.spec import BlockSpec
from edgeadapt.pruning.groups import block_members


class BlockGate(nn.Module):
    """Pooled block input ``[B, hidden]`` → non-negative saliency for heads ``[B, U]`` and neurons
    ``[B, N]``."""

    def __init__(self, hidden: int, num_units: int, num_neurons: int, bottleneck: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, bottleneck), nn.GELU())
        self.heads = nn.Linear(bottleneck, num_units)
        self.neurons = nn.Linear(bottleneck, num_neurons)
        for out in (self.heads, self.neurons):  # saturated start: saliency == 1 everywhere
            nn.init.zeros_(out.weight)
            nn.init.ones_(out.bias)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(pooled)
        return torch.relu(self.heads(h)), torch.relu(self.neurons(h))


def kwta(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask keeping the ``k`` largest saliencies per row; ties go to earlier (more important)
    units, which the knowledge base ordered first (a stable sort, exact at any width or scale)."""
    n = saliency.shape[-1]
    if k >= n:
        return torch.ones_like(saliency)
    top = torch.sort(saliency.detach(), dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(saliency).scatter_(-1, top, 1.0)


@dataclass
class GatePoint:
    """Where one gate acts: the input features of ``module`` owned by each unit (``[units, k]``)."""

    module: str
    index: torch.Tensor


def gate_point(block: BlockSpec, kind: str) -> GatePoint:
    """Where a ``kind`` ("heads" or "neurons") gate of ``block`` acts: the input of the attention
    output projection (heads) or of the MLP output projection (neurons), with the input-feature
    indices each unit owns. The knowledge base gates there, and proxy extraction and syncing read
    the same points, so all three agree on which channels a unit is.

    Raises :class:`~edgeadapt.errors.ConfigError` when the block has no such input member."""
    path = block.attention.o.module if kind == "heads" else block.mlp.output.module
    for m in block_members(block, kind):
        if m.slice.module == path and m.slice.axis == "in":
            return GatePoint(path, m.index)
    raise ConfigError(f"block {block.index}: no input member on {path} for {kind}")


class GateSet(nn.Module):
    """One :class:`BlockGate` per block plus the hooks that apply them to a model.

    ``width`` (0, 1] sets the kept fraction of heads and neurons in every block; 1.0 keeps all
    (saliency still scales them). ``last`` holds each block's saliencies from the latest forward,
    which extraction aggregates over a window of data.

    ``pooling`` decides what one selection covers: ``"batch"`` (default) averages saliency over
    the batch and keeps one set of units for all of it — exactly what proxy extraction does for a
    window of current data, so training optimises the models the edge will actually get;
    ``"sample"`` selects per input (classic feature boosting and suppression).
    """

    def __init__(self, adapter: ModelAdapter, bottleneck: int = 16, pooling: str = "batch", seed: int = 0):
        super().__init__()
        blocks = adapter.blocks()
        hidden = adapter.fingerprint()["hidden_size"]
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is untouched
            torch.manual_seed(seed)
            self.gates = nn.ModuleList(BlockGate(hidden, b.attention.num_units, b.mlp.width, bottleneck)
                                       for b in blocks)
        if pooling not in ("batch", "sample"):
            raise ConfigError(f"pooling must be 'batch' or 'sample', got {pooling!r}")
        self.pooling = pooling
        self.width = 1.0
        self.last: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(blocks)
        self._handles: list = []

    def attach(self, adapter: ModelAdapter) -> GateSet:
        """Register the hooks on ``adapter.model`` (idempotent)."""
        self.detach()
        model = adapter.model
        for pos, block in enumerate(adapter.blocks()):
            self._handles.append(model.get_submodule(block.module).register_forward_pre_hook(
                self._reader(pos), with_kwargs=True))
            for kind in ("heads", "neurons"):
                point = gate_point(block, kind)
                self._handles.append(model.get_submodule(point.module).register_forward_pre_hook(
                    self._scaler(pos, kind, point)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _reader(self, pos: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.last[pos] = self.gates[pos](hidden.mean(dim=1).float())
        return hook

    def _scaler(self, pos: int, kind: str, point: GatePoint):
        def hook(_module, args):
            x = args[0]
            saliency = self.last[pos][0 if kind == "heads" else 1]
            if self.pooling == "batch":  # one selection for the whole batch
                saliency = saliency.mean(0, keepdim=True)
            k = max(1, math.ceil(self.width * saliency.shape[-1] - 1e-9))
            gate = saliency * kwta(saliency, k)                       # [G, units], G = 1 or B
            per_feature = gate.unsqueeze(-1).expand(-1, -1, point.index.shape[1]).reshape(gate.shape[0], -1)
            scale = torch.ones(gate.shape[0], x.shape[-1], device=x.device, dtype=gate.dtype)
            scale = scale.index_copy(1, point.index.reshape(-1).to(x.device), per_feature)
            if x.dim() == 2 and scale.shape[0] not in (1, x.shape[0]):  # OPT's MLP sees [B*T, hidden]
                scale = scale.repeat_interleave(x.shape[0] // scale.shape[0], dim=0)
            elif x.dim() > 2:
                scale = scale.view(scale.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
            return (x * scale.to(x.dtype),) + tuple(args[1:])
        return hook

    def l1(self) -> torch.Tensor:
        """Mean saliency of the latest forward (the sparsity penalty)."""
        terms = [torch.cat([h.mean().view(1), n.mean().view(1)])
                 for h, n in (t for t in self.last if t is not None)]
        return torch.cat(terms).mean()
