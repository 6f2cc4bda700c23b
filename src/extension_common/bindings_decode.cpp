// The Python face of Week 5's ops: decoding, split-K and the paged KV cache.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "bindings_args.h"
#include "decode_attention.h"

using namespace nb::literals;
using namespace tiny_attn::bindings;

namespace {

// What every decode op takes after its arrays: scale (None: 1 / sqrt(E); else a float, as the
// other ops take it, checked by the op), num_splits (decode_attention has none: an empty
// handle, 1), causal and stream.
struct DecodeOptions {
  float scale;
  int num_splits;
  bool causal;
  mx::StreamOrDevice stream;
};

// Converts them in that order (a braced list is evaluated left to right), so the first wrong
// one is the one named.
DecodeOptions decode_options(
    const char* op,
    const mx::array& query,
    nb::handle scale,
    nb::handle num_splits,
    nb::handle causal,
    nb::handle stream) {
  return DecodeOptions{
      scale.is_none() ? default_scale(query) : scale_arg(op, scale),
      num_splits.is_valid() ? int_arg(op, "num_splits", num_splits) : 1,
      bool_arg(op, "causal", causal),
      stream_arg(op, stream)};
}

} // namespace

void bind_decode(nb::module_& m) {
  m.def(
      "decode_attention",
      [](nb::handle query,
         nb::handle key,
         nb::handle value,
         nb::handle scale,
         nb::handle causal,
         nb::handle stream) {
        const char* op = "decode_attention";
        const mx::array q = array_arg(op, "query", query);
        const mx::array k = array_arg(op, "key", key);
        const mx::array v = array_arg(op, "value", value);
        const DecodeOptions o = decode_options(op, q, scale, nb::handle(), causal, stream);
        return tiny_attn::decode_attention(q, k, v, o.scale, o.causal, o.stream);
      },
      "query"_a.none(),
      "key"_a.none(),
      "value"_a.none(),
      "scale"_a.none() = nb::none(),
      nb::kw_only(),
      "causal"_a.none() = nb::bool_(false),
      "stream"_a.none() = nb::none(),
      R"(Attention for decoding (Week 5, day 1): a few new query rows against a long KV cache.

On the CPU one task per (batch, key/value head) handles all the query heads of the group,
so K and V are read once per group; on the GPU the Metal kernel decode_attention_<t>_e128 spreads the
keys over the 32 SIMD groups of a threadgroup that holds the group's query rows.

Args:
    query (array): (B, H_q, L, E) with 1 <= L <= 8; float32 (GPU: also float16, bfloat16).
    key (array): (B, H, S, E), S >= 1, H_q a multiple of H; the dtype of query. A view (the
        live part of a KVCache) is read in place.
    value (array): like key.
    scale (float, optional): multiplies Q K^T; None means 1 / sqrt(E).
    causal (bool): query row i sees keys j <= i + S - L (bottom-right); needs S >= L.
    stream (Stream or Device, optional): the CPU if None; mx.gpu runs the Metal kernel
        (on metalsim where there is no Metal device; there E <= 128).

Returns:
    array: (B, H_q, L, E), the dtype of query.

Raises:
    TypeError, ValueError: a bad argument; the message names it.)");

  m.def(
      "decode_attention_split",
      [](nb::handle query,
         nb::handle key,
         nb::handle value,
         nb::handle scale,
         nb::handle num_splits,
         nb::handle causal,
         nb::handle stream) {
        const char* op = "decode_attention_split";
        const mx::array q = array_arg(op, "query", query);
        const mx::array k = array_arg(op, "key", key);
        const mx::array v = array_arg(op, "value", value);
        const DecodeOptions o = decode_options(op, q, scale, num_splits, causal, stream);
        return tiny_attn::decode_attention_split(
            q, k, v, o.scale, o.num_splits, o.causal, o.stream);
      },
      "query"_a.none(),
      "key"_a.none(),
      "value"_a.none(),
      "scale"_a.none() = nb::none(),
      nb::kw_only(),
      "num_splits"_a.none() = nb::int_(0),
      "causal"_a.none() = nb::bool_(false),
      "stream"_a.none() = nb::none(),
      R"(Split-K decoding (Week 5, day 2, flash-decoding): the keys of each sequence cut into
num_splits ranges, each giving a partial (o, lse), merged by a second pass with Week 2's rule.

The arguments and the result are those of :func:`decode_attention`, plus:

Args:
    num_splits (int): key ranges per sequence; 0 (the default) lets choose_num_splits pick
        from S and the machine. Splits may be empty (more splits than keys, or keys hidden
        by the causal mask): they weigh nothing in the merge. At most max(S, 64).)");

  m.def(
      "choose_num_splits",
      [](nb::handle S, nb::handle tasks, nb::handle workers) {
        const char* op = "choose_num_splits";
        const int s = int_arg(op, "S", S), t = int_arg(op, "tasks", tasks);
        const int w = int_arg(op, "workers", workers);
        if (s < 1 || t < 1 || w < 1) {
          value_error(op, "S, tasks and workers must all be >= 1");
        }
        return tiny_attn::choose_num_splits(s, t, w);
      },
      "S"_a.none(),
      "tasks"_a.none(),
      "workers"_a.none(),
      R"(How many splits a decode of S keys in `tasks` independent (batch, key/value head) pieces
uses on a machine running `workers` of them at once: enough to keep every worker busy, none
shorter than 256 keys, at most 64.)");

  m.def(
      "paged_decode_attention",
      [](nb::handle query,
         nb::handle k_pages,
         nb::handle v_pages,
         nb::handle block_table,
         nb::handle seq_lens,
         nb::handle scale,
         nb::handle num_splits,
         nb::handle causal,
         nb::handle stream) {
        const char* op = "paged_decode_attention";
        const mx::array q = array_arg(op, "query", query);
        const mx::array k = array_arg(op, "k_pages", k_pages);
        const mx::array v = array_arg(op, "v_pages", v_pages);
        const mx::array table = array_arg(op, "block_table", block_table);
        const mx::array lens = array_arg(op, "seq_lens", seq_lens);
        const DecodeOptions o = decode_options(op, q, scale, num_splits, causal, stream);
        return tiny_attn::paged_decode_attention(
            q, k, v, table, lens, o.scale, o.num_splits, o.causal, o.stream);
      },
      "query"_a.none(),
      "k_pages"_a.none(),
      "v_pages"_a.none(),
      "block_table"_a.none(),
      "seq_lens"_a.none(),
      "scale"_a.none() = nb::none(),
      nb::kw_only(),
      "num_splits"_a.none() = nb::int_(1),
      "causal"_a.none() = nb::bool_(false),
      "stream"_a.none() = nb::none(),
      R"(Decoding a batch of sequences whose keys and values live in pages of a shared pool
(Week 5, day 3, PagedAttention): the kernels of days 1 and 2 reading every key row through
the block table, all sequences in one dispatch whatever their lengths.

Args:
    query (array): (B, H_q, L, E), 1 <= L <= 8.
    k_pages (array): (num_pages, H, page_size, E), the pool of keys; the dtype of query.
    v_pages (array): like k_pages.
    block_table (array): int32 (B, max_blocks); [b, i] is the page holding keys
        i * page_size ... of sequence b (entries past the sequence are not read).
    seq_lens (array): int32 (B,), the keys of each sequence, 1 .. max_blocks * page_size.
    scale (float, optional): None means 1 / sqrt(E).
    num_splits (int): 1 (the default) runs day 1's kernel, more day 2's split kernels;
        at most max(max_blocks * page_size, 64).
    causal (bool): query row i of sequence b sees keys j <= i + seq_lens[b] - L.
    stream (Stream or Device, optional): the CPU if None; mx.gpu runs the Metal kernels.

Returns:
    array: (B, H_q, L, E), the dtype of query.

Raises:
    TypeError, ValueError: a bad argument (a page number outside the pool, a length the
        table cannot hold); the message names it.)");

  m.def(
      "kv_rows_read",
      []() {
        return tiny_attn::decode_cpu_rows_read().load() +
               tiny_attn::decode_gpu_rows_read().data<int32_t>()[0];
      },
      R"(How many key/value rows (a key and a value vector of E numbers) the decode kernels, CPU
and GPU, have read since the last :func:`reset_kv_rows_read`. Read it after evaluating the
result. Reading K/V once per group gives B * H * S; once per query head, B * H_q * S.)");

  m.def(
      "reset_kv_rows_read",
      []() {
        tiny_attn::decode_cpu_rows_read() = 0;
        tiny_attn::decode_gpu_rows_read().data<int32_t>()[0] = 0;
      },
      "Set the count read by :func:`kv_rows_read` to 0.");
}
