// The Python face of the extension: one nanobind function per op, with its docstring.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/variant.h>

#include "metalsim/mlx_extension.h"
#include "flash_attention.h"
#include "flash_attention_gpu.h"
#include "softmax_rows.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_core, m) {
  m.doc() =
      "tiny-attn's MLX C++ extension: softmax_rows and FlashAttention on the CPU and the GPU.";
  // Where this build runs its GPU kernels: a Mac without the Metal compiler builds for metalsim
  // although MLX there has a GPU, so only the build can say (benches and the demo ask).
  m.attr("gpu_backend") = METALSIM_GPU_IS_SIMULATED ? "metalsim" : "metal";

  m.def(
      "softmax_rows",
      [](const mx::array& x, const metalsim::DeviceOrStream& stream) {
        return tiny_attn::softmax_rows(x, metalsim::to_stream_or_device(stream));
      },
      "x"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      R"(Softmax over the last axis of a float32 array.

Args:
    x (array): float32, any shape with at least one dimension.
    stream (Stream or Device, optional): where to evaluate; the default device if None.
        mx.gpu runs the Metal kernel softmax_rows_f32 (Week 3), on metalsim without Metal.

Returns:
    array: the shape of ``x``; every row (last axis) is non-negative and sums to 1.

Raises:
    ValueError: ``x`` is a scalar or not float32.)");

  m.def(
      "flash_attention",
      [](const mx::array& query,
         const mx::array& key,
         const mx::array& value,
         float scale,
         const std::optional<mx::array>& mask,
         bool causal,
         const metalsim::DeviceOrStream& stream) {
        const mx::StreamOrDevice s = metalsim::to_stream_or_device(stream);
        tiny_attn::check_gpu_has_bfloat16(query, metalsim::place_op(s).on_gpu());
        return tiny_attn::flash_attention(
            query, key, value, scale, mask, causal, tiny_attn::CpuKernel::Simple, 1, s);
      },
      "query"_a,
      "key"_a,
      "value"_a,
      "scale"_a,
      "mask"_a = nb::none(),
      "causal"_a = false,
      nb::kw_only(),
      "stream"_a = nb::none(),
      R"(FlashAttention (Br = Bc = 32): day 4's single-threaded CPU kernel, or on the GPU
Week 3's Metal kernel flash_attention_<t>_e128 (one score per thread, E <= 128).

Args:
    query (array): float32, shape (N, H_q, L, E).
    key (array): float32, shape (N, H, S, E); H_q must be a multiple of H.
    value (array): float32, shape (N, H, S, E).
    scale (float): multiplies Q K^T, usually 1 / sqrt(E).
    mask (array, optional): bool (True = keep) or floating (added to the scores),
        broadcastable to (N, H_q, L, S).
    causal (bool): query i sees keys j <= i + S - L. Not together with ``mask``.
    stream (Stream or Device, optional): where to evaluate. mx.gpu runs the Metal kernel
        (on metalsim where there is no Metal device); there, query, key and value may also
        be float16 or bfloat16, all of one dtype.

Returns:
    array: shape (N, H_q, L, E), the dtype of ``query``.

Raises:
    ValueError: a wrong rank, dtype or shape; on the GPU, E > 128. The message names the
        argument.)");

  m.def(
      "flash_attention_fast",
      [](const mx::array& query,
         const mx::array& key,
         const mx::array& value,
         float scale,
         const std::optional<mx::array>& mask,
         bool causal,
         int num_threads,
         const metalsim::DeviceOrStream& stream) {
        const mx::StreamOrDevice s = metalsim::to_stream_or_device(stream);
        tiny_attn::check_gpu_has_bfloat16(query, metalsim::place_op(s).on_gpu());
        return tiny_attn::flash_attention(
            query, key, value, scale, mask, causal, tiny_attn::CpuKernel::Fast, num_threads, s);
      },
      "query"_a,
      "key"_a,
      "value"_a,
      "scale"_a,
      "mask"_a = nb::none(),
      "causal"_a = false,
      nb::kw_only(),
      "num_threads"_a = 0,
      "stream"_a = nb::none(),
      R"(FlashAttention (Br = Bc = 32), day 5's fast CPU kernel: vectorised, multi-threaded;
on the GPU, Week 3's Metal kernel flash_attention_simdgroup_<t> (8x8 simdgroup_matrix
products; E a multiple of 8, at most 128).

The arguments and the result are those of :func:`flash_attention`, plus:

Args:
    num_threads (int): threads to use; 0 (the default) means one per hardware thread.)");

  m.def(
      "tiles_visited",
      []() { return tiny_attn::tiles_visited().load(); },
      R"(How many (Q tile, K/V tile) pairs the CPU kernels have computed since the last
:func:`reset_tiles_visited`. Causal block skipping makes this about half of the unmasked count.)");

  m.def(
      "reset_tiles_visited",
      []() { tiny_attn::tiles_visited() = 0; },
      "Set the counter read by :func:`tiles_visited` to 0.");
}
