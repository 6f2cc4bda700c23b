"""check-mutants: every day has mutants or a reason, each applies to the reference as it is, and
a run is judged by the failing test, not by any non-zero exit."""

from __future__ import annotations

import pytest
from tiny_attn_tools import check_mutants, course
from tiny_attn_tools.check_mutants import MUTANTS, Mutant, mutated, verdict


def test_every_day_has_mutants_or_says_why():
    for day in course.available_days():
        entry = MUTANTS.get(day)
        assert entry, f"w{day[0]}d{day[1]}: no mutants and no reason"
        if isinstance(entry, str):
            assert len(entry) > 40, f"w{day[0]}d{day[1]}: the reason says too little"


def test_every_mutant_applies_once_and_changes_the_reference():
    for entry in MUTANTS.values():
        for mutant in [] if isinstance(entry, str) else entry:
            original = (check_mutants.ROOT / mutant.path).read_text()
            assert mutated(mutant, original) != original, mutant.name


def test_a_mutant_whose_text_is_gone_stops_the_check():
    gone = Mutant("a line the reference no longer has", "x.py", [("old line", "new line")])
    with pytest.raises(SystemExit, match="no longer applies"):
        mutated(gone, "something else\n")


def test_verdict_needs_a_failing_test():
    assert verdict(0, "5 passed") == (False, "every test of the day passes")
    failed = "FAILED tests_refsol/test_week_2_day_2.py::test_task_1_x - AssertionError: peak\n"
    assert verdict(1, failed) == (True, "test_task_1_x - AssertionError: peak")
    caught, why = verdict(1, "[build-ext] tiny_attn_ext_ref did not build\nFAILED a.py::t - x\n")
    assert not caught and "does not build" in why
    caught, why = verdict(2, "ERROR collecting tests_refsol/test_week_1_day_1.py\n")
    assert not caught and "no test failed" in why
