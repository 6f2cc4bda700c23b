// A row softmax as an MLX primitive whose GPU path is a Metal kernel: on a Mac it runs on the
// GPU, elsewhere the same eval_gpu runs on metalsim (see metalsim/gpu_backend.h).
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace metalsim_example {

namespace mx = mlx::core;

// softmax over the last axis of a 2-D float32 array.
mx::array row_softmax(const mx::array& x, mx::StreamOrDevice s = {});

class RowSoftmax : public mx::Primitive {
 public:
  RowSoftmax(mx::Stream stream, bool on_simulator)
      : mx::Primitive(stream), on_simulator_(on_simulator) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "RowSoftmax"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return on_simulator_ == static_cast<const RowSoftmax&>(other).on_simulator_;
  }

 private:
  bool on_simulator_;  // built for the GPU but scheduled on the CPU stream: run eval_gpu there
};

}  // namespace metalsim_example
