"""The graded tests' view of the code under test: here, the reference solution."""

import tiny_attn_ref as ta  # noqa: F401
from tiny_attn_tools.testing import *  # noqa: F403

EXTENSION = "tiny_attn_ext_ref"
