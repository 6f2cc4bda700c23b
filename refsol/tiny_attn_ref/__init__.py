"""tiny_attn_ref: the reference solution of the tiny-attn course, the same API as tiny_attn."""

from .backward import attention_backward
from .basics import scaled_dot_product_attention_simple, softmax
from .flash_attention import flash_attention
from .flash_attention_backward import flash_attention_tiled_backward, flash_attention_trainable
from .flash_attention_tiled import (
    TileCounts,
    count_tile,
    flash_attention_tiled,
    reset_tile_counts,
    tile_counts,
)
from .kv_cache import KVCache
from .masks import causal_mask, padding_mask, scaled_dot_product_attention
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .online_softmax import (
    SoftmaxState,
    merge_attention_partials,
    merge_softmax_states,
    online_softmax,
    online_softmax_state,
    softmax_state,
)
from .paged_kv_cache import PagedKVCache
from .profiling import Profile, profile, scores_nbytes, softmax_naive
from .serving import Generator
from .transformer import CausalSelfAttention, Transformer, generate, lm_loss
from .varlen import alibi_slopes, local_mask, varlen_attention_naive

__all__ = [
    # Week 1
    "softmax",
    "scaled_dot_product_attention_simple",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
    "Profile",
    "profile",
    "scores_nbytes",
    "softmax_naive",
    # Week 2
    "SoftmaxState",
    "softmax_state",
    "merge_softmax_states",
    "online_softmax_state",
    "online_softmax",
    "merge_attention_partials",
    "flash_attention_tiled",
    "TileCounts",
    "count_tile",
    "tile_counts",
    "reset_tile_counts",
    "flash_attention",
    # Week 4
    "attention_backward",
    "flash_attention_tiled_backward",
    "flash_attention_trainable",
    "CausalSelfAttention",
    "Transformer",
    "lm_loss",
    "generate",
    # Week 5
    "KVCache",
    "PagedKVCache",
    "local_mask",
    "alibi_slopes",
    "varlen_attention_naive",
    "Generator",
]
