"""Early exits end to end: `offload build` saves exit heads in the artifact (verified on load) and
their profile in exits.json; `offload serve` runs "blocks then exit head"; `offload run --floor`
plans with solve_with_exits, runs the prefix and the head on the devices placed and reports the
exit; `--no-exits` and artifacts without exits keep the whole chain. A small artifact built here
(tiny-resnet on digits, one epoch of distillation and of exit training)."""

from __future__ import annotations

import json
import socket
from dataclasses import replace

import pytest
import torch

from edgeadapt.cli.main import main
from edgeadapt.errors import ArtifactError, ConfigError
from edgeadapt.offload.artifact import load_descendants, load_exit_heads, save_descendants
from edgeadapt.offload.build import (
    EXITS_FILE,
    PROFILE_FILE,
    OffloadBuildConfig,
    build_exits,
    load_exit_profiles,
    save_exit_profiles,
)
from edgeadapt.offload.client import OffloadClient
from edgeadapt.offload.exits import ExitHead, exit_accuracies, train_exit_heads
from edgeadapt.offload.fuzz import fuzz_server
from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD, ChainProfile
from edgeadapt.offload.run import OffloadRunConfig, run_offload, steps
from edgeadapt.offload.serve import ServeConfig, chain_from_descendants, load_chain, start_server
from edgeadapt.offload.transport import encode_frame
from tests.unit.offload.conftest import trained_tiny_resnet

TOKEN = b"exits-token-0123"
SERVER = "127.0.0.1:{}"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(out dir, descendants, profile, exit profiles, digits splits)``: widths 1 and 0.5, exits
    trained one epoch, profiled on the emulated edge and this machine."""
    adapter, splits = trained_tiny_resnet(epochs=1)
    out = tmp_path_factory.mktemp("exits")
    cfg = OffloadBuildConfig("tiny-resnet", widths=(1.0, 0.5), epochs=1, batch_size=128, warmup=0, repeats=2,
                             checks=0, exit_epochs=1)
    desc, profile, exits = build_exits(cfg, out, devices=[EMULATED_EDGE, LOCAL_CLOUD], adapter=adapter)
    return out, desc, profile, exits, splits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def crafted(built, tmp_path, edge_head_s: float, cloud_head_s: float) -> str:
    """A copy of the built profile with exits.json beside it where exit 0 meets any floor (accuracy 1,
    no drops) and its head takes the given seconds per device, no other exit meets one (accuracy 0)
    and every block after the first takes 10 s anywhere: a plan that certainly stops at exit 0, with
    its head where it is cheap. Returns the profile's path (for ``--profile``)."""
    out, _, profile, exits, _ = built
    where = tmp_path / "crafted"
    where.mkdir()
    slow = ChainProfile.from_dict(profile.to_dict())
    for row in slow.rows[1:]:
        for r in row:
            r.latency_s = {name: 10.0 for name in r.latency_s}
    slow.save(where / PROFILE_FILE)
    first = replace(exits[0], accuracy=1.0, drops=(),
                    latency_s={"edge": edge_head_s, "cloud": cloud_head_s})
    rest = [replace(ex, accuracy=0.0) for ex in exits[1:]]
    save_exit_profiles([first, *rest], where / EXITS_FILE, profile.batch_size)
    return str(where / PROFILE_FILE)


def test_build_saves_exit_heads_and_their_profile_and_the_loaded_heads_score_as_built(built):
    out, desc, profile, exits, splits = built
    heads = load_exit_heads(out / "descendants")
    assert len(heads) == len(desc.names) - 2 == len(exits)
    assert [ex.block for ex in exits] == list(range(len(heads)))
    batch_size, saved = load_exit_profiles(out / EXITS_FILE)
    assert batch_size == profile.batch_size and saved == exits
    assert all(set(ex.latency_s) == {"edge", "cloud"} and len(ex.drops) == ex.block + 1 for ex in exits)
    # the accuracies recorded at build time are those of the heads as loaded back
    val = list(splits.val.batches(256))
    full = load_descendants(out / "descendants").chain([1.0] * len(desc.names))
    assert exit_accuracies(full, heads, val) == [ex.accuracy for ex in exits]
    chain = load_chain(out)
    assert len(chain.exits) == len(heads) and chain.exits_hash is not None


