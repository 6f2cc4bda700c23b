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
  DecodeParams p = p_in;
  // One threadgroup holds the whole group's G * L query rows (up to kDecodeRows), so a
  // threadgroup reads each key and value row of its key/value head once for all of them.
  const int rows = p.H_q / p.H * p.L;
  p.rows_per_block = std::min(rows, kDecodeRows);
  const int row_blocks = (rows + p.rows_per_block - 1) / p.rows_per_block;

  const std::string name = "decode_attention_" + decode_type_suffix(bufs.q.dtype()) + "_e128";
  auto& d = gpu::device(s.device);
  auto* kernel = d.get_kernel(name, metalsim::extension_library(d));
  const int threads = decode_threads(kernel, name.c_str());
  auto& enc = gpu::get_command_encoder(s);
  enc.set_compute_pipeline_state(kernel);
  enc.set_input_array(bufs.q, 0);
  enc.set_input_array(bufs.k, 1);
  enc.set_input_array(bufs.v, 2);
  enc.set_output_array(bufs.out, 3);
  enc.set_input_array(bufs.block_table, 4);
  enc.set_input_array(bufs.seq_lens, 5);
  enc.set_bytes(p, 8);
  enc.set_output_array(decode_gpu_rows_read(), kDecodeCountsBuffer); // the kernel adds to it
  enc.dispatch_threadgroups(MTL::Size(p.B * p.H, row_blocks, 1), MTL::Size(threads, 1, 1));
}

} // namespace tiny_attn
