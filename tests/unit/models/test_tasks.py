"""Each task names its headline metric, and evaluate() reports it."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.models.registry import load_adapter
from edgeadapt.models.tasks import SentenceEncoder, token_halves
from tests.conftest import make_batches


@pytest.mark.parametrize(("name", "task", "metric", "higher"), [
    ("tiny-vit", None, "accuracy", True),
    ("tiny-llama", None, "perplexity", False),
    ("tiny-bert", "encoder", "retrieval_accuracy", True),
])
def test_tasks_report_their_metric(name: str, task: str | None, metric: str, higher: bool) -> None:
    adapter = load_adapter(name, task=task)
    assert (adapter.task.metric, adapter.task.higher_is_better) == (metric, higher)
    result = adapter.evaluate(make_batches(adapter))
    assert metric in result and result[metric] == result[metric]  # present and not NaN


def test_retrieval_accuracy_is_one_when_each_view_is_its_own_pair_and_chance_for_a_constant_encoder() -> None:
    encoder = load_adapter("tiny-bert", task="encoder")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 2048, (8, 16), generator=g)
    same = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pair_input_ids": ids,
            "pair_attention_mask": torch.ones_like(ids)}
    assert encoder.evaluate([same])["retrieval_accuracy"] == 1.0

    class Constant(torch.nn.Module):
        """Embeds every text the same: argmax picks the first candidate, right for 1 row of 8."""

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            from types import SimpleNamespace

            return SimpleNamespace(last_hidden_state=torch.ones(*input_ids.shape, 4))

    assert SentenceEncoder().evaluate(Constant(), [same])["retrieval_accuracy"] == pytest.approx(1 / 8)


def test_token_halves_split_real_tokens_and_keep_padding_out() -> None:
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}
    first, second = token_halves(batch)
    assert first["input_ids"].tolist() == [[1, 2, 0], [5, 6, 7]]
    assert first["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert second["input_ids"].tolist() == [[3, 4, 0], [8, 9, 10]]


def test_retrieval_without_pair_views_uses_token_halves() -> None:
    encoder = load_adapter("tiny-bert", task="encoder")
    batch = make_batches(encoder, n=1, size=4)[0]
    plain = {k: v for k, v in batch.items() if not k.startswith("pair_")}
    result = encoder.evaluate([plain])
    assert 0.0 <= result["retrieval_accuracy"] <= 1.0
