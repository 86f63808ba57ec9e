"""Data-parallel training through accelerate: two CPU processes (gloo) launched by torchrun end
with the weights one process reaches on the union of their batches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from edgeadapt.models.registry import load_adapter

WORKER = textwrap.dedent("""
    import os, sys
    from safetensors.torch import save_file
    from edgeadapt.data.digits import digits_tensors, image_batches
    from edgeadapt.models.registry import load_adapter
    from edgeadapt.training.loop import TrainConfig, fit

    x, y = digits_tensors("train")
    x, y = x[:64], y[:64]
    adapter = load_adapter("tiny-vit", seed=0)
    adapter.model.eval()  # no dropout noise
    cfg = TrainConfig(epochs=1, learning_rate=0.1, optimizer="sgd", weight_decay=0.0, schedule="constant",
                      warmup_fraction=0.0, grad_clip=None, progress=False, device="cpu")
    result = fit(adapter, lambda e: image_batches(x, y, int(sys.argv[2])), cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        save_file({k: v.contiguous() for k, v in adapter.model.state_dict().items()}, sys.argv[1])
        print("steps", result.steps)
    import torch.distributed as dist
    if dist.is_initialized():  # a clean teardown: exiting with gloo threads alive can abort a rank
        dist.barrier()
        dist.destroy_process_group()
""")


@pytest.mark.slow  # two torchrun processes: ~10 s
def test_two_ranks_match_one_process_on_the_combined_batches(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # 2 ranks x batches of 16: rank r takes batches r, r+2; averaged gradients = one batch of 32.
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "ddp.safetensors"), "16"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "steps 2" in ddp.stdout
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one.safetensors"), "32"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = load_file(str(tmp_path / "ddp.safetensors")), load_file(str(tmp_path / "one.safetensors"))
    start = load_adapter("tiny-vit", seed=0).model.state_dict()
    assert sum(not torch.equal(a[k], start[k]) for k in a) > 10  # training happened
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
