// The Python face of Week 5, day 4's op: flash_attention_varlen.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <optional>
#include <string>

#include "bindings_args.h"
#include "flash_attention_varlen.h"

using namespace nb::literals;
using namespace tiny_attn::bindings;

namespace {

constexpr const char* kOp = "flash_attention_varlen";

// A finite float32 number; `what` says which values are allowed.
float float_arg(const char* name, nb::handle x, const char* what) {
  if (!is_number(x)) {
    type_error(kOp, std::string(name) + " must be " + what + ", got " + python_type(x));
  }
  const double v = PyFloat_AsDouble(x.ptr());
  if (PyErr_Occurred() || !std::isfinite(v) || std::fabs(v) > FLT_MAX) {
    PyErr_Clear();
    tiny_attn::fail_varlen(
        std::string(name) + " must be " + what + ", got " + nb::cast<std::string>(nb::str(x)));
  }
  return static_cast<float>(v);
}

// One side of the window: an int >= 0, at most INT_MAX.
int window_side(nb::handle x) {
  if (!is_int(x)) {
    type_error(
        kOp,
        "window must be None, an int or a pair (left, right) of ints, got an element of type " +
            python_type(x));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(x.ptr(), &overflow);
  if (overflow < 0 || (overflow == 0 && v < 0)) {
    tiny_attn::fail_varlen(
        "window sizes must be >= 0, got " + nb::cast<std::string>(nb::str(x)) +
        " (None means no window)");
  }
  return overflow > 0 || v > INT_MAX ? INT_MAX : static_cast<int>(v);
}

} // namespace

void bind_varlen(nb::module_& m) {
  m.def(
      "flash_attention_varlen",
      [](nb::handle query,
         nb::handle key,
         nb::handle value,
         nb::handle cu_seqlens_q,
         nb::handle cu_seqlens_k,
         nb::handle scale,
         nb::handle causal,
         nb::handle window,
         nb::handle alibi_slopes,
         nb::handle softcap,
         nb::handle stream) {
        const mx::array q = array_arg(kOp, "query", query);
        tiny_attn::VarlenMasks masks;
        masks.causal = bool_arg(kOp, "causal", causal);
        if (!window.is_none()) {
          if (nb::isinstance<nb::tuple>(window)) {
            nb::tuple w = nb::borrow<nb::tuple>(window);
            if (w.size() != 2) {
              tiny_attn::fail_varlen(
                  "window must be an int or a pair (left, right), got a tuple of " +
                  std::to_string(w.size()));
            }
            masks.window_left = window_side(w[0]);
            masks.window_right = window_side(w[1]);
          } else {
            masks.window_left = window_side(window); // the `window` keys before, none after
            masks.window_right = 0;
          }
        }
        if (!softcap.is_none()) {
          masks.softcap = float_arg("softcap", softcap, "None or a positive finite float");
          if (masks.softcap <= 0.0f) {
            tiny_attn::fail_varlen(
                "softcap must be None or a positive finite float, got " +
                nb::cast<std::string>(nb::str(softcap)));
          }
        }
        const float s = scale.is_none() ? default_scale(q)
                                        : float_arg("scale", scale, "None or a finite float");
        std::optional<mx::array> slopes;
        if (!alibi_slopes.is_none()) {
          slopes = array_arg(kOp, "alibi_slopes", alibi_slopes);
        }
        const mx::StreamOrDevice where = stream_arg(kOp, stream);
        return tiny_attn::flash_attention_varlen(
            q,
            array_arg(kOp, "key", key),
            array_arg(kOp, "value", value),
            array_arg(kOp, "cu_seqlens_q", cu_seqlens_q),
            array_arg(kOp, "cu_seqlens_k", cu_seqlens_k),
            s,
            masks,
            slopes,
            where);
      },
      "query"_a.none(),
      "key"_a.none(),
      "value"_a.none(),
      "cu_seqlens_q"_a.none(),
      "cu_seqlens_k"_a.none(),
      "scale"_a.none() = nb::none(),
      nb::kw_only(),
      "causal"_a.none() = nb::bool_(false),
      "window"_a.none() = nb::none(),
      "alibi_slopes"_a.none() = nb::none(),
      "softcap"_a.none() = nb::none(),
      "stream"_a.none() = nb::none(),
      R"(FlashAttention over a packed batch of sequences of different lengths, with the masks
computed in the kernel (no L x S mask exists): causal, sliding window, ALiBi, soft-capping.

Sequence s owns query rows cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1 and keys
cu_seqlens_k[s] .. cu_seqlens_k[s + 1] - 1, and attends within itself. Its row i (of L) sits
at key position pos = i + S - L (bottom-right, as the causal mask) and sees key j when
pos - left <= j <= pos + right, and j <= pos if causal.

Args:
    query (array): float32 (total_q, H_q, E), the sequences' query rows one after the other.
    key, value (array): float32 (total_k, H, E); H_q a multiple of H (GQA).
    cu_seqlens_q, cu_seqlens_k (array): int32 (num_seqs + 1,), from 0 to total_q / total_k.
    scale (float, optional): multiplies Q K^T; None means 1 / sqrt(E).
    causal (bool): bottom-right causal mask in every sequence.
    window (int or (int, int), optional): a sliding window: ``w`` sees itself and the w keys
        before (w, 0); ``(left, right)`` the left keys before and right after. None: no window.
    alibi_slopes (array, optional): float32 (H_q,): adds -slope[h] * |pos - j| to the scores.
    softcap (float, optional): scores become softcap * tanh(score / softcap), before ALiBi
        and the mask.
    stream (Stream or Device, optional): the CPU if None; mx.gpu runs the Metal kernel
        flash_attention_varlen_f32 (on metalsim without Metal; E <= 128).

Returns:
    array: float32 (total_q, H_q, E). A row that sees no key averages its sequence's values,
    as mx.fast.scaled_dot_product_attention does with a boolean mask.

Raises:
    TypeError, ValueError: an argument of the wrong type, shape, dtype or value; the message
        names it.)");
}
