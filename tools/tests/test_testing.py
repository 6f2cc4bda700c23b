"""The graded tests' helpers: a failed comparison says where and by how much."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_attn_tools.testing import assert_allclose


def test_equal_arrays_pass() -> None:
    x = np.arange(6.0).reshape(2, 3)
    assert_allclose(x, x.copy(), rtol=1e-5, atol=1e-6)
    assert_allclose(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), rtol=0, atol=0)


def test_a_mismatch_names_the_worst_index_both_values_and_the_count() -> None:
    expected = np.zeros((2, 3, 4))
    actual = expected.copy()
    actual[0, 1, 2] = 0.5
    actual[1, 2, 3] = 3.0  # the worst
    with pytest.raises(AssertionError) as info:
        assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, what="the output")
    message = str(info.value)
    assert "values differ (the output): 2 of 24 elements" in message
    assert "the largest difference, 3, is at index (1, 2, 3): got 3.0, expected 0.0" in message


def test_a_nan_is_located() -> None:
    expected = np.ones((4, 4))
    actual = expected.copy()
    actual[2, 1] = np.nan
    actual[3, 0] = np.nan
    with pytest.raises(AssertionError) as info:
        assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    message = str(info.value)
    assert "2 x NaN where a number was expected; the first at index (2, 1): got nan" in message
    assert "largest difference" not in message  # nothing else differs


def test_a_missing_nan_and_an_infinity() -> None:
    with pytest.raises(AssertionError) as info:
        assert_allclose(np.array([0.0, np.inf]), np.array([np.nan, 1.0]), rtol=1e-5, atol=1e-6)
    message = str(info.value)
    assert "1 x a number where NaN was expected; the first at index (0,)" in message
    assert "is at index (1,): got inf, expected 1.0" in message
