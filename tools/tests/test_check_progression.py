"""check-progression: how a day's tree is put together from the stubs and the reference."""

from __future__ import annotations

from tiny_attn_tools import check_progression as cp

STUB = """\
#include <metal_stdlib>
constant constexpr int Br = 32;

// Day 3's rule.
inline int kv_head(int h_q, constant P& p) {
  // TODO(day 3, Task 1): the group of h_q.
  return min(h_q, p.H - 1);
}

// ===== Day 2: the kernel. See book/src/week3-02-flash-attention-metal.md.
void impl(int h_q) {
  // TODO(Task 2): the kernel.
  const int h = kv_head(h_q, p);
}

// TODO(day 5, Task 1): kernel_f16 (half).
"""

REF = """\
#include <metal_stdlib>
constant constexpr int Br = 32;

// Day 3's rule.
inline int kv_head(int h_q, constant P& p) {
  return h_q / (p.H_q / p.H);
}

// ===== Day 2: the kernel. See book/src/week3-02-flash-attention-metal.md.
void impl(int h_q) {
  const int h = kv_head(h_q, p);
  work();
}

[[kernel]] void kernel_f16(device half* x) {
  impl(0);
}
"""


def test_chunks_cover_the_file_and_carry_their_days() -> None:
    assert "".join(cp.split_chunks(STUB)) == STUB
    days = {c.key: c.days for c in cp.parse_chunks(STUB, 3)}
    assert days["inline int kv_head"] == {(3, 3)}
    assert days["void impl"] == {(3, 2)}  # TODO(Task 2) under the Day 2 section


def test_each_day_gets_the_reference_before_it_and_the_stubs_from_it() -> None:
    day2 = cp.compose_chunks(STUB, REF, (3, 2), 3)
    assert "TODO(Task 2)" in day2 and "min(h_q" in day2 and "kernel_f16(device" not in day2
    day3 = cp.compose_chunks(STUB, REF, (3, 3), 3)
    assert "work();" in day3 and "min(h_q" in day3  # Day 2 done, Day 3 still a stub
    day5 = cp.compose_chunks(STUB, REF, (3, 5), 3)
    assert "h_q / (p.H_q / p.H)" in day5 and "kernel_f16(device" not in day5
    assert "kernel_f16(device" in cp.compose_chunks(STUB, REF, (3, 6), 3)


def test_a_definition_with_two_days_of_work_is_reported() -> None:
    # The placeholder of Day 3 inside Day 2's kernel: no tree can have one without the other.
    mixed = STUB.replace(
        "  const int h = kv_head(h_q, p);\n", "  const int h = h_q; // TODO(day 3, Task 1)\n"
    )
    [impl] = [c for c in cp.parse_chunks(mixed, 3) if c.key == "void impl"]
    assert impl.mixed and impl.days == {(3, 2), (3, 3)}
