// MLX's decode attention kernel (sdpa_vector.h, from the installed mlx wheel, unchanged),
// instantiated as MLX's own scaled_dot_product_attention.metal does. The host sets the
// function constants (has_mask, query_transposed, do_causal, bool_mask, float_mask, has_sinks)
// when it creates the pipeline.
#include "mlx/backend/metal/kernels/utils.h"
#include "mlx/backend/metal/kernels/sdpa_vector.h"

template [[host_name("sdpa_vector_float_64_64")]] [[kernel]]
decltype(sdpa_vector<float, 64, 64>) sdpa_vector<float, 64, 64>;
template [[host_name("sdpa_vector_float16_t_64_64")]] [[kernel]]
decltype(sdpa_vector<float16_t, 64, 64>) sdpa_vector<float16_t, 64, 64>;
template [[host_name("sdpa_vector_float_128_128")]] [[kernel]]
decltype(sdpa_vector<float, 128, 128>) sdpa_vector<float, 128, 128>;
