// Week 2, day 4: the flash_attention op (validation, the lazy array).
#include "flash_attention.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "metalsim/mlx_extension.h"

namespace tiny_attn {

// ---------------------------------------------------------------- Task 1: the op
mx::array flash_attention(
    const mx::array& query,
    const mx::array& key,
    const mx::array& value,
    float scale,
    const std::optional<mx::array>& mask,
    bool causal,
    Kernel kernel,
    int num_threads,
    mx::StreamOrDevice s) {
  // TODO(Task 1): check every argument (ranks, dtypes, shapes, H_q % H, sizes of 0, the
  // mask's dtype and shape, scale, num_threads, mask together with causal) and throw
  // std::invalid_argument (use fail) with a message naming the argument and what was
  // expected. Then make query, key and value row-contiguous, cast a floating mask to
  // float32 and broadcast it to (N, H_q, L, S), and return the lazy array built around a
  // FlashAttention primitive (inputs: query, key, value[, mask]).
  // Place it with `const metalsim::OpPlacement place = metalsim::place_op(s);`, not
  // mx::to_stream: use place.stream, pass place.simulated to FlashAttention. Week 3 runs GPU
  // calls through it (and, on its day 5, lets float16 / bfloat16 in when place.on_gpu()).
  // Week 4, Day 3, Task 1: on the CPU (primitive->returns_lse()) the primitive has two
  // outputs, out and the (N, H_q, L) float32 lse: build them with mx::array::make_arrays.
  throw std::runtime_error(
      "flash_attention is not implemented yet: see "
      "book/src/week2-04-flash-attention-cpp.md, Task 1");
}

// eval_cpu, given: src/extension_common/flash_attention_eval.cpp. eval_gpu (Week 3) is in
// src/flash_attention_gpu.cpp.

} // namespace tiny_attn
