// metalsim's example op, alpha * x + beta * y, as an MLX primitive whose GPU path is a Metal
// kernel: on a Mac it runs on the GPU; elsewhere the same eval_gpu runs on metalsim.
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace metalsim_example {

namespace mx = mlx::core;

// alpha * x + beta * y for two float32 arrays of one shape. threads: threads per threadgroup
// on the GPU path (0: 256); more than 1024 fails there, as on a GPU.
mx::array axpby(
    const mx::array& x,
    const mx::array& y,
    float alpha,
    float beta,
    int threads = 0,
    mx::StreamOrDevice s = {});

class Axpby : public mx::UnaryPrimitive {
 public:
  Axpby(mx::Stream stream, bool simulated, float alpha, float beta, int threads)
      : mx::UnaryPrimitive(stream), simulated_(simulated), alpha_(alpha), beta_(beta),
        threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override {
    return "Axpby";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Axpby&>(other);
    return simulated_ == o.simulated_ && alpha_ == o.alpha_ && beta_ == o.beta_ &&
           threads_ == o.threads_;
  }

 private:
  bool simulated_; // a GPU call without Metal: eval_cpu hands over to eval_gpu (metalsim)
  float alpha_;
  float beta_;
  int threads_;
};

} // namespace metalsim_example
