"""The llm-prune config speaks the shared vocabulary: importance names from the one table, exactly one
named budget, the same default scope as `edgeadapt prune`, and a recovery section that is the shared
TrainConfig with its overrides listed once. Retired spellings are refused with the new name."""

from __future__ import annotations

import pytest

from edgeadapt.cli.main import build_parser
from edgeadapt.config import parse_config
from edgeadapt.errors import ConfigError
from edgeadapt.llm.config import RECOVERY_DEFAULTS
from edgeadapt.llm.pipeline import prune_to_budget
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.importance import score
from edgeadapt.training.config import TrainConfig

BASE = {"kind": "llm-prune", "model": "tiny-llama"}


def cfg(**fields):
    return parse_config({**BASE, **fields})


def test_old_sparsity_field_is_refused_naming_both_budgets():
    with pytest.raises(ConfigError, match=r"sparsity: 'sparsity' was split in two budgets: use "
                                          r"param_sparsity \(the fraction of the block parameters.*"
                                          r"unit_sparsity \(the fraction of the units"):
        cfg(sparsity=0.2)


def test_granularity_is_refused_naming_targets_as_in_prune():
    with pytest.raises(ConfigError, match=r"granularity: renamed to targets \(the same list as "
                                          r"`edgeadapt prune --target`"):
        cfg(param_sparsity=0.2, granularity=["heads"])
    assert cfg(param_sparsity=0.2, targets=["layers", "heads", "layers"]).targets == ["layers", "heads"]


@pytest.mark.parametrize("fields", [{}, {"unit_sparsity": 0.2, "param_sparsity": 0.2}])
def test_exactly_one_budget(fields):
    with pytest.raises(ConfigError, match="give exactly one budget: unit_sparsity .* or param_sparsity"):
        cfg(**fields)


def test_each_budget_validates_under_its_own_name():
    assert cfg(unit_sparsity=0.25).budget == ("unit", 0.25)
    assert cfg(param_sparsity=0.5).budget == ("param", 0.5)
    with pytest.raises(ConfigError, match=r"unit_sparsity must be in \[0, 1\)"):
        cfg(unit_sparsity=1.0)


def test_importance_uses_the_shared_table_and_refuses_retired_names():
    assert cfg(param_sparsity=0.2, pruning={"importance": "fisher"}).pruning.importance == "fisher"
    assert cfg(param_sparsity=0.2, pruning={"importance": "activation"}).pruning.importance == "activation"
    with pytest.raises(ConfigError, match=r"pruning.importance: importance 'taylor-abs' was renamed: use "
                                          r"'taylor' \(first-order"):
        cfg(param_sparsity=0.2, pruning={"importance": "taylor-abs"})


def test_default_scope_and_importance_are_the_prune_commands():
    c = cfg(param_sparsity=0.2)
    prune_cli = build_parser().parse_args(["prune", "tiny-llama", "--out", "x"])
    assert c.pruning.scope == prune_cli.scope == "uniform"
    assert c.pruning.importance == prune_cli.importance == "taylor"


def test_recovery_is_the_shared_train_config_with_its_overrides_listed_once():
    c = cfg(param_sparsity=0.2, seed=3, use_gpu=False,
            recovery={"optimizer": "sgd", "grad_clip": 0.5, "epochs": 4, "method": "full"})
    tc = c.recovery.train_config(c.seed, "cpu")
    assert isinstance(tc, TrainConfig)
    assert (tc.optimizer, tc.grad_clip, tc.epochs, tc.seed, tc.device) == ("sgd", 0.5, 4, 3, "cpu")
    untouched = cfg(param_sparsity=0.2).recovery.train_config(0, "cpu")
    for name, value in RECOVERY_DEFAULTS.items():
        assert getattr(untouched, name) == value, name
    assert TrainConfig().weight_decay != RECOVERY_DEFAULTS["weight_decay"]  # a real override
    # every other TrainConfig field keeps TrainConfig's own default
    base = TrainConfig(device="cpu")
    for name in set(TrainConfig.model_fields) - set(RECOVERY_DEFAULTS) - {"device"}:
        assert getattr(untouched, name) == getattr(base, name), name


@pytest.mark.parametrize("field, message", [
    ("epochs", "epochs: moved to recovery.epochs"),
    ("learning_rate", "learning_rate: moved to recovery.learning_rate"),
    ("patience", "patience: moved to recovery.patience"),
])
def test_top_level_training_fields_moved_to_recovery(field, message):
    with pytest.raises(ConfigError, match=message):
        cfg(param_sparsity=0.2, **{field: 1})


def test_recovery_takes_seed_and_device_from_the_top_level():
    with pytest.raises(ConfigError, match="recovery.seed: recovery uses the top-level seed"):
        cfg(param_sparsity=0.2, recovery={"seed": 1})
    with pytest.raises(ConfigError, match="fp16 autocast needs CUDA"):
        cfg(param_sparsity=0.2, use_gpu=False, recovery={"precision": "fp16"})


def test_unit_and_param_budgets_in_llm_prune_do_what_they_say():
    from tests.conftest import make_batches

    adapter = load_adapter("tiny-llama")
    scores = score(adapter, "taylor", make_batches(adapter, n=2, size=4, length=16))
    unit = load_adapter("tiny-llama")
    outcome = prune_to_budget(cfg(unit_sparsity=0.5, targets=["neurons"]), unit, scores)
    assert [layer.mlp.gate_proj.out_features for layer in unit.model.model.layers] == [64, 64]
    assert outcome.unit_sparsity == 0.5
    param = load_adapter("tiny-llama")
    outcome = prune_to_budget(cfg(param_sparsity=0.5, targets=["neurons"]), param, scores)
    assert abs(outcome.param_sparsity - 0.5) < 0.01 and outcome.unit_sparsity > 0.6
