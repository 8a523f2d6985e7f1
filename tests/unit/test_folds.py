"""The query service's folding of feed polls and denied reads: the counts add up, and a long
run of short-lived keys (one per feed session) does not grow memory without bound."""

import pytest

from audit_query import recorder
from audit_query.recorder import Folds


def test_the_first_of_a_window_is_recorded_and_the_rest_carried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("audit_query.recorder.time.monotonic", lambda: now[0])
    folds = Folds(60)
    assert folds.add("s1", polls=1) == {"polls": 1}
    assert folds.add("s1", polls=1) is None
    assert folds.add("s1", polls=1) is None
    now[0] += 61
    assert folds.add("s1", polls=1) == {"polls": 3}  # the two carried, and this one
    assert folds.drain() == {}


def test_idle_keys_are_forgotten_but_owed_counts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("audit_query.recorder.time.monotonic", lambda: now[0])
    folds = Folds(60)
    folds.add("owed", polls=1)
    folds.add("owed", polls=1)  # carried: must survive pruning
    for i in range(recorder.PRUNE_ABOVE + 10):
        folds.add(f"session-{i}", polls=1)
    now[0] += 61
    folds.add("trigger", polls=1)
    assert len(folds._folds) <= 2
    assert folds.drain() == {"owed": {"polls": 1}}
