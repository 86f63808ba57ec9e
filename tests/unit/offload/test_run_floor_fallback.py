"""``offload run --floor`` when the server is down from the start and the edge's memory is small: the
edge-only choice must still meet the floor (an exit when only an exit fits), and when nothing fits the
run stops with a user error naming the edge's memory — never the whole chain run silently below the
floor. The report says whether the measured accuracy met the floor (a warning when not), and a
request size other than the profile's is warned about. A small artifact built here (tiny-resnet on
digits, one epoch, exits trained one epoch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeadapt.cli.main import main
from edgeadapt.errors import InfeasibleError
from edgeadapt.offload.build import EXITS_FILE, PROFILE_FILE, OffloadBuildConfig, build_exits
from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD, ChainProfile
from edgeadapt.offload.run import OffloadRunConfig, run_offload
from edgeadapt.offload.run_setup import least_memory
from edgeadapt.offload.serve import ServeConfig, load_chain, start_server
from tests.unit.offload.conftest import StopAfter, trained_tiny_resnet

TOKEN = b"fallback-token-01"
DOWN = "127.0.0.1:9"  # the discard port: nothing listens


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(out dir, profile, exit profiles)``: widths 1 and 0.5, exit heads, edge and cloud profiled."""
    adapter, _ = trained_tiny_resnet(epochs=1)
    out = tmp_path_factory.mktemp("fallback")
    cfg = OffloadBuildConfig("tiny-resnet", widths=(1.0, 0.5), epochs=1, batch_size=128, warmup=0, repeats=2,
                             checks=0, exit_epochs=1)
    _, profile, exits = build_exits(cfg, out, devices=[EMULATED_EDGE, LOCAL_CLOUD], adapter=adapter)
    return out, profile, exits


def with_edge_memory(built, where: Path, memory_bytes: int, perfect: bool = False) -> str:
    """A copy of the built profile (and exits.json) whose edge has ``memory_bytes``; its path. With
    ``perfect`` the profile claims accuracy 1 at every width (a plan then meets any floor on paper)."""
    out, profile, _ = built
    where.mkdir()
    data = profile.to_dict()
    data["devices"][0]["memory_bytes"] = memory_bytes
    if perfect:
        data["base_accuracy"] = 1.0
        for row in data["rows"]:
            for r in row:
                r["acc_drop"] = 0.0
    ChainProfile.from_dict(data).save(where / PROFILE_FILE)
    shutil.copy(out / EXITS_FILE, where / EXITS_FILE)
    return str(where / PROFILE_FILE)


def test_nothing_fitting_the_edge_with_the_server_down_is_an_error_naming_the_memory(built, tmp_path,
                                                                                     token_file, capsys):
    out, _, exits = built
    prof = with_edge_memory(built, tmp_path / "tiny", 1000)
    floor = round(min(ex.accuracy for ex in exits) - 0.01, 3)  # every exit meets it: one exists
    with pytest.raises(InfeasibleError, match="1,000 bytes"):
        run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, floor=floor, limit=8, profile=prof,
                                     timeout_s=1.0))
    for extra in ([], ["--json"]):  # was: text KeyError 'floor'; --json exit 0, whole chain below the floor
        code = main(["offload", "run", "--model", str(out), "--server", DOWN, "--token-file", str(token_file),
                     "--floor", str(floor), "--limit", "8", "--profile", prof, "--timeout", "1", *extra])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == ""
        assert "edge's memory" in captured.err and "'edge': 1,000 bytes" in captured.err
        assert "unreachable" in captured.err and "Traceback" not in captured.err
        need = least_memory(ChainProfile.load(prof), exits, floor)
        assert f"needs at least {need[0]:,} bytes" in " ".join(captured.err.split())


def test_an_exit_that_fits_the_edge_is_taken_when_the_whole_chain_does_not(built, tmp_path):
    out, profile, exits = built
    first = exits[0]
    block0 = min(r.mem_bytes for r in profile.rows[0])
    chain = sum(min(r.mem_bytes for r in row) for row in profile.rows)
    memory = block0 + first.mem_bytes
    assert chain > memory  # the whole chain cannot run on this edge
    prof = with_edge_memory(built, tmp_path / "small", memory)
    floor = round(first.accuracy - 0.01, 3)
    with pytest.warns(UserWarning, match="exit after block 0 on the edge") as caught:
        report = run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, floor=floor, limit=8, profile=prof,
                                              timeout_s=1.0))
    assert "every block" not in str(caught[0].message)
    assert report.mode == "edge-only" and report.exit_block == 0
    assert report.placement["predicted_accuracy"] >= floor and report.placement["floor"] == floor
    assert "exit after block" in report.summary()
    json.dumps(report.to_dict())


def test_a_measured_accuracy_below_the_floor_is_flagged(built, tmp_path, token_file, capsys):
    out, _, _ = built
    prof = with_edge_memory(built, tmp_path / "perfect", 1 << 40, perfect=True)
    with pytest.warns(UserWarning, match=r"below --floor 1.*planned on the profile's val accuracy"):
        report = run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, floor=1.0, limit=32, profile=prof,
                                              timeout_s=1.0, use_exits=False))
    assert report.placement["predicted_accuracy"] == 1.0 and report.accuracy < 1.0
    assert report.floor_met is False and report.to_dict()["floor_met"] is False
    assert "floor NOT met" in report.summary()
    low = run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, floor=0.05, limit=32, timeout_s=1.0))
    assert low.floor_met is True and "floor met" in low.summary()
    split = run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, split=5, limit=8))  # edge-only, no floor
    assert split.floor_met is None and split.to_dict()["floor_met"] is None
    assert main(["offload", "run", "--model", str(out), "--server", DOWN, "--token-file", str(token_file),
                 "--floor", "1", "--limit", "32", "--profile", prof, "--timeout", "1", "--no-exits",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["floor_met"] is False
    assert [line for line in captured.err.splitlines() if "below --floor" in line]


def test_a_batch_size_other_than_the_profiles_is_warned_about(built):
    out, profile, _ = built
    assert profile.batch_size == 1
    with pytest.warns(UserWarning, match=r"--batch-size 4 differs from the profile's batch size 1.*"
                      r"--profile-batch-size 4"):
        report = run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, floor=0.05, limit=8, batch_size=4,
                                              timeout_s=1.0))
    assert report.batch_size == 4


def test_a_server_lost_mid_run_keeps_the_planned_widths_beyond_a_small_edge_and_says_so(built, tmp_path):
    out, profile, _ = built
    prof = with_edge_memory(built, tmp_path / "tiny", 1000)  # nothing fits the edge: blocks go to the cloud
    running = start_server(load_chain(out / "descendants"), TOKEN, ServeConfig(port=0))
    try:
        cfg = OffloadRunConfig(str(out), f"127.0.0.1:{running.port}", TOKEN, floor=0.05, limit=12,
                               profile=prof, timeout_s=1.0)
        with pytest.warns(UserWarning, match="unreachable at request") as caught:
            report = run_offload(cfg, StopAfter(running, 10 + 2 * 3 + 1))  # probes, then 3 requests
    finally:
        running.stop(grace=0)
    fell = [str(w.message) for w in caught if "unreachable at request" in str(w.message)]
    assert "beyond the edge's memory (1,000 bytes" in fell[0]
    assert report.fallback is not None and report.placement["predicted_accuracy"] >= 0.05
    assert report.requests_by_mode["edge-only"] >= 1 and report.floor_met is not None
