"""Fixtures for the graded tests; they live once, in tools/tiny_attn_testing.py."""

from tiny_attn_testing import as_on_a_mac, ext, pytest_report_header  # noqa: F401
