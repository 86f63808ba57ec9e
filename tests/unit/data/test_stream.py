"""Drift streams: parsing from strings, lists and YAML; domain data; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeadapt.data.stream import DEFAULT_STREAM, Domain, parse_stream, stream_data


def test_parse_string_list_and_yaml_agree(tmp_path):
    a = parse_stream("gaussian_noise:5, fog:3")
    b = parse_stream([{"corruption": "gaussian_noise", "severity": 5}, "fog:3"])
    path = tmp_path / "s.yaml"
    path.write_text("stream:\n  - gaussian_noise:5\n  - {corruption: fog, severity: 3}\n")
    assert a == b == parse_stream(path) == [Domain.corrupted("gaussian_noise", 5),
                                                   Domain.corrupted("fog", 3)]


def test_default_stream_has_ten_domains_mixing_easy_and_hard():
    domains = parse_stream()
    assert len(domains) == 10 and [str(d) for d in domains] == DEFAULT_STREAM.split(",")
    assert len({d.corruption for d in domains}) >= 8
    assert {d.severity for d in domains} >= {3, 5}


@pytest.mark.parametrize("spec, match", [
    ("fogg:3", r"stream\[0\].*corruption 'fogg'"),
    ("fog:-1", r"stream\[0\].*severity"),
    ("fog:0", r"severity"),
    ("fog:six", r"severity 'six'"),
    ("fog", r"needs a severity"),
    ("", r"empty"),
    ([{"corruption": "fog"}], r"exactly 'corruption' and 'severity'"),
    ([{"corruption": "fog", "severity": 2.5}], r"severity"),
    ([7], r"expected"),
])
def test_bad_streams_name_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_stream(spec)


def test_missing_stream_file():
    with pytest.raises(ValueError, match="does not exist"):
        parse_stream("nope.yaml")


def test_domain_data_adapt_is_unlabeled_and_disjoint_from_test():
    (d,) = stream_data("contrast:3")
    assert d.adapt.labels is None and d.test.labels is not None
    assert len(d.adapt) == 180 and len(d.test) == 360
    # different source images: no adaptation image equals a test image
    flat_a, flat_t = d.adapt.images.flatten(1), d.test.images.flatten(1)
    assert torch.cdist(flat_a, flat_t).min() > 0
    again = stream_data("contrast:3")[0]
    assert torch.equal(again.test.images, d.test.images)


def test_shipped_default_stream_yaml_is_the_default_stream():
    # configs/adapt-vit-digits.yaml points at this file; it must not drift from DEFAULT_STREAM
    path = Path(__file__).resolve().parents[3] / "configs" / "streams" / "default.yaml"
    assert parse_stream(path) == parse_stream(None)


def test_default_stream_mixes_easy_and_hard_domains_by_measured_source_accuracy():
    # DESIGN.md §5, judged on the committed drift_severity benchmark (source model, no adaptation)
    result = json.loads((Path(__file__).resolve().parents[3] / "benchmarks" / "results"
                         / "drift_severity.json").read_text())
    accuracy = {f"{r['corruption']}:{r['severity']}": r["accuracy"] for r in result["rows"]}
    measured = [accuracy[str(d)] for d in parse_stream()]
    assert sum(a < 0.6 for a in measured) >= 2, measured  # hard: the source model fails
    assert sum(0.6 <= a < 0.8 for a in measured) >= 2, measured  # in between
    assert sum(a >= 0.85 for a in measured) >= 3, measured  # easy: adaptation must not hurt here
