"""The built-in text drift stream (``stdlib-text``): splits, sources, and a shift that is real."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeadapt.data import text_domains
from edgeadapt.data.registry import build_dataset, dataset_info
from edgeadapt.data.text import builtin_paragraphs
from edgeadapt.data.text_domains import DEFAULT_TEXT_STREAM, SOURCES, domain_documents, domain_texts
from edgeadapt.errors import ConfigError

SMALL = 30_000  # characters per source: enough documents for three splits, fast to read


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_builds_nonempty_deterministic_document_splits(source: str) -> None:
    splits = build_dataset("stdlib-text", source=source, max_chars=SMALL)
    for split in splits:
        assert len(split) > 0 and all(isinstance(t, str) and t.strip() for t in split.texts)
    # no text in two splits
    assert not set(splits.train.texts) & set(splits.test.texts)
    assert not set(splits.val.texts) & set(splits.test.texts)
    domain_documents.cache_clear()  # read the files again: the same splits
    for name, split in zip(("train", "val", "test"), splits):
        assert tuple(domain_texts(source, name, SMALL)) == split.texts


def test_documents_never_span_two_splits() -> None:
    docs = domain_documents("source-code", SMALL)
    test = set(domain_texts("source-code", "test", SMALL))
    for _key, texts in docs:
        inside = [t in test for t in texts]
        assert all(inside) or not any(inside)


def test_pydoc_topics_is_builtin_docs_with_its_splits() -> None:
    for split in ("train", "val", "test"):
        assert domain_texts("pydoc-topics", split) == builtin_paragraphs(split)


def test_default_stream_names_every_source_once_starting_at_the_source_domain() -> None:
    assert sorted(DEFAULT_TEXT_STREAM) == sorted(SOURCES)
    assert DEFAULT_TEXT_STREAM[0] == "pydoc-topics"
    assert dataset_info("stdlib-text").options == ("source", "max_chars")


def test_unknown_source_and_bad_max_chars_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown source 'tweets'"):
        build_dataset("stdlib-text", source="tweets")
    with pytest.raises(ConfigError, match="max_chars"):
        build_dataset("stdlib-text", source="email", max_chars=10)
    with pytest.raises(ConfigError, match="takes no root"):
        build_dataset("stdlib-text", root="somewhere", source="email")


def test_missing_test_package_names_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(text_domains, "stdlib_dir", lambda: tmp_path)
    domain_documents.cache_clear()
    try:
        with pytest.raises(ConfigError, match="test_email/data.*testsuite"):
            domain_texts("email", "test")
        with pytest.raises(ConfigError, match="no standard-library source files"):
            domain_texts("docstrings", "test")
    finally:
        domain_documents.cache_clear()


def test_source_code_drops_docstrings_and_docstrings_keep_them(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""Module docstring that is long enough to count as a paragraph\n'
                      'of prose, as stdlib ones do."""\n'
                      "import os\n\n\n"
                      "@staticmethod\n"
                      "def function(argument_one, argument_two):\n"
                      '    """A function docstring that is also long enough\n'
                      '    to be kept as one paragraph of text."""\n'
                      "    return os.path.join(argument_one, argument_two, 'and something longer')\n")
    code = text_domains.code_chunks(module)
    assert len(code) == 1 and code[0].startswith("@staticmethod\ndef function(")
    assert "docstring" not in code[0] and "os.path.join" in code[0]
    docs = text_domains.docstring_paragraphs(module)
    assert len(docs) == 2 and all("docstring" in d for d in docs)


@pytest.mark.slow
def test_a_docs_trained_lm_has_clearly_different_perplexity_per_domain() -> None:
    """Hermetic stand-in for the reference LM (runs/ is not used): tiny-llama trained briefly on
    the first domain is clearly worse on every other domain."""
    from edgeadapt.models.registry import load_adapter
    from edgeadapt.training.batches import batch_factory
    from edgeadapt.training.config import TrainConfig
    from edgeadapt.training.loop import fit

    lm = load_adapter("tiny-llama")
    source = build_dataset("stdlib-text", source="pydoc-topics")
    fit(lm, batch_factory(lm, source.train, 16, shuffle=True, max_length=64),
        TrainConfig(epochs=5, learning_rate=3e-3, max_steps=120, log_every=1000))
    ppl = {}
    for name in DEFAULT_TEXT_STREAM:
        test = build_dataset("stdlib-text", source=name).test
        batches = list(batch_factory(lm, test, 16, shuffle=False, max_length=64)(0))[:8]
        ppl[name] = lm.evaluate(batches)["perplexity"]
    for name in DEFAULT_TEXT_STREAM[1:]:
        assert ppl[name] > 1.2 * ppl["pydoc-topics"], ppl


def test_shipped_text_adapt_config_streams_the_default_text_stream() -> None:
    import yaml

    config = yaml.safe_load((Path(__file__).parents[3] / "configs" / "adapt-llama-text.yaml").read_text())
    assert [d["dataset"] for d in config["stream"]] == ["stdlib-text"] * len(DEFAULT_TEXT_STREAM)
    assert tuple(d["options"]["source"] for d in config["stream"]) == DEFAULT_TEXT_STREAM
