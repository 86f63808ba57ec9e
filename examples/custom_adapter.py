"""Plug your own model into edgeadapt by implementing the ``ModelAdapter`` protocol.

The model below is a deliberately plain PyTorch transformer classifier (no Hugging Face). Its
adapter tells edgeadapt where the blocks, attention projections and MLP projections are; from
then on it goes through the whole loop exactly as the built-in families do — pruning, LoRA,
the elastic knowledge base (KB) with its gates, the neuron index, proxy extraction for a window
of current data, label-free retraining of the proxy on the edge, and sync back into the KB and
the foundation model (FM). Run it (about 10 s on a CPU):

    python examples/custom_adapter.py

What you implement (see ``edgeadapt.models.adapter.ModelAdapter``):

* ``blocks()`` – one ``BlockSpec`` per block, read from the *live* weights (so it stays right
  after pruning): the q/k/v/o ``Slice``s, head counts, head dim, MLP input/output ``Slice``s.
* ``layers_path()``, ``embeddings()``, ``head()`` – dotted module paths.
* ``set_attention_units()`` / ``set_layers()`` – update any attributes your forward reads
  (here ``MyAttention.heads``) after heads or layers are removed.
* ``fingerprint()`` – the base architecture's identity (``num_layers``, ``hidden_size``,
  ``num_heads``, ``num_kv_heads``, ``ffn_width``), so plans and indices can be checked against it.
* ``base_hash()`` / ``rebase()`` – the base weights' hash, cached before pruning
  (``edgeadapt.models.adapter.weights_hash`` computes it), and forgetting it after a LoRA merge.
* ``task_loss()``, ``features()`` (the head's input), ``logits()`` (one forward, the head's
  output), ``evaluate()`` – how to train and judge it.
* the fields ``plan`` and ``neuron_index``, both ``None`` at first (the stages set them).

What the loop needs beyond the protocol: LoRA wraps the projections ``blocks()`` names, so they
must be ``nn.Linear``; activation checkpointing needs a Hugging Face model (leave
``gradient_checkpointing`` off). Saving: edgeadapt artifacts are rebuilt from a Hugging Face
config, so a custom model's KB, proxies and synced FM live in memory — ``save_kb`` refuses them
with a ``ConfigError`` saying so (the neuron index, which holds no weights, does save).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeadapt.models.adapter import BaseIdentity
from edgeadapt.models.spec import AttentionSpec, BlockSpec, MLPSpec, Slice

Batch = dict[str, torch.Tensor]


class MyAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
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
    """Token sequence ``[B, T]`` → class logits ``[B, classes]``."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, hidden: int = 64, depth: int = 2,
                 classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(MyBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.arch = {"model_type": "my-classifier", "num_layers": depth, "hidden_size": dim,
                     "num_heads": heads, "num_kv_heads": heads, "ffn_width": hidden}

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The head's input: the mean-pooled, normalised last block output ``[B, dim]``."""
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids))


@dataclass
class MyTask:
    """What the stages read of a task: its name (``classification`` gets cross-entropy in the KB's
    sandwich training) and the head's path (its input is the feature point)."""

    name: str = "classification"
    head: str | None = "head"


class MyAdapter(BaseIdentity):  # base_hash() and rebase() come from BaseIdentity
    """The ~60 lines that make ``MyClassifier`` an edgeadapt model."""

    family = "my-classifier"
    modality = "text"

    def __init__(self, model: MyClassifier) -> None:
        self.model = model
        self.name = "my-classifier"
        self.task = MyTask()
        self.plan: Any = None  # set by apply_plan
        self.neuron_index: Any = None  # set by to_kb on a knowledge base
        self._base_hash: str | None = None

    def blocks(self) -> list[BlockSpec]:
        out = []
        for i, blk in enumerate(self.model.blocks):
            root = f"blocks.{i}"
            a = blk.attn
            attn = AttentionSpec(f"{root}.attn", *(Slice(f"{root}.attn.{p}", "out") for p in "qkv"),
                                 Slice(f"{root}.attn.o", "in"), a.heads, a.heads, a.head_dim)
            width = blk.fc_in.weight.shape[0]  # from the live weights: right after pruning too
            mlp = MLPSpec((Slice(f"{root}.fc_in", "out"),), Slice(f"{root}.fc_out", "in"), width)
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
        return {"family": self.family, **self.model.arch}


    def logits(self, batch: Batch) -> torch.Tensor:
        return self.model(batch["input_ids"])

    def task_loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["labels"])

    def features(self, batch: Batch) -> torch.Tensor:
        return self.model.features(batch["input_ids"])

    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                scored = [(self.logits(b), b["labels"]) for b in batches]
        finally:
            self.model.train(was_training)
        n = sum(len(y) for _, y in scored)
        return {"accuracy": sum((z.argmax(-1) == y).sum().item() for z, y in scored) / n,
                "loss": sum(F.cross_entropy(z, y, reduction="sum").item() for z, y in scored) / n}


# -- a toy task and a drift ----------------------------------------------------------------------

