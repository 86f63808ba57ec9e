"""A bf16 or fp16 checkpoint goes through every stage, and every artifact keeps its dtype.

The tiny ViT saved in half precision as a Hugging Face directory runs train -> prune -> offline
lora/kb/index -> adapt through the CLI (in process); a tiny Llama saved the same way runs
llm-prune. Training keeps float32 master weights and writes the result in the checkpoint's dtype;
the LoRA merge is checked in float32 and its rounding to the half dtype within that dtype's
tolerance (before: `offline lora` on a bf16 checkpoint was refused, merge diff 4.9e-3 > 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from edgeadapt.cli.main import main
from edgeadapt.models.registry import load_adapter
from edgeadapt.numerics import stored_dtypes, tolerance
from edgeadapt.pruning.checkpoint import load_model

QUICK = {"epochs": 1, "batch_size": 32, "max_steps": 3, "learning_rate": 2e-3, "progress": False,
         "device": "auto"}


def half_checkpoint(name: str, dtype: torch.dtype, out: Path) -> Path:
    """A built-in tiny model saved in ``dtype`` as a plain Hugging Face directory (with tokenizer)."""
    adapter = load_adapter(name)
    adapter.model.to(dtype).save_pretrained(out)
    if adapter.tokenizer is not None:
        adapter.tokenizer.save_pretrained(out)
    return out


def weight_dtypes(artifact: Path) -> set[torch.dtype]:
    return set(stored_dtypes(artifact / "model.safetensors").values())


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def precision(dtype: torch.dtype) -> str:
    """bf16 autocast runs on CPU and CUDA; fp16 autocast needs CUDA, so an fp16 model trains in
    float32 compute on CPU (its master weights are float32 either way)."""
    return "bf16" if dtype == torch.bfloat16 else ("fp16" if torch.cuda.is_available() else "fp32")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_vit_goes_through_every_stage(dtype, tmp_path):
    source = half_checkpoint("tiny-vit", dtype, tmp_path / "hf")
    loop = {**QUICK, "precision": precision(dtype)}
    train = write(tmp_path / "train.yaml", {"kind": "train", "model": str(source), "data": {"name": "digits"},
                                            "train": loop, "tracking": {"backends": ["csv"]},
                                            "out": str(tmp_path / "train")})
    assert main(["--quiet", "train", "--config", str(train)]) == 0
    assert weight_dtypes(tmp_path / "train") == {dtype}
    assert {p.dtype for p in load_model(tmp_path / "train").model.parameters()} == {dtype}

    assert main(["--quiet", "prune", str(tmp_path / "train"), "--unit-sparsity", "0.25", "--target",
                 "heads,neurons", "--importance", "taylor", "--calibration-batches", "2",
                 "--out", str(tmp_path / "pruned")]) == 0
    assert weight_dtypes(tmp_path / "pruned") == {dtype}

    offline = write(tmp_path / "offline.yaml", {
        "kind": "offline", "model": str(tmp_path / "train"), "data": {"name": "digits"},
        "lora": {"settings": {"rank": 4}, "train": loop},
        "kb": {"settings": {"calibration_batches": 1}, "train": loop, "widths": [0.5, 1.0]},
        "tracking": {"backends": ["csv"]}, "out": str(tmp_path / "offline")})
    assert main(["--quiet", "offline", "all", "--config", str(offline)]) == 0
    lora = json.loads((tmp_path / "offline" / "lora" / "lora.json").read_text())["report"]
    rtol, atol = tolerance(torch.float32, depth=4)
    assert lora["merge_max_abs_diff"] <= atol + rtol * 10  # the merge itself is checked in float32
    assert lora["dtype"] == str(dtype).removeprefix("torch.") and lora["cast_max_abs_diff"] > 0
    assert weight_dtypes(tmp_path / "offline" / "lora") == {dtype}
    assert weight_dtypes(tmp_path / "offline" / "kb" / "model") == {dtype}
    index = json.loads((tmp_path / "offline" / "index" / "manifest.json").read_text())
    assert index["config"]["round_trip_max_diff"] == 0.0  # a permutation is exact in any dtype

    assert main(["--quiet", "adapt", "--offline", str(tmp_path / "offline"), "--stream", "fog:3",
                 "--methods", "source,edgeadapt", "--width", "0.5", "--steps", "2",
                 "--out", str(tmp_path / "adapt")]) == 0
    results = json.loads((tmp_path / "adapt" / "results.json").read_text())
    assert results


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_llama_goes_through_llm_prune(dtype, tmp_path):
    source = half_checkpoint("tiny-llama", dtype, tmp_path / "hf")
    config = write(tmp_path / "prune.yaml", {
        "kind": "llm-prune", "model": str(source), "dataset": "builtin-docs", "seq_len": 32,
        "batch_size": 8, "param_sparsity": 0.3, "targets": ["heads", "neurons"],
        "pruning": {"importance": "taylor", "calibration_batches": 1},
        "recovery": {"method": "lora", "max_train_blocks": 16, "lora": {"rank": 4, "alpha": 8},
                     "learning_rate": 1e-2, "epochs": 1, "patience": None, "precision": precision(dtype)},
        "evaluation": {"max_eval_tokens": 512, "sweep": []}, "tracker": "none",
        "save": str(tmp_path / "model"), "log_dir": str(tmp_path / "logs")})
    assert main(["--quiet", "llm-prune", "--config", str(config), "--mode", "train"]) == 0
    assert weight_dtypes(tmp_path / "model") == {dtype}
    metrics = json.loads((tmp_path / "model" / "prune_metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("dense_ppl", "pruned_ppl", "recovered_ppl"))
