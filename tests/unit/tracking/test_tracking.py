"""Tracking: CSV/TensorBoard round trips, W&B and MLflow against fake modules, run dirs, plots."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edgeadapt.errors import MissingDependencyError, OutputExistsError
from edgeadapt.tracking import (
    BACKENDS,
    CSVLogger,
    MLflowLogger,
    MultiLogger,
    NullLogger,
    WandbLogger,
    make_logger,
    new_run_dir,
    plot_curves,
    read_metrics,
)
from edgeadapt.tracking.plots import metric_family

CONFIG = {"model": {"name": "vit-tiny", "width": 96}, "lr": 0.001, "seed": 0}
FLAT = {"model.name": "vit-tiny", "model.width": 96, "lr": 0.001, "seed": 0}
STEPS = [(1, {"loss": 2.5, "acc": 0.1}), (2, {"loss": 1.25, "acc": 0.5, "lr": 3e-4}),
         (5, {"loss": 0.1 + 0.2})]


def _log_all(logger) -> None:
    logger.log_params(CONFIG)
    for step, metrics in STEPS:
        logger.log_metrics(metrics, step)


def _expected() -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in STEPS:
        for name, value in metrics.items():
            out.setdefault(name, []).append((step, value))
    return out


def test_csv_round_trip_with_new_keys_and_resume(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    _log_all(logger)
    # Flushed per call: readable before close, as after a crash.
    assert read_metrics(tmp_path / "metrics.csv") == _expected()
    logger.close()
    assert json.loads((tmp_path / "params.json").read_text()) == FLAT

    # A crash mid-row leaves a partial line; resuming cuts it and appends after one header.
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("6,lo")
    assert read_metrics(tmp_path) == _expected()
    resumed = CSVLogger(tmp_path)
    resumed.log_metrics({"loss": 0.05}, step=7)
    resumed.log_params({"resumed": True})
    resumed.close()
    assert read_metrics(tmp_path)["loss"][-2:] == [(5, 0.1 + 0.2), (7, 0.05)]
    assert (tmp_path / "metrics.csv").read_text().count("step,name,value") == 1
    assert json.loads((tmp_path / "params.json").read_text()) == {**FLAT, "resumed": True}


def test_csv_rejects_non_scalar_metric(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    with pytest.raises(TypeError, match="'loss'"):
        logger.log_metrics({"loss": [1.0, 2.0]}, step=0)
    logger.close()


def test_tensorboard_scalars_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from edgeadapt.tracking import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path)
    _log_all(logger)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "acc", "lr"}
    for name, points in _expected().items():
        events = acc.Scalars(name)
        assert [e.step for e in events] == [s for s, _ in points]
        assert [e.value for e in events] == pytest.approx([v for _, v in points], rel=1e-6)
    assert "params/text_summary" in acc.Tags()["tensors"]


def _fake_wandb() -> types.ModuleType:
    fake = types.ModuleType("wandb")
    fake.calls = []  # type: ignore[attr-defined]

    class Run:
        def __init__(self) -> None:
            self.config = types.SimpleNamespace(update=lambda d, **kw: fake.calls.append(("config", dict(d))))

        def log(self, data, step=None):
            fake.calls.append(("log", dict(data), step))

        def finish(self):
            fake.calls.append(("finish",))

    def init(**kwargs):
        fake.calls.append(("init", kwargs))
        return Run()

    fake.init = init  # type: ignore[attr-defined]
    return fake


def test_wandb_missing_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeadapt\[wandb\]'"):
        WandbLogger(tmp_path)


def test_wandb_offline_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    fake = _fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = make_logger(tmp_path / "run1", ["wandb"], wandb={"project": "p"})
    _log_all(logger)
    logger.close()
    init = fake.calls[0][1]
    assert init["mode"] == "offline" and init["project"] == "p" and init["name"] == "run1"
    assert init["dir"] == str(tmp_path / "run1")
    assert ("config", FLAT) in fake.calls
    assert [c[1:] for c in fake.calls if c[0] == "log"] == [(m, s) for s, m in STEPS]
    assert fake.calls[-1] == ("finish",)


def test_wandb_online_when_api_key_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    fake = _fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    WandbLogger(tmp_path).close()
    assert fake.calls[0][1]["mode"] in (None, "online")
    WandbLogger(tmp_path, mode="disabled").close()
    assert fake.calls[2][1]["mode"] == "disabled"


def _fake_mlflow(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    record = types.SimpleNamespace(uri=None, experiments=[], batches=[], terminated=[])
    entities = types.ModuleType("mlflow.entities")
    entities.Metric = lambda key, value, ts, step: ("metric", key, value, step)  # type: ignore[attr-defined]
    entities.Param = lambda key, value: ("param", key, value)  # type: ignore[attr-defined]

    class Client:
        def __init__(self, tracking_uri=None):
            record.uri = tracking_uri

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name):
            record.experiments.append(name)
            return "7"

        def create_run(self, experiment_id, run_name=None):
            assert experiment_id == "7"
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id=f"run-{run_name}"))

        def log_batch(self, run_id, metrics=(), params=()):
            record.batches.append((run_id, list(metrics), list(params)))

        def set_terminated(self, run_id):
            record.terminated.append(run_id)

    fake = types.ModuleType("mlflow")
    fake.MlflowClient = Client  # type: ignore[attr-defined]
    fake.entities = entities  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    return record


def test_mlflow_missing_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeadapt\[mlflow\]'"):
        MLflowLogger(tmp_path)


def test_mlflow_file_store_and_string_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    record = _fake_mlflow(monkeypatch)
    logger = MLflowLogger(tmp_path / "r")
    _log_all(logger)
    logger.log_params({"long": "x" * 600})
    logger.close()
    logger.close()  # idempotent
    assert record.uri == (tmp_path / "r" / "mlruns").resolve().as_uri() and record.uri.startswith("file:")
    assert record.experiments == ["edgeadapt"]
    params = {p[1]: p[2] for _, _, ps in record.batches for p in ps}
    assert params == {**{k: str(v) for k, v in FLAT.items()}, "long": "x" * 497 + "..."}
    metrics = [(m[3], m[1], m[2]) for _, ms, _ in record.batches for m in ms]
    assert metrics == [(s, k, v) for s, ms in STEPS for k, v in ms.items()]
    assert {run for run, _, _ in record.batches} == {"run-r"} and record.terminated == ["run-r"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    MLflowLogger(tmp_path / "r2").close()
    assert record.uri == "http://tracking.example:5000"


def test_import_is_lazy() -> None:
    heavy = ("tensorboard", "wandb", "mlflow", "matplotlib", "torch")
    code = ("import sys, edgeadapt.tracking as t; t.make_logger; t.CSVLogger; t.plot_curves; "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_logger_validates_tracker(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tracker") as info:
        make_logger(tmp_path, ["csv", "tensorbord"])
    assert all(b in str(info.value) for b in BACKENDS)
    with pytest.raises(ValueError, match="tracker"):
        make_logger(tmp_path, ["none", "csv"])
    with pytest.raises(ValueError, match="tracker"):
        make_logger(tmp_path, ["csv"], wandb={"project": "p"})
    assert isinstance(make_logger(tmp_path, "none"), NullLogger)
    logger = make_logger(tmp_path, "csv")
    assert isinstance(logger, CSVLogger)
    logger.close()


def test_multilogger_closes_all_and_reraises_first() -> None:
    closed: list[str] = []

    class Fake(NullLogger):
        def __init__(self, name: str, fail: bool) -> None:
            self.name, self.fail = name, fail

        def close(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise RuntimeError(f"{self.name} failed")

    multi = MultiLogger([Fake("a", False), Fake("b", True), Fake("c", True), Fake("d", False)])
    with pytest.raises(RuntimeError, match="b failed"):
        multi.close()
    assert closed == ["a", "b", "c", "d"]


def test_new_run_dir(tmp_path: Path) -> None:
    first, second = new_run_dir(tmp_path), new_run_dir(tmp_path)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name.startswith(first.name[:15])  # YYYYmmdd-HHMMSS, maybe with a -N suffix
    named = new_run_dir(tmp_path, "exp")
    (named / "metrics.csv").write_text("step,name,value\n")
    with pytest.raises(OutputExistsError, match="exist_ok"):
        new_run_dir(tmp_path, "exp")
    assert new_run_dir(tmp_path, "exp", exist_ok=True) == named
    with pytest.raises(ValueError):
        new_run_dir(tmp_path, "../escape")


def test_plot_curves_from_metrics_csv(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    for step in range(20):
        logger.log_metrics({"train/loss": 1 / (step + 1), "val_loss": 1.2 / (step + 1),
                            "val/acc": step / 20, "lr": 1e-3 * 0.8**step, "gpu_mem": 5.0}, step)
    logger.close()
    out = plot_curves(tmp_path / "metrics.csv", tmp_path / "plots" / "curves.png", title="run")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    with pytest.raises(ValueError, match="nope"):
        plot_curves(tmp_path, tmp_path / "x.png", keys=["nope"])


def test_metric_family() -> None:
    names = ("train/loss", "val/acc", "top1acc", "optim/lr", "grad_accum", "gpu_mem")
    expected = ["loss", "accuracy", "accuracy", "lr", "grad_accum", "gpu_mem"]
    assert [metric_family(n) for n in names] == expected
