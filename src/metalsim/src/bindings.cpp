// What a dispatch binds: [[buffer(i)]] pointers and bytes, [[threadgroup(i)]] lengths.
#include <cstring>

#include "internal.h"

namespace metalsim {

void Bindings::buffer(
    int index, void* data, uint64_t size, Dtype dtype, uint64_t before, bool read_only) {
  if (index < 0 || index > 30)
    throw BindingError(
        "buffer index " + std::to_string(index) +
        " is out of range: Metal has [[buffer(0)]] to [[buffer(30)]]");
  Buffer b;
  b.data = data;
  b.size = size;
  b.dtype = dtype;
  b.before = before;
  b.read_only = read_only;
  buffers_[index] = b;
}

void Bindings::bytes(int index, const void* data, uint64_t size, Dtype dtype) {
  if (index < 0 || index > 30)
    throw BindingError(
        "buffer index " + std::to_string(index) +
        " is out of range: Metal has [[buffer(0)]] to [[buffer(30)]]");
  Buffer b;
  b.copy = std::make_shared<std::vector<unsigned char>>(size ? size : 1);
  if (size)
    std::memcpy(b.copy->data(), data, size);
  b.data = b.copy->data();
  b.size = size;
  b.dtype = dtype;
  b.is_bytes = true;
  buffers_[index] = b;
}

void Bindings::threadgroup(int index, uint64_t length) {
  if (index < 0 || index > 30)
    throw BindingError("threadgroup index " + std::to_string(index) + " is out of range: 0 to 30");
  threadgroup_[index] = length;
}

} // namespace metalsim
