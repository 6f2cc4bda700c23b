// out = alpha * x + beta * y: one thread per element, threadgroups side by side along the
// array. The last threadgroup may reach past the end: its extra threads do nothing.
#include <metal_stdlib>
using namespace metal;

kernel void axpby_f32(device const float* x [[buffer(0)]],
                      device const float* y [[buffer(1)]],
                      device float* out [[buffer(2)]],
                      constant float& alpha [[buffer(3)]],
                      constant float& beta [[buffer(4)]],
                      constant uint& n [[buffer(5)]],
                      uint i [[thread_position_in_grid]]) {
    if (i < n) {
        out[i] = alpha * x[i] + beta * y[i];
    }
}
