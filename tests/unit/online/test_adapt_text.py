"""The online stage on a causal language model (issue 13 §2): a tiny Llama and its knowledge base
over a two-domain stream of the built-in standard-library text. The methods retrain with the LM's
own loss (next-token + distillation from the FM + source-text replay, `lm_adaptation_loss`), the
metric is per-domain perplexity (lower is better), and the default methods leave out the
classifier-only ones (EATA, SAR)."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.online.api import adapt
from edgeadapt.online.lm_losses import LMAdaptLossConfig
from edgeadapt.online.methods.base import loss_config_for

STREAM = [{"dataset": "stdlib-text", "options": {"source": "docstrings", "max_chars": 60_000}},
          {"dataset": "stdlib-text", "options": {"source": "source-code", "max_chars": 60_000}}]


@pytest.fixture(scope="module")
def llama_kb():
    torch.manual_seed(0)
    fm = load_adapter("tiny-llama")
    return fm, init_kb(fm, [], KBSettings(importance="magnitude"))


def test_adapt_on_a_causal_lm_reports_perplexity_and_edgeadapt_beats_source(llama_kb):
    fm, kb = llama_kb
    results = adapt(fm, kb, STREAM, methods=["source", "full", "edgeadapt"],
                    budget={"steps": 12, "batch_size": 8, "learning_rate": 3e-3}, width=0.5,
                    source={"name": "builtin-docs"}, max_length=64, progress=False)
    rows = {r["method"]: r for r in results["rows"]}
    assert all(r["metric"] == "perplexity" and "mean_perplexity" in r for r in rows.values())
    # an untrained-on-this-text model: a dozen steps on each domain's unlabeled text lower perplexity
    assert rows["edgeadapt"]["mean_perplexity"] < rows["source"]["mean_perplexity"]
    assert rows["full"]["mean_perplexity"] < rows["source"]["mean_perplexity"]
    assert rows["edgeadapt"]["params"] < rows["full"]["params"]


def test_the_lm_loss_config_is_chosen_by_task_and_checked_by_name():
    assert isinstance(loss_config_for("causal-lm", {"distill": 0.0}), LMAdaptLossConfig)
    with pytest.raises(ConfigError, match=r"loss: mmd: .*'causal-lm' model adapts with LMAdaptLossConfig"):
        loss_config_for("causal-lm", {"mmd": 1.0})


def test_a_memory_budget_for_an_lm_proxy_is_measured_with_the_lm_loss_and_holds(llama_kb):
    """``proxy_memory_bytes`` picks the widest proxy whose retraining step fits; for a causal LM
    that step is next-token + distillation from the FM + replay (the teacher's forward costs
    memory), so the width must be chosen with that loss and the measured retraining peak must stay
    within the budget."""
    fm, kb = llama_kb
    budget = {"steps": 2, "batch_size": 4, "learning_rate": 3e-3}
    full = adapt(fm, kb, STREAM[:1], methods=["edgeadapt"], budget=budget, width=1.0,
                 source={"name": "builtin-docs"}, max_length=32, progress=False)
    limit = full["per_domain"][0]["peak_memory_bytes"] - 1  # just below what the full width needs
    results = adapt(fm, kb, STREAM[:1], methods=["edgeadapt"], budget=budget, proxy_memory_bytes=limit,
                    source={"name": "builtin-docs"}, max_length=32, progress=False)
    assert results["proxy_width"] < 1.0
    assert 0 < results["per_domain"][0]["peak_memory_bytes"] <= limit
