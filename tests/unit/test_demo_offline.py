"""`edgeadapt demo --retrain` reruns the offline stage over its old artifacts instead of deleting
them first (issue 12 §3: a killed or failed rerun must leave the previous valid artifacts)."""

from __future__ import annotations

from pathlib import Path

import edgeadapt.offline.pipeline as offline_pipeline
from edgeadapt.recipes.demo import run_offline_cached


def test_demo_retrain_reruns_every_offline_step_with_overwrite_and_deletes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "offline"
    for step in offline_pipeline.STEPS:  # an earlier demo's artifacts
        (out / step).mkdir(parents=True)
        (out / step / "manifest.json").write_text("{}")
    calls: list[tuple[list[str], bool]] = []

    def fake_run_offline(cfg, steps, overwrite=False):
        # what the real stage would find: the old artifacts are all still there
        assert all((out / s / "manifest.json").is_file() for s in offline_pipeline.STEPS)
        calls.append((list(steps), overwrite))
        return {}

    monkeypatch.setattr(offline_pipeline, "run_offline", fake_run_offline)
    run_offline_cached(Path("tiny-vit"), out)
    run_offline_cached(Path("tiny-vit"), out, fresh=True)
    assert calls == [([], False), (list(offline_pipeline.STEPS), True)]
