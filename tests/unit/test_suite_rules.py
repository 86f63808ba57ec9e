"""The suite's own rules: a test that uses a trained session artifact (the source ViT, the offline
run on it) is marked slow, so the fast subset (`make test-fast`) never trains it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests import conftest


@dataclass
class FakeItem:
    nodeid: str
    fixturenames: tuple[str, ...]
    slow: bool

    def get_closest_marker(self, name: str):
        return pytest.mark.slow.mark if self.slow and name == "slow" else None


def test_trained_fixtures_without_the_slow_marker_are_refused_at_collection():
    items = [FakeItem("a", ("tmp_path",), slow=False), FakeItem("b", ("source_vit_dir",), slow=True),
             FakeItem("c", ("offline_vit_dir", "tmp_path"), slow=False),
             FakeItem("d", ("source_vit_dir",), slow=False)]
    assert conftest.unmarked_trained_users(items) == ["c", "d"]
    with pytest.raises(pytest.UsageError, match="mark them @pytest.mark.slow: c, d"):
        conftest.pytest_collection_modifyitems(None, items)
    conftest.pytest_collection_modifyitems(None, items[:2])  # all fine: no error


def test_a_trained_fixture_reached_by_name_fails_an_unmarked_test(monkeypatch):
    monkeypatch.setattr(conftest, "running", [FakeItem("x", ("source_dir",), slow=False)])
    with pytest.raises(pytest.fail.Exception, match="x uses source_vit_dir"):
        conftest.require_slow("source_vit_dir")
    monkeypatch.setattr(conftest, "running", [FakeItem("y", ("source_dir",), slow=True)])
    conftest.require_slow("source_vit_dir")  # marked: allowed

