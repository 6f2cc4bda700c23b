// The C++ host API of function constants: a pipeline of valid_msl.metal's `specialised` kernel,
// created with its constants, dispatched on a buffer. Prints the buffer (test_msl.py checks it).
#include <cstdio>
#include <vector>

#include "metalsim/host.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s valid_msl.metal\n", argv[0]);
    return 2;
  }
  auto lib = metalsim::Library::from_files({argv[1]});
  auto pipeline = lib->pipeline(
      "specialised",
      {{0, metalsim::ConstantValue::boolean(true)},
       {1, metalsim::ConstantValue::integer(1)},
       {2, metalsim::ConstantValue::floating(0.25)}});
  std::vector<float> x = {0, 1, 2, 3}, extra = {10, 10, 10, 10};
  metalsim::Bindings b;
  b.buffer(0, x.data(), x.size() * sizeof(float), metalsim::Dtype::float32);
  b.buffer(1, extra.data(), extra.size() * sizeof(float), metalsim::Dtype::float32);
  pipeline->dispatch({1, 1, 1}, {4, 1, 1}, b);
  for (float v : x)
    std::printf("%g ", v);
  std::printf("\n");
  return 0;
}
