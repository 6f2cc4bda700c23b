"""The graded tests' view of the code under test: here, your code in src/tiny_attn."""

from tiny_attn_tools.testing import *  # noqa: F403

import tiny_attn as ta  # noqa: F401

EXTENSION = "tiny_attn_ext"
