"""A bad ``--stream`` value is named by the flag, the value and the domain's place, with the fix.

Before: ``edgeadapt adapt --stream gaussian_noise:9`` said ``stream[0]: severity must be ...``, the
config field's list index, not the flag the user typed.
"""

from __future__ import annotations

import pytest

from edgeadapt.cli.flags import flag_value, name_flags
from edgeadapt.cli.main import main


@pytest.mark.parametrize("message, argv, expected", [
    ("stream[0]: severity must be in 1..5, got 9 (got 'fog:9')", ["adapt", "--stream", "fog:9"],
     "--stream (domain 1): severity must be in 1..5, got 9 (got 'fog:9')"),
    ("stream[1].options: severity must be in 1..5", ["adapt", "--stream=s.yaml"],
     "--stream 's.yaml' (domain 2, options): severity must be in 1..5"),
    # a stream from the config file, not the command line: its field names stay
    ("stream[0]: severity must be in 1..5", ["adapt", "--config", "a.yaml"],
     "stream[0]: severity must be in 1..5"),
    # a longer name that merely ends in the field is left alone
    ("upstream[0]: x", ["adapt", "--stream", "fog:3"], "upstream[0]: x"),
])
def test_name_flags_names_an_item_of_a_list_flag(message, argv, expected):
    assert name_flags(message, argv) == expected


def test_flag_value_is_the_last_value_given():
    assert flag_value(["adapt", "--stream", "a:1", "--stream=b:2"], "--stream") == "b:2"
    assert flag_value(["adapt", "--streams", "a:1"], "--stream") is None


@pytest.mark.parametrize("stream, domain", [("gaussian_noise:9", 1), ("fog:3,blur", 2)])
def test_adapt_names_the_stream_flag_and_value(tmp_path, capsys, stream, domain):
    assert main(["adapt", "--stream", stream, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--stream (domain {domain}): " in err and repr(stream) in err and "stream[" not in err
    assert "1..5" in err or "e.g. 'blur:3'" in err  # the fix
