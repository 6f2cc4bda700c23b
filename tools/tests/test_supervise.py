"""The supervisor: a test that crashes or hangs in native code costs that test, not the run."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tiny_attn_tools import supervise

# A test file with the two failures pytest alone cannot survive: a segfault, and a wait that
# pytest-timeout's signal never interrupts (the signal is blocked, as in native code that
# sleeps on a lock), between tests that pass.
BAD_TESTS = textwrap.dedent(
    """
    import os, signal, threading

    def test_a_passes():
        pass

    def test_b_segfaults():
        os.kill(os.getpid(), signal.SIGSEGV)

    def test_c_hangs():
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        threading.Event().wait()

    def test_d_fails():
        assert 1 == 2

    def test_e_passes():
        pass
    """
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_crash_and_hang_fail_their_tests_and_the_others_still_run(tmp_path: Path) -> None:
    write(tmp_path, "test_bad.py", BAD_TESTS)
    told: list[str] = []  # incidents as they happen, before the run ends
    run = supervise.run_pytest(
        ["test_bad.py"],
        ["-q", "-p", "no:cacheprovider", "--timeout=1"],
        cwd=tmp_path,
        test_timeout=5,
        capture=True,
        on_incident=lambda incident: told.append(incident.status),
    )
    status = {r.nodeid.split("::")[1]: r.status for r in run.results}
    assert status == {
        "test_a_passes": "passed",
        "test_b_segfaults": "crashed",
        "test_c_hangs": "timed out",
        "test_d_fails": "failed",
        "test_e_passes": "passed",
    }
    crash = next(r for r in run.results if r.status == "crashed")
    assert "crashed (signal 11, SIGSEGV)" in crash.message
    assert run.returncode == 1
    assert [i.status for i in run.incidents] == ["crashed", "timed out"]
    assert told == ["crashed", "timed out"]


def test_a_crash_while_loading_the_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "test_import.py", "import os, signal\nos.kill(os.getpid(), signal.SIGABRT)\n")
    run = supervise.run_pytest(
        ["test_import.py"], ["-q", "-p", "no:cacheprovider"], cwd=tmp_path, capture=True
    )
    assert run.results == []
    [incident] = run.incidents
    assert incident.status == "crashed" and "SIGABRT" in incident.message
    assert "loading the test files" in incident.message


def test_the_total_limit_stops_the_run(tmp_path: Path) -> None:
    write(tmp_path, "test_slow.py", "import time\n\ndef test_slow():\n    time.sleep(60)\n")
    run = supervise.run_pytest(
        ["test_slow.py"],
        ["-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        total_timeout=2,
        capture=True,
    )
    [incident] = run.incidents
    assert incident.status == "timed out" and "limit of 2 s" in incident.message


def test_a_clean_run_keeps_pytest_exit_code(tmp_path: Path) -> None:
    write(tmp_path, "test_ok.py", "def test_ok():\n    pass\n")
    run = supervise.run_pytest(["test_ok.py"], ["-q"], cwd=tmp_path, capture=True)
    assert run.returncode == 0 and [r.status for r in run.results] == ["passed"]
    run = supervise.run_pytest(["test_ok.py"], ["-q", "-k", "nothing"], cwd=tmp_path, capture=True)
    assert run.returncode == 5  # no test selected
