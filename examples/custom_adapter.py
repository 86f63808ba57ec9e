"""Plug your own model into edgeadapt by implementing the ``ModelAdapter`` protocol.

The model below is a deliberately plain PyTorch transformer classifier (no Hugging Face). Its
adapter tells edgeadapt where the blocks, attention projections and MLP projections are; from
then on pruning, inspection, importance scoring and saving plans work exactly as for the built-in
families. Run it:

    python examples/custom_adapter.py

What you implement (see ``edgeadapt.models.adapter.ModelAdapter``):

* ``blocks()`` – one ``BlockSpec`` per block, read from the *live* weights (so it stays right
  after pruning): the q/k/v/o ``Slice``s, head counts, head dim, MLP input/output ``Slice``s.
* ``layers_path()``, ``embeddings()``, ``head()`` – dotted module paths.
* ``set_attention_units()`` / ``set_layers()`` – update any attributes your forward reads
  (here ``MyAttention.heads``) after heads or layers are removed.
* ``fingerprint()`` – the base architecture's identity, so plans can be checked against it.
* ``task_loss()``, ``features()``, ``evaluate()`` – how to train and judge it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgeadapt.models.spec import AttentionSpec, BlockSpec, MLPSpec, Slice


class MyAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MyBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MyAttention(dim, heads)
        self.fc_in, self.fc_out = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc_out(F.gelu(self.fc_in(self.norm2(x))))


class MyClassifier(nn.Module):
    """Token sequence → class logits."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, hidden: int = 64, depth: int = 2,
                 classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(MyBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.arch = {"model_type": "my-classifier", "num_layers": depth, "hidden_size": dim,
                     "num_heads": heads, "num_kv_heads": heads, "ffn_width": hidden}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


class MyAdapter:
    """The ~50 lines that make ``MyClassifier`` an edgeadapt model."""

    family = "my-classifier"
    modality = "text"

    def __init__(self, model: MyClassifier) -> None:
        self.model = model
        self.plan = None  # set by apply_plan
        self.name = "my-classifier"
        self.task = type("Task", (), {"name": "classification", "head": "head"})()

    def blocks(self) -> list[BlockSpec]:
        out = []
        for i, blk in enumerate(self.model.blocks):
            root = f"blocks.{i}"
            a = blk.attn
            attn = AttentionSpec(f"{root}.attn", *(Slice(f"{root}.attn.{p}", "out") for p in "qkv"),
                                 Slice(f"{root}.attn.o", "in"), a.heads, a.heads, a.head_dim)
            mlp = MLPSpec((Slice(f"{root}.fc_in", "out"),), Slice(f"{root}.fc_out", "in"), blk.fc_in.out_features)
            out.append(BlockSpec(i, root, attn, mlp, (f"{root}.norm1", f"{root}.norm2")))
        return out

    def layers_path(self) -> str:
        return "blocks"

    def embeddings(self) -> list[str]:
        return ["embed"]

    def head(self) -> str:
        return "head"

    def set_attention_units(self, block: int, num_units: int) -> None:
        self.model.blocks[block].attn.heads = num_units

    def set_layers(self, kept: list[int]) -> None:
        pass  # nothing in MyClassifier depends on the block count

    def fingerprint(self) -> dict:
        return dict(self.model.arch)

    def task_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.model(batch["input_ids"]), batch["labels"])

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["input_ids"])

    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        with torch.no_grad():
            hits = [(self.model(b["input_ids"]).argmax(-1) == b["labels"]).float().mean().item() for b in batches]
        return {"accuracy": sum(hits) / len(hits)}


if __name__ == "__main__":
    from edgeadapt.models.inspect import format_inspection, inspect_model
    from edgeadapt.pruning.prune import prune

    torch.manual_seed(0)
    adapter = MyAdapter(MyClassifier())
    batches = [{"input_ids": torch.randint(0, 100, (8, 12)), "labels": torch.randint(0, 3, (8,))} for _ in range(4)]
    print(format_inspection(inspect_model(adapter)))
    plan = prune(adapter, ["heads", "neurons"], "taylor", batches, unit_sparsity=0.5)
    print(plan.summary())
    print(format_inspection(inspect_model(adapter)))
