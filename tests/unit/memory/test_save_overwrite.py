"""``memory plan --save FILE`` refuses an existing FILE unless ``--overwrite``.

Before: an existing plan file was silently replaced by the new search's choice.
"""

from __future__ import annotations

import pytest

from edgeadapt.cli.main import main


class _Loaded(Exception):
    """Raised in place of loading the model: the command got past its output checks."""


def test_an_existing_save_file_is_refused_before_the_model_loads_with_the_fix(tmp_path, capsys, monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError("the model loaded before the --save refusal")

    monkeypatch.setattr("edgeadapt.pruning.checkpoint.load_model", never)
    saved = tmp_path / "plan.json"
    saved.write_text("{\"kind\": \"memory-plan\"}\n")
    assert main(["memory", "plan", "tiny-resnet", "--budget", "1MiB", "--save", str(saved)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeadapt memory plan: error: --save")
    assert str(saved) in err and "--overwrite" in err
    assert saved.read_text() == "{\"kind\": \"memory-plan\"}\n"


@pytest.mark.parametrize("exists", [True, False])
def test_overwrite_or_a_new_file_passes_the_check(tmp_path, monkeypatch, exists):
    def loaded(*_args, **_kwargs):
        raise _Loaded

    monkeypatch.setattr("edgeadapt.pruning.checkpoint.load_model", loaded)
    saved = tmp_path / "plan.json"
    argv = ["memory", "plan", "tiny-resnet", "--budget", "1MiB", "--save", str(saved)]
    if exists:
        saved.write_text("{}")
        argv.append("--overwrite")
    with pytest.raises(_Loaded):
        main(argv)
