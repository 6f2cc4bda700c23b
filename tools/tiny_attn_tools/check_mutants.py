"""Course check: a green day proves its goal, not only its numbers.

Each day keeps a few mutants of the reference solution: minimal, named edits that defeat what
the day teaches (the day's kernel is not the one that runs, causal tiles are computed instead of
skipped, the L x S scores come back, ...) while the answers stay right or nearly right. Applied
one at a time to a scratch copy of the repository, every mutant must make at least one of the
day's graded tests fail. A day without mutants says why.

  pdm run check-mutants                  every day
  pdm run check-mutants --week 3 --day 4 one day
  pdm run check-mutants --list           the table, without running anything

The scratch copy lives in build/mutants/ and keeps its own build of the reference extension:
only the sources a mutant touches are recompiled, and every compile goes through metalsim's
compiler cache (src/metalsim/compiler_cache.py), so the first build of the scratch copy takes
the objects of `pdm run test-refsol`'s build, and restoring a mutated file takes its object
back; metalsim caches compiled kernels by their text. A run costs a few minutes, most of it
in the mutants' own C++ and Metal compiles and the days' tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tiny_attn_tools import course
from tiny_attn_tools.check_solvable import PACKAGE_FOLDERS

ROOT = Path(__file__).resolve().parents[2]
SCRATCH = ROOT / "build" / "mutants"
TIMEOUT_S = 600  # one mutant, its rebuild included


@dataclass
class Mutant:
    name: str  # what the mutant does to the day's goal
    path: str  # the reference file it edits, relative to the repository
    edits: list[tuple[str, str]] = field(default_factory=list)  # (text, replacement), each once


FA_TILED = "refsol/tiny_attn_ref/flash_attention_tiled.py"
FA_EVAL_CPU = "src/extension_common/flash_attention_eval.cpp"  # given, shared by both trees
FA_GPU = "refsol/extensions_ref/src/flash_attention_gpu.cpp"
FA_METAL = "refsol/extensions_ref/src/flash_attention.metal"
FA_BWD_GPU = "refsol/extensions_ref/src/flash_attention_backward_gpu.cpp"
DECODE_CPU = "refsol/extensions_ref/src/decode_attention_cpu.cpp"
DECODE_GPU = "refsol/extensions_ref/src/decode_attention_gpu.cpp"
DECODE_SPLIT = "refsol/extensions_ref/src/decode_attention_split.cpp"
PAGED_CPU = "refsol/extensions_ref/src/paged_decode_attention.cpp"
DECODE_METAL = "refsol/extensions_ref/src/decode_attention.metal"
DECODE_OPS = "src/extension_common/decode_attention_ops.cpp"  # given, shared by both trees
VARLEN_PY = "refsol/tiny_attn_ref/varlen.py"
VARLEN_CPU = "refsol/extensions_ref/src/flash_attention_varlen.cpp"
VARLEN_METAL = "refsol/extensions_ref/src/flash_attention_varlen.metal"
SERVING = "refsol/tiny_attn_ref/serving.py"

# Day 5.3's copy mutant: on the CPU, the pages of every sequence gathered into a dense
# (B, H, max_blocks * page_size, E) buffer from MLX's allocator, then the contiguous kernel.
PAGED_DISPATCH = """  if (num_splits_ == 1) {
    encoder.dispatch([p]() { decode_attention_cpu(p, 0); });"""
PAGED_GATHERED_FIRST = """  if (paged_ && num_splits_ == 1) {
    encoder.dispatch([p]() {
      const int S_max = p.max_blocks * p.page_size;
      const size_t n = size_t(p.B) * p.H * S_max * p.E;
      mx::allocator::Buffer buf = mx::allocator::allocator().malloc(2 * n * sizeof(float));
      float* dense = static_cast<float*>(buf.raw_ptr());
      for (int b = 0; b < p.B; ++b)
        for (int h = 0; h < p.H; ++h)
          for (int j = 0; j < p.seq_len(b); ++j) {
            const size_t at = ((size_t(b) * p.H + h) * S_max + j) * p.E;
            std::copy_n(paged_kv_row(p, p.k, b, h, j), p.E, dense + at);
            std::copy_n(paged_kv_row(p, p.v, b, h, j), p.E, dense + n + at);
          }
      DecodeProblem c = p;
      c.k = dense;
      c.v = dense + n;
      c.block_table = nullptr;
      c.kv_strides[0] = int64_t(p.H) * S_max * p.E;
      c.kv_strides[1] = int64_t(S_max) * p.E;
      c.kv_strides[2] = p.E;
      decode_attention_cpu(c, 0);
      mx::allocator::allocator().free(buf);
    });
  } else if (num_splits_ == 1) {
    encoder.dispatch([p]() { decode_attention_cpu(p, 0); });"""

# Week, day -> its mutants, or the reason it has none.
MUTANTS: dict[tuple[int, int], list[Mutant] | str] = {
    (1, 1): [
        Mutant(
            "softmax does not subtract the row maximum",
            "refsol/tiny_attn_ref/basics.py",
            [("shifted = xf - mx.max(xf, axis=axis, keepdims=True)", "shifted = xf")],
        ),
    ],
    (1, 2): "multi-head attention is the day's numbers: a head split, merged or projected "
    "wrongly changes every output, which the tests compare with mlx.nn.MultiHeadAttention",
    (1, 3): [
        Mutant(
            "K/V are repeated (materialised) for grouped-query attention",
            "refsol/tiny_attn_ref/masks.py",
            [
                (
                    "k = mx.expand_dims(key, -3)  # (B..., H, 1, S, E)",
                    "k = mx.repeat(key, group, axis=-3).reshape(*batch, H, group, S, E)",
                ),
                (
                    "v = mx.expand_dims(value, -3)  # (B..., H, 1, S, Ev)",
                    "v = mx.repeat(value, group, axis=-3).reshape(*batch, H, group, S, -1)",
                ),
            ],
        ),
    ],
    (1, 4): [
        Mutant(
            "profile measures without evaluating the lazy result",
            "refsol/tiny_attn_ref/profiling.py",
            [("        mx.eval(arrays)\n        return arrays", "        return arrays")],
        ),
    ],
    (2, 1): [
        Mutant(
            "merging two softmax states does not rescale them to the common maximum",
            "refsol/tiny_attn_ref/online_softmax.py",
            [("l = a.l * mx.exp(a.m - shift) + b.l * mx.exp(b.m - shift)", "l = a.l + b.l")],
        ),
    ],
    (2, 2): [
        Mutant(
            "causal K/V tiles are computed instead of skipped",
            FA_TILED,
            [("n_tiles = _kv_tiles_to_visit(q0, q1, L, S, Bc) if causal else Tc", "n_tiles = Tc")],
        ),
        Mutant(
            "the causal mask is applied on tiles every row sees whole",
            FA_TILED,
            [("crosses_diagonal = causal and k1 - 1 > q0 + S - L", "crosses_diagonal = causal")],
        ),
        Mutant(
            "K/V are repeated (materialised) for grouped-query attention",
            FA_TILED,
            [
                (
                    "K = mx.expand_dims(key.astype(mx.float32), -3)",
                    "K = mx.repeat(key.astype(mx.float32), G, axis=-3).reshape(*batch, H, G, S, E)",
                ),
                (
                    "V = mx.expand_dims(value.astype(mx.float32), -3)",
                    "V = mx.repeat(value.astype(mx.float32), G, axis=-3)"
                    ".reshape(*batch, H, G, S, Ev)",
                ),
            ],
        ),
        Mutant(
            "the L x S scores are computed once and sliced into tiles",
            FA_TILED,
            [
                (
                    "S_ij = Q_i @ mx.swapaxes(K[..., k0:k1, :], -1, -2)",
                    "S_ij = ((Q * scale) @ mx.swapaxes(K, -1, -2))[..., q0:q1, k0:k1]",
                )
            ],
        ),
        Mutant(
            "the running state is not evaluated per tile: the lazy graph holds every tile",
            FA_TILED,
            [("            mx.eval(m_i, l_i, o_i)\n", "")],
        ),
        Mutant(
            "the accumulator is not rescaled when the row maximum grows",
            FA_TILED,
            [("o_i = alpha[..., None] * o_i + P_ij", "o_i = o_i + P_ij")],
        ),
    ],
    (2, 3): [
        Mutant(
            "eval_cpu does not subtract the row maximum",
            "refsol/extensions_ref/src/softmax_rows.cpp",
            [("y[j] = std::exp(row[j] - m);", "y[j] = std::exp(row[j]);")],
        ),
    ],
    (2, 4): [
        Mutant(
            "causal K/V tiles are computed instead of skipped",
            "refsol/extensions_ref/src/flash_attention_simple.cpp",
            [
                (
                    "const int j_end = std::min(S, kv_tiles_to_visit(p, i0, i0 + br - 1) * kBc);",
                    "const int j_end = S;",
                )
            ],
        ),
        Mutant(
            "the accumulator is not rescaled when the row maximum grows",
            "refsol/extensions_ref/src/flash_attention_simple.cpp",
            [("o_row[e] *= alpha;", "o_row[e] *= 1.0f;")],
        ),
    ],
    (2, 5): [
        Mutant(
            "the fast kernel falls back to the simple one",
            "refsol/extensions_ref/src/flash_attention_fast.cpp",
            [
                (
                    "void flash_attention_fast_cpu(const AttentionProblem& p, int num_threads) {\n",
                    "void flash_attention_fast_cpu(const AttentionProblem& p, int num_threads) {\n"
                    "  return flash_attention_simple_cpu(p);\n",
                )
            ],
        ),
        Mutant(
            "the fast op runs the simple kernel",
            FA_EVAL_CPU,
            [("if (kernel_ == Kernel::Simple) {", "if (true) {")],
        ),
        Mutant(
            "the fast kernel ignores num_threads and runs on one thread",
            "refsol/extensions_ref/src/flash_attention_fast.cpp",
            [
                (
                    "threads = static_cast<int>(std::min<int64_t>(threads, n_items));",
                    "threads = 1;",
                )
            ],
        ),
    ],
    (3, 1): [
        Mutant(
            "a GPU call computes on the CPU instead of dispatching the kernel",
            "refsol/extensions_ref/src/softmax_rows.cpp",
            [("if (simulated_) {", "if (false) {")],
        ),
        Mutant(
            "every row gets 1024 threads, not its columns rounded up to SIMD groups",
            "refsol/extensions_ref/src/softmax_rows_gpu.cpp",
            [
                (
                    "const int threads = std::min(1024, (n + 31) / 32 * 32);",
                    "const int threads = 1024;",
                )
            ],
        ),
    ],
    (3, 2): [
        Mutant(
            "a GPU call runs the CPU kernel instead of dispatching the Metal one",
            FA_EVAL_CPU,
            [("if (simulated_) {", "if (false) {")],
        ),
        Mutant(
            "flash_attention dispatches the simdgroup_matrix kernel, not the day's",
            FA_GPU,
            [("const bool fast = kernel_ == Kernel::Fast;", "const bool fast = true;")],
        ),
    ],
    (3, 3): [
        Mutant(
            "causal K/V tiles are computed instead of skipped",
            FA_METAL,
            [("if (p.mask_kind != MASK_CAUSAL || first_row + p.S - p.L < 0) {", "if (true) {")],
        ),
        Mutant(
            "the causal test runs on tiles a row sees whole",
            FA_METAL,
            [
                (
                    "return p.mask_kind != MASK_NONE && !seen_whole;",
                    "return p.mask_kind != MASK_NONE;",
                )
            ],
        ),
    ],
    (3, 4): [
        Mutant(
            "flash_attention_fast dispatches the day 2 kernel",
            FA_GPU,
            [("const bool fast = kernel_ == Kernel::Fast;", "const bool fast = false;")],
        ),
        Mutant(
            "a threadgroup visits every K/V tile under a causal mask",
            FA_METAL,
            [
                (
                    "const int tiles = kv_tiles_to_visit(first_row, last_row, p);",
                    "const int tiles = (p.S + Bc - 1) / Bc;",
                )
            ],
        ),
        Mutant(
            "the accumulator is not rescaled between K/V tiles",
            FA_METAL,
            [
                ("      spill[g][lane] *= row_alpha[g][lane / 8];\n", ""),
                ("      spill[g][lane + 32] *= row_alpha[g][lane / 8 + 4];\n", ""),
            ],
        ),
    ],
    (3, 5): [
        Mutant(
            "16-bit inputs run the float32 kernels",
            FA_GPU,
            [("const char* suffix = type_suffix(q.dtype());", 'const char* suffix = "f32";')],
        ),
    ],
    (4, 1): "the naive backward is the day's numbers: every gradient (dQ, dK, dV, GQA folded "
    "over the group, masks, rows that see no key) is checked against MLX's autodiff and float64 "
    "finite differences, so a defeated goal shows as a wrong gradient",
    (4, 2): [
        Mutant(
            "causal tiles are computed in the backward instead of skipped",
            "refsol/tiny_attn_ref/flash_attention_backward.py",
            [("if causal and j >= _kv_tiles_to_visit(q0, q1, L, S, Bc):", "if False:")],
        ),
    ],
    (4, 3): [
        Mutant(
            "the C++ backward ignores num_threads and runs on one thread",
            "refsol/extensions_ref/src/flash_attention_backward_cpu.cpp",
            [
                (
                    "const int threads = task_threads(num_threads, n_items);",
                    "const int threads = 1;",
                )
            ],
        ),
    ],
    (4, 4): [
        Mutant(
            "a GPU call of the backward runs the CPU kernel instead of the Metal ones",
            "refsol/extensions_ref/src/flash_attention_backward.cpp",
            [("if (simulated_) {", "if (false) {")],
        ),
        Mutant(
            "the Week 3 forward does not write the lse",
            FA_METAL,
            [("    lse[size_t(n) * p.L + row] = m_i + log(l_i);\n", "")],
        ),
        Mutant(
            "causal tiles are computed in the dK/dV kernel instead of skipped",
            FA_METAL,
            [
                (
                    "if (j >= kv_tiles_to_visit(first_row, min(first_row + Br, p.L) - 1, p)) {",
                    "if (false) {",
                )
            ],
        ),
        Mutant(
            "the dK/dV kernel sums over the first query head of a GQA group only",
            FA_METAL,
            [("for (int g = 0; g < G; ++g) {", "for (int g = 0; g < 1; ++g) {")],
        ),
        Mutant(
            "the dq option is ignored: dQ always by atomic adds",
            FA_BWD_GPU,
            [("const bool atomic_dq = dq_ == DqMode::Atomic;", "const bool atomic_dq = true;")],
        ),
        Mutant(
            "the dq option is ignored: dQ always by the separate kernel",
            FA_BWD_GPU,
            [("const bool atomic_dq = dq_ == DqMode::Atomic;", "const bool atomic_dq = false;")],
        ),
    ],
    (4, 5): "training puts the days before together: its tests compare the loss curve and the "
    "gradients with the naive path, and the mutants of Days 2 and 3 already defeat its parts",
    (5, 1): [
        Mutant(
            "the CPU decode reads K/V once per query head (one task per head, not per group)",
            DECODE_CPU,
            [("const int rows_per_task = rows;", "const int rows_per_task = p.L;")],
        ),
        Mutant(
            "the GPU decode gives each query head its own threadgroup (K/V read per head)",
            DECODE_GPU,
            [("p.rows_per_block = std::min(rows, kDecodeRows);", "p.rows_per_block = p.L;")],
        ),
        Mutant(
            "the decode kernel's SIMD groups are not merged (only SIMD group 0's keys count)",
            DECODE_METAL,
            [
                (
                    "        for (int g = 0; g < int(n_simd); ++g) {\n"
                    "          const float w = exp(merge_m[g] - M);",
                    "        for (int g = 0; g < 1; ++g) {\n"
                    "          const float w = exp(merge_m[g] - M);",
                )
            ],
        ),
    ],
    (5, 2): [
        Mutant(
            "split-K ignores num_splits on the CPU (one split does all the keys)",
            DECODE_SPLIT,
            [("R = G * p.L, n_splits = p.num_splits;", "R = G * p.L, n_splits = 1;")],
        ),
        Mutant(
            "split-K ignores num_splits on the GPU (a grid of one split)",
            DECODE_SPLIT,
            [
                (
                    "MTL::Size(p.B * p.H, row_blocks, p.num_splits)",
                    "MTL::Size(p.B * p.H, row_blocks, 1)",
                )
            ],
        ),
        Mutant(
            "the merge averages the splits instead of weighting them by exp(lse - M)",
            DECODE_SPLIT,
            [("const float w = std::exp(lse[z] - M);", "const float w = 1.0f;")],
        ),
        Mutant(
            "the GPU merge averages the splits",
            DECODE_METAL,
            [("const float w = exp(lse[z] - M); // 0 for an empty split", "const float w = 1.0f;")],
        ),
    ],
    (5, 3): [
        Mutant(
            "the paged op copies every sequence's pages into a contiguous cache first",
            DECODE_OPS,
            [(PAGED_DISPATCH, PAGED_GATHERED_FIRST)],
        ),
        Mutant(
            "the block table is ignored (pages taken in pool order)",
            PAGED_CPU,
            [
                (
                    "const int page = p.block_table[int64_t(b) * p.max_blocks + j / p.page_size];",
                    "const int page = b * p.max_blocks + j / p.page_size;",
                )
            ],
        ),
        Mutant(
            "the paged batch on the CPU goes head by head (Day 1's tasks, a jump every page)",
            DECODE_CPU,
            [
                (
                    "return paged_decode_cpu(p, num_threads); // day 3: a sequence's pages in",
                    "// day 3: a sequence's pages in",
                )
            ],
        ),
        Mutant(
            "the paged tasks keep one softmax state for all their heads",
            PAGED_CPU,
            [
                (
                    "decode_group(p, b, h, 0, rows, c0, c1, st[h - h0]);",
                    "decode_group(p, b, h, 0, rows, c0, c1, st[0]);",
                )
            ],
        ),
    ],
    (5, 4): [
        Mutant(
            "the naive model soft-caps the masked scores (the mask before softcap)",
            VARLEN_PY,
            [
                (
                    "        keep = local_mask(L, S, window, causal=causal)\n"
                    "        scores = mx.where(keep, scores, mx.finfo(scores.dtype).min)\n",
                    "",
                ),
                (
                    "        if softcap is not None:\n",
                    "        keep = local_mask(L, S, window, causal=causal)\n"
                    "        scores = mx.where(keep, scores, mx.finfo(scores.dtype).min)\n"
                    "        if softcap is not None:\n",
                ),
            ],
        ),
        Mutant(
            "the CPU kernel computes the K/V tiles before the window instead of skipping them",
            VARLEN_CPU,
            [
                (
                    "for (int j = lo_all / kBc; j <= hi_all / kBc; ++j) {",
                    "for (int j = 0; j <= hi_all / kBc; ++j) {",
                )
            ],
        ),
        Mutant(
            "the CPU kernel computes the K/V tiles after the window instead of skipping them",
            VARLEN_CPU,
            [
                (
                    "for (int j = lo_all / kBc; j <= hi_all / kBc; ++j) {",
                    "for (int j = lo_all / kBc; j <= (S - 1) / kBc; ++j) {",
                )
            ],
        ),
        Mutant(
            "the CPU kernel soft-caps after the mask",
            VARLEN_CPU,
            [
                (
                    "float s = score(dot(q_row, k_row, E), pos, col, slope, p);\n"
                    "        if (!whole && (col < keys[r].lo || col > keys[r].hi)) {\n"
                    "          s = kMasked;\n"
                    "        }\n",
                    "float s = dot(q_row, k_row, E);\n"
                    "        if (!whole && (col < keys[r].lo || col > keys[r].hi)) {\n"
                    "          s = kMasked;\n"
                    "        }\n"
                    "        s = score(s, pos, col, slope, p);\n",
                )
            ],
        ),
        Mutant(
            "the CPU kernel runs on one thread",
            VARLEN_CPU,
            [
                (
                    "const int threads = task_threads(0, n_items); // one a core",
                    "const int threads = 1;",
                )
            ],
        ),
        Mutant(
            "the Metal kernel computes the K/V tiles before the window instead of skipping them",
            VARLEN_METAL,
            [
                (
                    "const int first_tile = sees_none ? 0 : keys.lo / VARLEN_BC;",
                    "const int first_tile = 0;",
                )
            ],
        ),
        Mutant(
            "the Metal kernel compares every score with the window, on tiles it sees whole too",
            VARLEN_METAL,
            [
                (
                    "const bool masked = !(keys.lo <= j * VARLEN_BC && tile_last <= keys.hi);",
                    "const bool masked = true;",
                )
            ],
        ),
        Mutant(
            "the Metal kernel soft-caps after the mask",
            VARLEN_METAL,
            [
                (
                    "      s = varlen_score(dot, pos, col, slope, p);\n"
                    "      if (masked && (col < keys.lo || col > keys.hi)) {\n"
                    "        s = VARLEN_MASKED;\n"
                    "      }\n",
                    "      s = dot;\n"
                    "      if (masked && (col < keys.lo || col > keys.hi)) {\n"
                    "        s = VARLEN_MASKED;\n"
                    "      }\n"
                    "      s = varlen_score(s, pos, col, slope, p);\n",
                )
            ],
        ),
    ],
    (5, 5): [
        Mutant(
            "the generation loop recomputes the whole context at every step (no KV cache)",
            SERVING,
            [
                (
                    "logits = self.decode_step(seqs, nxt)",
                    "logits = mx.stack([self.model(mx.array([o]))[0, -1] for o in outputs])",
                )
            ],
        ),
        Mutant(
            "the prompt goes through the naive attention instead of flash_attention",
            SERVING,
            [
                (
                    "from .multihead import merge_heads, split_heads\n",
                    "from .masks import scaled_dot_product_attention\n"
                    "from .multihead import merge_heads, split_heads\n",
                ),
                (
                    'o = flash_attention(q, k, v, mask="causal", stream=self.stream)',
                    'o = scaled_dot_product_attention(q, k, v, mask="causal")',
                ),
            ],
        ),
    ],
}


def source_files() -> list[str]:
    """The repository's files as git sees them: tracked, and new ones not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({n.decode() for n in out.split(b"\0") if n and (ROOT / n.decode()).is_file()})


def sync_scratch() -> None:
    """Make build/mutants/ a copy of the repository, rewriting only the files that differ (so
    that the scratch build recompiles only what changed) and removing sources that are gone."""
    files = source_files()
    for rel in files:
        src, dst = ROOT / rel, SCRATCH / rel
        data = src.read_bytes()
        if not dst.is_file() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)  # a fresh mtime: ninja sees the change
            dst.chmod(src.stat().st_mode)
    keep = set(files)
    for folder in ("src", "refsol", "tools", "tests_refsol", "cmake"):  # the build globs sources
        for p in (SCRATCH / folder).rglob("*"):
            rel = p.relative_to(SCRATCH).as_posix()
            stale_source = p.suffix in {".py", ".cpp", ".h", ".metal", ".txt", ".cmake"}
            if p.is_file() and stale_source and "__pycache__" not in p.parts and rel not in keep:
                p.unlink()


def mutated(mutant: Mutant, original: str) -> str:
    """The mutant's text of a file; stops the check if the reference has moved on from it."""
    text = original
    for old, new in mutant.edits:
        n = text.count(old)
        if n != 1:
            raise SystemExit(
                f"[check-mutants] the mutant {mutant.name!r} no longer applies: {mutant.path} "
                f"holds its text {n} times, not once:\n    {old!r}\n"
                "Update it in tools/tiny_attn_tools/check_mutants.py to the reference as it is now."
            )
        text = text.replace(old, new)
    return text


def apply(mutant: Mutant) -> str:
    """Write the mutant into the scratch copy; return the original text to restore."""
    target = SCRATCH / mutant.path
    original = target.read_text()
    target.write_text(mutated(mutant, original))
    return original


def run_day(week: int, day: int) -> tuple[int, str]:
    """Run the day's graded tests in the scratch copy, stopping at the first failure."""
    # COLUMNS: pytest's one-line summary keeps the failure's message, not only the test's name.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", COLUMNS="400")
    env["PYTHONPATH"] = os.pathsep.join(str(SCRATCH / d) for d in PACKAGE_FOLDERS)
    cmd = [sys.executable, "-m", "tiny_attn_tools.run_tests", "--refsol", "--week", str(week)]
    cmd += ["--day", str(day), "--", "-x", "-q", "-p", "no:cacheprovider", "-rfE"]
    try:
        r = subprocess.run(
            cmd, cwd=SCRATCH, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s"
    return r.returncode, r.stdout + r.stderr


def verdict(rc: int, output: str) -> tuple[bool, str]:
    """(caught, why): caught means a graded test failed; why is pytest's one-line summary."""
    if rc == 0:
        return False, "every test of the day passes"
    if rc == -1:
        return False, "BROKEN: " + output
    if "did not build" in output or "BuildError" in output:
        return False, "BROKEN: the mutant does not build"
    for line in output.splitlines():
        if line.startswith("FAILED "):
            return True, line[len("FAILED ") :].split("::", 1)[-1]
    tail = output.strip().splitlines()[-1:] or ["(no output)"]
    return False, f"BROKEN: no test failed (pytest exit code {rc}): {tail[0]}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pdm run check-mutants", description=__doc__)
    parser.add_argument("--week", type=int)
    parser.add_argument("--day", type=int)
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    args = parser.parse_args(argv)

    days = course.select_days(args.week, args.day)
    missing = [f"w{w}d{d}" for w, d in course.available_days() if (w, d) not in MUTANTS]
    if missing:
        print(f"[check-mutants] FAILED: no mutants (nor a reason why not) for {missing}")
        return 1

    # Every mutant must still apply to the reference as it is, before anything is run.
    for week, day in days:
        entry = MUTANTS[(week, day)]
        for mutant in [] if isinstance(entry, str) else entry:
            mutated(mutant, (ROOT / mutant.path).read_text())

    start = time.monotonic()
    if not args.list:
        print("[check-mutants] syncing the scratch copy build/mutants/ ...", flush=True)
        SCRATCH.mkdir(parents=True, exist_ok=True)
        sync_scratch()
    rows, failures = [], 0
    for week, day in days:
        entry = MUTANTS[(week, day)]
        if isinstance(entry, str):
            rows.append((f"w{week}d{day}", "(no mutant)", "-", entry))
            continue
        for mutant in entry:
            if args.list:
                rows.append((f"w{week}d{day}", mutant.name, "-", mutant.path))
                continue
            t0 = time.monotonic()
            original = apply(mutant)
            try:
                rc, output = run_day(week, day)
            finally:
                (SCRATCH / mutant.path).write_text(original)
            caught, why = verdict(rc, output)
            failures += not caught
            result = f"caught ({time.monotonic() - t0:.0f} s)" if caught else "NOT CAUGHT"
            rows.append((f"w{week}d{day}", mutant.name, result, why))
            print(f"  w{week}d{day}  {mutant.name}: {result}: {why}", flush=True)
            if not caught:
                print(output[-3000:], flush=True)

    print()
    width = max(len(r[1]) for r in rows)
    print(f"{'day':5} {'mutant':{width}}  {'result':14} failing test (or why no mutant)")
    for day_label, name, result, why in rows:
        print(f"{day_label:5} {name:{width}}  {result:14} {why[:160]}")
    if args.list:
        return 0
    print(f"\n[check-mutants] {time.monotonic() - start:.0f} s in all")
    if failures:
        print(f"[check-mutants] FAILED: {failures} mutant(s) not caught by their day's tests")
        return 1
    print("[check-mutants] ok: every mutant makes one of its day's graded tests fail")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