def test_saved_heads_give_identical_logits_and_a_tampered_head_file_is_refused(built, tmp_path):
    _, desc, _, _, splits = built
    full = desc.chain([1.0] * len(desc.names))
    train = list(splits.train.batches(256, shuffle=True, seed=0))[:2]
    heads = train_exit_heads(full, train, 10, epochs=1)
    save_descendants(desc, tmp_path / "a", heads=heads)
    loaded = load_exit_heads(tmp_path / "a")
    x = splits.test.images[:16]
    with torch.no_grad():
        outs = full.trace(x)
        for e, (head, again) in enumerate(zip(heads, loaded)):
            assert torch.equal(head(outs[e]), again(outs[e]))
    path = tmp_path / "a" / "exits.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="exits.safetensors is corrupted or was modified"):
        load_exit_heads(tmp_path / "a")
    with pytest.raises(ArtifactError, match="exits.safetensors"):
        load_chain(tmp_path / "a")
    # an artifact written without heads (as before exits existed) loads with none
    save_descendants(desc, tmp_path / "b")
    assert load_exit_heads(tmp_path / "b") == [] and load_chain(tmp_path / "b").exits_hash is None
    assert "exits" not in json.loads((tmp_path / "b" / "manifest.json").read_text())


def test_the_server_runs_blocks_then_an_exit_head_and_refuses_a_bad_exit(built, server):
    out, desc, _, _, splits = built
    heads = load_exit_heads(out / "descendants")
    x = splits.test.images[:8]
    client = OffloadClient(SERVER.format(server.port), TOKEN)
    try:
        info = client.info()
        assert info["exits"] == list(range(len(heads))) and info["exits_hash"] == load_chain(out).exits_hash
        widths = [0.5, 1.0]
        chain = desc.chain(widths + [1.0] * (len(desc.names) - 2))
        with torch.no_grad():
            h = chain(x, 0, 2)
            expected = heads[1](h)
        torch.testing.assert_close(client.run(0, 2, x, widths, exit_block=1), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(client.run(2, 2, h, [], exit_block=1), expected, atol=1e-5, rtol=0)
        for start, end, e in ((0, 3, 1), (0, 2, 99), (0, 2, -1)):  # not right after block e; no such exit
            with pytest.raises(ConfigError, match="INVALID_ARGUMENT"):
                client.run(start, end, x, None, exit_block=e)
        assert client.info()["blocks"] == len(desc.names)  # still serving
    finally:
        client.close()


def test_steps_put_the_exit_head_on_the_last_call():
    assert steps([0, 0, 1], 1) == [(0, 2, None, 0), (2, 2, 1, 1)]  # head alone on the server
    assert steps([0, 1, 1], 1) == [(0, 1, None, 0), (1, 2, 1, 1)]
    assert steps([1, 1, 0], 1) == [(0, 2, None, 1), (2, 2, 1, 0)]
    assert steps([0, 1, 1, 1, 1], None) == [(0, 1, None, 0), (1, 5, None, 1)]


def test_a_plan_stopping_at_an_exit_with_its_head_on_the_server_runs_it_and_reports_it(built, server,
                                                                                      tmp_path, capsys):
    out, desc, profile, _, splits = built
    prof = crafted(built, tmp_path, edge_head_s=10.0, cloud_head_s=1e-6)
    cfg = OffloadRunConfig(str(out), SERVER.format(server.port), TOKEN, floor=profile.base_accuracy, limit=16,
                           profile=prof)
    report = run_offload(cfg)
    assert report.exit_block == 0 and report.placement["exit_block"] == 0
    assert report.placement["exit_device"] == "cloud"
    assert report.requests_by_exit == {"exit-0": report.requests}
    assert [b["block"] for b in report.placement["blocks"]] == desc.names[:1]
    heads = load_exit_heads(out / "descendants")
    width = report.placement["blocks"][0]["width"]
    with torch.no_grad():
        prefix = desc.chain([width] + [1.0] * (len(desc.names) - 1))(splits.test.images[:16], 0, 1)
        expected = heads[0](prefix)
    torch.testing.assert_close(report.logits, expected, atol=1e-5, rtol=0)
    assert report.accuracy > 0.1 and "exit after block 0 (resnet.embedder)" in report.summary()
    # the CLI reports it in --json; --no-exits places the whole chain
    args = ["offload", "run", "--model", str(out), "--server", SERVER.format(server.port), "--token-file",
            str(tmp_path / "t"), "--floor", str(profile.base_accuracy), "--limit", "8", "--profile", prof,
            "--json"]
    (tmp_path / "t").write_text(TOKEN.decode())
    (tmp_path / "t").chmod(0o600)
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exit_block"] == 0 and data["placement"]["exit_device"] == "cloud"
    assert main([*args, "--no-exits"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exit_block"] is None and data["placement"]["exits"] == []
    assert [b["block"] for b in data["placement"]["blocks"]] == desc.names


def test_a_floor_run_on_the_built_exits_classifies_as_the_composition_it_reports(built, server):
    """With the artifact's own exits.json (here exits 1 and 2 score at least the full chain on val):
    whatever end the plan picks, the logits are those of the reported composition, run locally."""
    out, desc, profile, _, splits = built
    report = run_offload(OffloadRunConfig(str(out), SERVER.format(server.port), TOKEN,
                                          floor=profile.base_accuracy, limit=64))
    p = report.placement
    assert p["exits"] == [0, 1, 2] and p["predicted_accuracy"] >= profile.base_accuracy - 1e-9
    widths = [b["width"] for b in p["blocks"]]
    x = splits.test.images[:64]
    with torch.no_grad():
        chain = desc.chain(widths + [1.0] * (len(desc.names) - len(widths)))
        if report.exit_block is None:
            expected = chain(x)
        else:
            expected = load_exit_heads(out / "descendants")[report.exit_block](chain(x, 0, len(widths)))
    torch.testing.assert_close(report.logits, expected, atol=1e-5, rtol=0)
    assert report.accuracy >= 0.6 and report.fallback is None


def test_edge_only_fallback_may_stop_at_an_exit(built, tmp_path):
    out, _, profile, _, _ = built
    prof = crafted(built, tmp_path, edge_head_s=1e-6, cloud_head_s=1e-6)
    with pytest.warns(UserWarning, match="unreachable"):
        report = run_offload(OffloadRunConfig(str(out), SERVER.format(free_port()), TOKEN,
                                              floor=profile.base_accuracy, limit=8, profile=prof,
                                              timeout_s=1.0))
    assert report.mode == "edge-only" and report.exit_block == 0 and report.placement["exit_device"] == "edge"


def test_an_edge_refuses_exits_a_server_does_not_serve_identically(built):
    out, desc, profile, _, _ = built
    plain = start_server(chain_from_descendants(load_descendants(out / "descendants"), "no exits"), TOKEN,
                         ServeConfig(port=0))
    try:
        cfg = OffloadRunConfig(str(out), SERVER.format(plain.port), TOKEN, floor=profile.base_accuracy - 0.05,
                               limit=8)
        with pytest.raises(ConfigError, match="no exit heads.*--no-exits"):
            run_offload(cfg)
        report = run_offload(replace(cfg, use_exits=False))
        assert report.exit_block is None and report.samples == 8
    finally:
        plain.stop(grace=0)
    torch.manual_seed(1)
    others = [ExitHead(h.linear.in_features, 10).eval() for h in load_exit_heads(out / "descendants")]
    other = start_server(chain_from_descendants(load_descendants(out / "descendants"), "other", others),
                         TOKEN, ServeConfig(port=0))
    try:
        with pytest.raises(ConfigError, match="serves exit heads .* but this edge plans with exit heads"):
            run_offload(replace(cfg, server=SERVER.format(other.port)))
    finally:
        other.stop(grace=0)


def test_an_artifact_without_exits_runs_the_whole_chain(built, server, tmp_path):
    """A build without exits (exits.json absent, no heads) places the whole chain and reports no exit;
    its server still answers Info with no exits."""
    out, desc, profile, _, _ = built
    old = tmp_path / "old"
    save_descendants(desc, old / "descendants")
    ChainProfile.load(out / PROFILE_FILE).save(old / PROFILE_FILE)
    running = start_server(load_chain(old), TOKEN, ServeConfig(port=0))
    try:
        report = run_offload(OffloadRunConfig(str(old), SERVER.format(running.port), TOKEN,
                                              floor=profile.base_accuracy - 0.05, limit=8))
        assert report.exit_block is None and report.placement["exits"] == []
        assert report.requests_by_exit == {"full": report.requests}
    finally:
        running.stop(grace=0)


def test_malformed_exit_fields_are_refused_and_the_server_keeps_answering(built, server):
    """The fuzz harness's ``fields`` corruptions (now with bad ``exit`` values) against a server
    that has exit heads: every one refused, none a crash, the valid exit request answered after.
    (Found: ``"widths": [true]`` on a one-block range was run as width 1.0 — bool is an int.)"""
    out, desc, _, _, splits = built
    chain = load_chain(out / "descendants")
    h = chain.run(0, 1, splits.test.images[:2])  # block 1's input: a frame starting at block 1
    frame = encode_frame(h, {"start": 1, "end": 2, "exit": 1})
    report = fuzz_server(SERVER.format(server.port), TOKEN, frame, chain.run(1, 2, h, None, exit_block=1),
                         n=60, seed=3, kinds=("fields",))
    assert report.crashes == 0 and report.final_ok, report.to_dict()
    assert report.by_kind == {"fields": 60} and set(report.by_status) == {"INVALID_ARGUMENT"}
    with pytest.raises(ConfigError, match="subset"):
        fuzz_server(SERVER.format(server.port), TOKEN, frame, h, n=1, kinds=("nonsense",))
