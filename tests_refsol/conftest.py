"""Fixtures for the graded tests; they live once, in tools/tiny_attn_testing.py."""

from tiny_attn_testing import ext  # noqa: F401
