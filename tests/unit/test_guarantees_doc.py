"""docs/guarantees.md says what the fault tests assert, in their words and with their bounds;
the README links to it instead of keeping a table of its own."""

from __future__ import annotations

from pathlib import Path

from tests import guarantees
from tests.faults import test_broker_restart, test_cluster

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "guarantees.md").read_text()
README = (ROOT / "README.md").read_text()


def test_every_guarantee_is_in_the_doc_as_the_test_words_it() -> None:
    # Regenerate with `python -m tests.guarantees` when a test's assertions change.
    for g in guarantees.GUARANTEES:
        assert f"(`{g.test}`)" in DOC, g.test
        assert guarantees._cell(g.fault) in DOC, g.test
        for sentence in g.asserted:
            assert guarantees._cell(sentence) in DOC, sentence


def test_the_doc_states_the_bounds_the_tests_assert() -> None:
    # test_broker_restart asserts every failure within request_timeout + 5 s
    assert test_broker_restart.FAILS_WITHIN == test_broker_restart.REQUEST_TIMEOUT + 5
    assert f"every failed write returns within {test_broker_restart.FAILS_WITHIN:g} s" in DOC
    assert f"every failed write returns within {test_cluster.FAILS_WITHIN:g} s" in DOC


def test_the_readme_links_the_doc_and_keeps_no_copy() -> None:
    assert "(docs/guarantees.md)" in README
    assert "| fault |" not in README
    assert "each within 5 s" not in README
