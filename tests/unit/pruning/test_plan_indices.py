"""Plan JSON indices are integers, said so by name (issue 12 §1): ``"heads": [0.0]`` and ``[true]``
were stored as written and ``[0.5]`` got "already pruned" on a never-pruned model; now each is a
PlanError naming the block, the field and the value."""

from __future__ import annotations

import json

import pytest

from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.plan import PlanError, PruningPlan


@pytest.fixture(scope="module")
def dense() -> dict:
    return PruningPlan.dense(load_adapter("tiny-llama").fingerprint()).to_dict()


def write(tmp_path, plan: dict, field: str, value, block: int = 0):
    plan = json.loads(json.dumps(plan))
    plan["blocks"][block][field] = value
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.parametrize("field, value, shown", [
    ("heads", [0.0], "0.0"), ("heads", [True], "True"), ("heads", [0.5], "0.5"),
    ("neurons", [0, 1.0, 2], "1.0"), ("neurons", [False, 1], "False"), ("heads", ["0"], "'0'"),
])
def test_non_integer_unit_indices_are_refused_naming_block_field_value(tmp_path, dense, field, value, shown):
    with pytest.raises(PlanError, match=f"block 1 {field}: {shown} is not an integer index"):
        PruningPlan.load(write(tmp_path, dense, field, value, block=1))


@pytest.mark.parametrize("value", ["0,1", 3, {"0": 1}])
def test_unit_indices_that_are_not_a_list_are_refused(tmp_path, dense, value):
    with pytest.raises(PlanError, match="block 0 heads: expected a list of integer indices"):
        PruningPlan.load(write(tmp_path, dense, "heads", value))


@pytest.mark.parametrize("value", [0.0, 0.5, True, "0"])
def test_non_integer_block_index_is_refused(tmp_path, dense, value):
    with pytest.raises(PlanError, match=f"block index {value!r} is not an integer"):
        PruningPlan.load(write(tmp_path, dense, "index", value))


def test_half_index_on_a_never_pruned_model_is_not_called_already_pruned():
    adapter = load_adapter("tiny-llama")
    plan = PruningPlan.dense(adapter.fingerprint())
    plan.blocks[0].heads = [0.5]
    with pytest.raises(PlanError, match=r"block 0 heads: 0.5 is not an integer index"):
        apply_plan(adapter, plan)


def test_a_block_that_is_not_an_object_is_refused(tmp_path, dense):
    plan = json.loads(json.dumps(dense))
    plan["blocks"][0] = [0, None, None]
    (tmp_path / "p.json").write_text(json.dumps(plan))
    with pytest.raises(PlanError, match="malformed pruning plan"):
        PruningPlan.load(tmp_path / "p.json")


def test_integer_plans_still_load_and_apply(tmp_path, dense):
    adapter = load_adapter("tiny-llama")
    apply_plan(adapter, PruningPlan.load(write(tmp_path, dense, "heads", [1])))
    assert adapter.blocks()[0].attention.num_units == 1
