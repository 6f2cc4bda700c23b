// Week 2, day 3: the course's first MLX primitive, a softmax over the last axis.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace tiny_attn {

// softmax over the last axis of a float32 array of rank >= 1. Returns a lazy array: nothing
// is computed until it is evaluated (mx::eval, printing, converting to NumPy, ...).
mx::array softmax_rows(const mx::array& x, mx::StreamOrDevice s = {});

// The node of the lazy graph that softmax_rows builds. MLX calls eval_cpu or eval_gpu (by
// the device of the stream it was created on) once its input has been evaluated.
class SoftmaxRows : public mx::UnaryPrimitive {
 public:
  explicit SoftmaxRows(mx::Stream stream, bool simulated = false)
      : mx::UnaryPrimitive(stream), simulated_(simulated) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  const char* name() const override {
    return "SoftmaxRows";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    return true; // no parameters: two SoftmaxRows on the same input compute the same thing
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  // Week 3: a GPU call on a machine without Metal. The primitive sits on a CPU stream and
  // eval_cpu hands over to eval_gpu, which runs the Metal kernel on metalsim
  // (metalsim::place_op, src/metalsim/include/metalsim/mlx_extension.h).
  bool simulated_;
};

} // namespace tiny_attn
