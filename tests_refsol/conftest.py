"""Fixtures for the graded tests; they live once, in tiny_attn_tools.testing."""

from tiny_attn_tools.testing import as_on_a_mac, ext, pytest_report_header  # noqa: F401
