"""``adapt(..., method_options=...)`` checks each method's settings as ``edgeadapt adapt`` does, before
any data is built or trained on.

Before: a misspelt setting (``{"eata": {"d_margn": 0.1}}``) passed until the method was built, after
the stream and the source statistics, and then surfaced as a raw pydantic ValidationError.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest

from edgeadapt.errors import ConfigError
from edgeadapt.online import api
from edgeadapt.online.api import adapt


@pytest.fixture
def no_data(monkeypatch):
    """Building the stream's data is a failure here: the check must come first."""
    def never(*_args, **_kwargs):
        raise AssertionError("data built before method_options was checked")

    monkeypatch.setattr(api.DriftStream, "build", never)
    monkeypatch.setattr(api, "source_data", never)


@pytest.mark.parametrize("options, match", [
    ({"eata": {"d_margn": 0.1}}, r"method_options\.eata\.d_margn: unknown field; did you mean 'd_margin'\?"),
    ({"eata": MappingProxyType({"d_margn": 0.1})}, r"did you mean 'd_margin'"),
    ({"tent": {"lr": 1e-3}}, r"method_options\.tent: tent takes no options"),
    ([("eata", {})], r"method_options: a mapping of method name -> settings"),
])
def test_adapt_refuses_bad_method_options_before_any_data(vit_kb, no_data, options, match):
    fm, kb = vit_kb
    with pytest.raises(ConfigError, match=match):
        adapt(fm, kb, "fog:3", methods=["source", "eata"], source="digits", progress=False,
              method_options=options)
