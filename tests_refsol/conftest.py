"""Fixtures for the graded tests; they live once, in tiny_attn_tools.testing."""

from tiny_attn_tools.testing import ext  # noqa: F401
