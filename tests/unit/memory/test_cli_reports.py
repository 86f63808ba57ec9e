"""What `memory estimate`, `memory plan` and `validate` tell the user about a plan file (new-user trial).

Before: `memory estimate --plan` printed "predicted peak 1.6 MiB (planned for a budget of 100 B)"
without flagging it; `memory plan --batch-size 12 --batch-sizes 6` printed `plan: {"freeze_blocks":1}`
without the chosen batch 6 (only the saved file had it); `validate` accepted a plan file whose
model ``dtype`` was ``"floaty"``.
"""

from __future__ import annotations

import json

from edgeadapt.cli.main import main
from edgeadapt.memory.plan import MemoryPlan
from edgeadapt.memory.plan_file import save_plan
from edgeadapt.memory.search import Candidate, SearchResult, format_result


def test_memory_estimate_warns_on_stderr_when_the_prediction_exceeds_the_recorded_budget(tmp_path, capsys):
    tight = save_plan(MemoryPlan(), tmp_path / "tight.json", batch_size=8, budget_bytes=100)
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(tight)]) == 0
    captured = capsys.readouterr()
    assert "(planned for a budget of 100 B)" in captured.out
    assert "warning:" in captured.err and "predicted peak" in captured.err
    assert "exceeds the budget of 100 B (100 bytes) the plan was chosen for" in captured.err
    assert "edgeadapt memory plan tiny-resnet --budget 100 --batch-size 8" in captured.err
    roomy = save_plan(MemoryPlan(), tmp_path / "roomy.json", batch_size=8, budget_bytes=2**30)
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(roomy), "--json"]) == 0
    captured = capsys.readouterr()
    assert "exceeds" not in captured.err and json.loads(captured.out)["budget_bytes"] == 2**30


def result_with(chosen: Candidate) -> SearchResult:
    return SearchResult(budget_bytes=2**20, batch_size=12, chosen=chosen, candidates=[chosen],
                        metric="accuracy", planning_seconds=1.0, num_blocks=3)


def test_memory_plans_plan_line_names_the_chosen_effective_batch():
    smaller = Candidate(MemoryPlan(freeze_blocks=1), 1000, 0.01, 1, "chosen", 1000, 0.01, 0.1, 1.0, 0.5, 2,
                        batch_size=6)
    line = format_result(result_with(smaller)).splitlines()[-1]
    assert line == 'plan: {"freeze_blocks":1}, batch 6 (each batch of 12 split into 2 optimizer steps)'
    whole = Candidate(MemoryPlan(freeze_blocks=1), 1000, 0.01, 1, "chosen", 1000, 0.01, 0.1, 1.0, 0.5, 2)
    assert format_result(result_with(whole)).splitlines()[-1] == 'plan: {"freeze_blocks":1}, batch 12'


def test_validate_refuses_an_unknown_dtype_in_a_plan_file_naming_the_allowed_ones(tmp_path, capsys):
    path = tmp_path / "plan.json"
    model = {"name": "tiny-vit", "family": "vit", "num_blocks": 4, "dtype": "floaty"}
    path.write_text(json.dumps({"kind": "memory-plan", "model": model, "freeze_blocks": 1}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.dtype" in err and "floaty" in err
    assert all(name in err for name in ("'float32'", "'bfloat16'", "'float16'", "'float64'"))
    model.update(dtype="bfloat16", trained_dtype="bf32")
    path.write_text(json.dumps({"kind": "memory-plan", "model": model}))
    assert main(["validate", str(path)]) == 2 and "model.trained_dtype" in capsys.readouterr().err
    model.update(trained_dtype="float32")
    path.write_text(json.dumps({"kind": "memory-plan", "model": model}))
    assert main(["validate", str(path)]) == 0
