"""A pytest plugin that writes, test by test, what pytest is doing: the supervisor's eyes.

Loaded with `-p tiny_attn_tools.pytest_progress`. When the environment variable
TINY_ATTN_PROGRESS names a file, it appends one JSON object per line and flushes each:

  {"event": "collected", "nodeids": [...]}                         after collection
  {"event": "start", "nodeid": ...}                                a test begins
  {"event": "done", "nodeid": ..., "status": ..., "message": ...}  a test ended

`status` is passed, failed, error (in a fixture) or skipped. A test that kills the process (a
segfault in native code) or never ends (a kernel waiting forever) has a "start" and no "done":
that is how tiny_attn_tools.supervise knows which test it was. Without the variable the plugin
does nothing.

With TINY_ATTN_NO_SHRINK set (grading and the course checks, which only need pass or fail),
Hypothesis does not shrink a failing example. Shrinking calls the failing code hundreds of
times, and an exception thrown that often inside MLX's CPU stream (a C++ stub of a kernel) ends
in a stream that never finishes another task: a hang instead of a failed test.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_ENV = "TINY_ATTN_PROGRESS"


class _Progress:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the session)
        self.status: dict[str, tuple[str, str]] = {}

    def write(self, **record: Any) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.write(event="collected", nodeids=[item.nodeid for item in session.items])

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        self.status[nodeid] = ("passed", "")
        self.write(event="start", nodeid=nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # One test = setup, call, teardown; the first that did not pass decides, as in junit.
        status, _ = self.status.get(report.nodeid, ("passed", ""))
        if status == "passed" and not report.passed:
            if report.skipped:
                new = "skipped"
            elif report.when == "call":
                new = "failed"
            else:
                new = "error"
            self.status[report.nodeid] = (new, _message(report))

    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        status, message = self.status.pop(nodeid, ("passed", ""))
        self.write(event="done", nodeid=nodeid, status=status, message=message)


def _message(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    head = f"{crash.message}\n" if crash is not None else ""
    return head + report.longreprtext[-4000:]


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(_ENV)
    if path:
        config.pluginmanager.register(_Progress(path), "tiny-attn-progress")
    if os.environ.get("TINY_ATTN_NO_SHRINK"):
        from hypothesis import Phase, settings

        settings.register_profile(
            "tiny-attn-no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate]
        )
        settings.load_profile("tiny-attn-no-shrink")
