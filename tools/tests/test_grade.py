"""`pdm run grade`: a crashing or hanging day is reported, and the other days are graded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from tiny_attn_tools import course, grade


@pytest.fixture
def fake_course(tmp_path: Path) -> Path:
    """A checkout with three graded days: one crashes, one hangs in native code, one passes."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests_refsol").mkdir()
    (tmp_path / "tests" / "tiny_attn_base.py").write_text("")
    (tmp_path / "tests" / "conftest.py").write_text("")
    days = {
        1: textwrap.dedent(
            """
            import os, signal

            def test_task_1_crash():
                os.kill(os.getpid(), signal.SIGSEGV)
            """
        ),
        2: textwrap.dedent(
            """
            import signal, threading

            def test_task_1_ok():
                pass

            def test_task_2_hang():
                signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
                threading.Event().wait()
            """
        ),
        3: "def test_task_1_ok():\n    pass\n",
    }
    for day, text in days.items():
        (tmp_path / "tests_refsol" / course.test_file_name(9, day)).write_text(text)
    return tmp_path


def test_grade_survives_a_crash_and_a_hang(
    fake_course: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = course.run_graded_against_student(
        [(9, 1), (9, 2), (9, 3)], timeout=1, test_timeout=5, root=fake_course
    )
    grade.print_table(outcomes)
    out = capsys.readouterr().out
    assert "   9   1    1     0/1     ✘ crashed (signal 11, SIGSEGV)" in out
    assert "   9   2    2     0/1     ✘ timed out" in out
    assert "   9   3    1     1/1     ✔ passed" in out
    assert "reproduce: pdm run test --week 9 --day 1 -- -k test_task_1_crash" in out
    assert "reproduce: pdm run test --week 9 --day 2 -- -k test_task_2_hang" in out


def test_a_day_past_its_limit_is_timed_out_and_the_next_day_graded(fake_course: Path) -> None:
    slow = "import time\n\ndef test_task_1_slow():\n    time.sleep(60)\n"
    (fake_course / "tests_refsol" / course.test_file_name(9, 1)).write_text(slow)
    outcomes = course.run_graded_against_student([(9, 1), (9, 3)], day_timeout=10, root=fake_course)
    assert [(o.day, o.status) for o in outcomes] == [(1, "timed out"), (3, "passed")]
