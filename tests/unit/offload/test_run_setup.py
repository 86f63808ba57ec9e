"""What ``offload run`` checks before its first request (:mod:`edgeadapt.offload.run_setup`): the
address, the server's chain and the edge/cloud pick of a profile's devices — each a ConfigError
naming the flag, the value and the fix. No model, no server."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest

from edgeadapt.cli.main import main
from edgeadapt.errors import ConfigError
from edgeadapt.offload.profile import ChainProfile, DeviceProfile
from edgeadapt.offload.run import OffloadRunConfig, run_offload
from edgeadapt.offload.run_setup import check_address, check_server, edge_cloud_profile, profile_path


@dataclass
class _Chain:
    """The three things check_server reads of a RuntimeChain."""

    name: str = "m"
    weights_hash: str = "a" * 64
    exits_hash: str | None = "e" * 64

    def __len__(self) -> int:
        return 3


@pytest.mark.parametrize("server", ["127.0.0.1:50051", "[::1]:1", "host:65535"])
def test_check_address_accepts_host_port(server):
    check_address(server)


@pytest.mark.parametrize("server", ["localhost", ":50051", "h:0", "h:65536", "h:port"])
def test_check_address_refuses_with_the_flag_and_an_example(server):
    with pytest.raises(ConfigError, match=r"--server: .* is not HOST:PORT \(e\.g\. 127\.0\.0\.1:50051"):
        check_address(server)


def test_check_server_refuses_other_weights_and_other_exit_heads():
    chain = _Chain()
    same = {"model": "m", "blocks": 3, "weights_hash": chain.weights_hash, "exits_hash": chain.exits_hash}
    check_server(same, chain, "h:1", exits=True)
    with pytest.raises(ConfigError, match="serve and run the same model"):
        check_server({**same, "weights_hash": "b" * 64}, chain, "h:1")
    with pytest.raises(ConfigError, match="serve and run the same model"):
        check_server({**same, "blocks": 4}, chain, "h:1")
    check_server({**same, "exits_hash": None}, chain, "h:1")  # no exits planned: heads don't matter
    with pytest.raises(ConfigError, match="no exit heads .* --no-exits"):
        check_server({**same, "exits_hash": None}, chain, "h:1", exits=True)


def _profile(*names: str) -> ChainProfile:
    devices = [DeviceProfile(n, 1.0, 1, 2**30) for n in names]
    return ChainProfile("m", ["b0"], [1.0], devices, 1, 100, 0.9, [[]], [])


def test_edge_cloud_profile_picks_two_devices_edge_first():
    assert [d.name for d in edge_cloud_profile(_profile("pi", "gpu", "tpu")).devices] == ["pi", "gpu"]
    picked = edge_cloud_profile(_profile("pi", "gpu", "tpu"), "tpu", "pi")
    assert [d.name for d in picked.devices] == ["tpu", "pi"]
    with pytest.raises(ConfigError, match=r"--cloud-device None: the profile's devices are \['pi'\]"):
        edge_cloud_profile(_profile("pi"))
    with pytest.raises(ConfigError, match="--edge-device 'x'"):
        edge_cloud_profile(_profile("pi", "gpu"), "x")
    with pytest.raises(ConfigError, match="--cloud-device 'pi'"):
        edge_cloud_profile(_profile("pi", "gpu"), "pi", "pi")


def test_profile_path_needs_a_descendants_artifact_or_a_profile(tmp_path):
    assert profile_path(str(tmp_path), str(tmp_path / "p.json")) == tmp_path / "p.json"
    with pytest.raises(ConfigError, match="--floor needs a descendants artifact .* or\n?.*--profile"):
        profile_path(str(tmp_path), None)


def test_no_exits_with_a_split_is_refused_not_ignored(tmp_path, capsys):
    """Before: `--split 2 --no-exits` ran as if the flag were absent (it has no effect on a split)."""
    with pytest.raises(ConfigError, match="--no-exits with --split"):
        run_offload(OffloadRunConfig("tiny-resnet", "127.0.0.1:9", b"t" * 16, split=2, use_exits=False))
    token = tmp_path / "token"
    token.write_text("t" * 16)
    token.chmod(0o600)
    assert main(["offload", "run", "--model", "tiny-resnet", "--server", "127.0.0.1:9", "--token-file",
                 str(token), "--split", "2", "--no-exits"]) == 2
    assert "drop --no-exits" in capsys.readouterr().err


def test_a_profile_from_elsewhere_drops_the_exits_with_a_warning(tmp_path):
    """Before (review): `run --profile OTHER/profile.json` on an artifact with exit heads planned the
    whole chain only, silently (exits.json is read beside the profile)."""
    from types import SimpleNamespace

    from edgeadapt.offload.run_setup import load_exits

    chain = SimpleNamespace(exits=[object(), object()])
    with pytest.warns(UserWarning, match=r"has 2 exit heads but .* holds no exits.json: planning the whole"):
        assert load_exits(tmp_path / "profile.json", chain, None, "art") == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_exits(tmp_path / "profile.json", SimpleNamespace(exits=[]), None, "art") == []
