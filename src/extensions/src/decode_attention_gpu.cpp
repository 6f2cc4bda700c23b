// Week 5, day 1: the dispatch of decode_attention_<t>_e128 (src/decode_attention.metal). The
// same code drives a real Metal device and metalsim (see metalsim/mlx_extension.h).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "decode_attention.h"
#include "metalsim/mlx_extension.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 4: the dispatch
void dispatch_decode(mx::Stream s, const DecodeParams& p_in, const DecodeBuffers& bufs) {
  // TODO(Task 4): p.rows_per_block = min(G * L, kDecodeRows) in a copy of p_in; the kernel
  //   "decode_attention_" + decode_type_suffix(q's dtype) + "_e128"; bind q, k, v, out,
  //   block_table, seq_lens at 0..5, the params (set_bytes) at 8, decode_gpu_rows_read() at
  //   kDecodeCountsBuffer; dispatch (B * H, row blocks, 1) threadgroups of
  //   decode_threads(kernel, name) threads (1024 where the device allows it).
  throw std::runtime_error(
      "dispatch_decode is not implemented yet: see book/src/week5-01-decoding-kv-cache.md, "
      "Task 4");
}

} // namespace tiny_attn