def make_batches(n: int, seed: int, drift: float = 0.0, size: int = 16, length: int = 12) -> list[Batch]:
    """Class ``c`` draws its tokens from ``[30c, 30c + 30)``. ``drift`` replaces that fraction of
    tokens by words of a new vocabulary (``[90, 100)``, never seen in the source domain)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        labels = torch.randint(0, 3, (size,), generator=g)
        ids = labels[:, None] * 30 + torch.randint(0, 30, (size, length), generator=g)
        new = torch.rand(size, length, generator=g) < drift
        ids = torch.where(new, torch.randint(90, 100, (size, length), generator=g), ids)
        out.append({"input_ids": ids, "labels": labels})
    return out


def unlabeled(batches: list[Batch]) -> list[Batch]:
    return [{k: v for k, v in b.items() if k != "labels"} for b in batches]


@dataclass
class LoopResult:
    """Everything the loop produced, for printing and for tests."""

    fm_before: dict[str, torch.Tensor]  # the FM's weights before sync (after LoRA)
    kb_before: dict[str, torch.Tensor]  # the KB's weights before sync (KB unit order)
    fm: Any                              # the synced FM (MyAdapter)
    kb: Any                              # the knowledge base, synced
    proxy: Any                           # the retrained proxy
    metrics: dict[str, float]


def run_loop(width: float = 0.5, trainable: str = "all", steps: int = 20, seed: int = 0,
             train_kb: bool = True) -> LoopResult:
    """offline (pretrain, LoRA, KB, index) → proxy for a drifted window → label-free retraining →
    sync into the KB and the FM. Returns the objects and target accuracies along the way.
    ``train_kb=False`` keeps the KB as initialised (reordered FM, saturated gates: exactly the FM)."""
    from edgeadapt.offline.knowledge_base import KBSettings, build_kb, init_kb
    from edgeadapt.offline.lora import LoraSettings, lora_tune
    from edgeadapt.online.losses import adaptation_loss, set_trainable, source_stats
    from edgeadapt.online.proxy import extract_proxy
    from edgeadapt.online.retrain import RetrainBudget, retrain
    from edgeadapt.online.sync import sync
    from edgeadapt.training.config import TrainConfig
    from edgeadapt.training.loop import fit

    torch.manual_seed(seed)
    fm = MyAdapter(MyClassifier())
    source, held = make_batches(8, seed), make_batches(2, seed + 1)
    window, target = make_batches(4, seed + 2, drift=0.6), make_batches(4, seed + 3, drift=0.6)
    quiet = {"device": "cpu", "progress": False, "seed": seed}

    # offline, in the cloud: a "pretrained" FM, LoRA on the source domain, then the elastic KB
    fit(fm, lambda e: source, TrainConfig(epochs=6, learning_rate=3e-3, **quiet))
    lora = lora_tune(fm, lambda e: source, TrainConfig(epochs=2, learning_rate=1e-3, **quiet),
                     LoraSettings(rank=4, alpha=8), val=lambda: held)
    settings = KBSettings(bottleneck=8, min_width=0.5)
    if train_kb:  # sandwich training of the elastic KB, distilled from the FM
        kb, _ = build_kb(fm, lambda e: source, TrainConfig(epochs=2, learning_rate=1e-3, **quiet),
                         settings, calibration=source[:2])
    else:
        kb = init_kb(fm, source[:2], settings, seed=seed)
    stats = source_stats(fm, source, replay_size=0)  # what the edge device keeps about the source

    # online, on the edge: a proxy for the current window, retrained without labels
    proxy = extract_proxy(kb, unlabeled(window), width)
    before = proxy.adapter.evaluate(target)["accuracy"]
    set_trainable(proxy.adapter, trainable)
    retrain(proxy.adapter, lambda e: unlabeled(window), adaptation_loss(proxy.adapter, stats),
            RetrainBudget(steps=steps, learning_rate=1e-3, device="cpu", gradient_checkpointing=False),
            seed=seed, measure=False)
    after = proxy.adapter.evaluate(target)["accuracy"]

    # sync: proxy -> KB -> FM
    fm_before, kb_before = (copy.deepcopy(a.model.state_dict()) for a in (fm, kb.adapter))
    fm_target = fm.evaluate(target)["accuracy"]
    counts = sync(kb, proxy, fm)
    metrics = {"fm_source_accuracy": fm.evaluate(held)["accuracy"], "lora_merge_max_abs_diff":
               lora["merge_max_abs_diff"], "fm_target_accuracy": fm_target, "proxy_target_accuracy": before,
               "proxy_adapted_target_accuracy": after, "synced_fm_target_accuracy":
               fm.evaluate(target)["accuracy"], "fm_tensors_changed": counts["fm_tensors_changed"],
               "proxy_params": sum(p.numel() for p in proxy.adapter.model.parameters()),
               "fm_params": sum(p.numel() for p in fm.model.parameters())}
    return LoopResult(fm_before, kb_before, fm, kb, proxy, metrics)


if __name__ == "__main__":
    from edgeadapt.models.inspect import format_inspection, inspect_model
    from edgeadapt.pruning.prune import prune

    torch.manual_seed(0)
    adapter = MyAdapter(MyClassifier())
    batches = make_batches(4, seed=0)
    print(format_inspection(inspect_model(adapter)))
    plan = prune(adapter, ["heads", "neurons"], "taylor", batches, unit_sparsity=0.5)
    print(plan.summary())

    print("\nthe whole loop: pretrain + LoRA -> KB + index -> proxy (width 0.5) -> label-free retrain "
          "-> sync")
    result = run_loop()
    for name, value in result.metrics.items():
        print(f"  {name:32s} {value:.4g}" if isinstance(value, float) else f"  {name:32s} {value}")

    from edgeadapt.errors import ConfigError
    from edgeadapt.offline.artifacts import save_kb

    try:  # the rule for artifacts: a custom model stays in memory (refused before anything is written)
        save_kb(result.kb, "custom-kb")
    except ConfigError as exc:
        print(f"\n{exc}")
