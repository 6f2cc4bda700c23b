// A row softmax as an MLX primitive whose GPU path is a Metal kernel: on a Mac it runs on the
// GPU, elsewhere the same eval_gpu runs on metalsim (see metalsim/mlx_extension.h).
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace metalsim_example {

namespace mx = mlx::core;

// softmax over the last axis of a 2-D float32 array. threads: threads per row on the GPU path
// (0: a multiple of 32 covering the row, at most 1024); more than 1024 fails as on a GPU.
mx::array row_softmax(const mx::array& x, int threads = 0, mx::StreamOrDevice s = {});

class RowSoftmax : public mx::Primitive {
 public:
  RowSoftmax(mx::Stream stream, bool on_simulator, int threads)
      : mx::Primitive(stream), on_simulator_(on_simulator), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override {
    return "RowSoftmax";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const RowSoftmax&>(other);
    return on_simulator_ == o.on_simulator_ && threads_ == o.threads_;
  }

 private:
  bool on_simulator_; // built for the GPU but scheduled on the CPU stream: run eval_gpu there
  int threads_;
};

} // namespace metalsim_example
