"""Week 5, day 5: serve a model: prefill with flash_attention, decode through the paged cache.

A Generator over a Week 4 Transformer (seeded random weights) must produce, greedily, exactly
the tokens of Week 4's generate(..., temperature=0) with naive attention, which recomputes the
whole context at every step; and it must get them the serving way: the prompt through the
flash_attention kernel once, then one paged_decode_attention per layer and step that reads
each cached key/value row once per group.
"""

import mlx.core as mx
import pytest
from tiny_attn_base import *  # noqa: F403

GPU = device_for("gpu")


def small_model(seed=0, vocab=40, dims=32, heads=2, layers=2, max_len=96):
    mx.random.seed(seed)
    model = ta.Transformer(vocab, dims=dims, num_heads=heads, num_layers=layers, max_len=max_len)
    mx.eval(model.parameters())
    return model


PROMPTS = [[1, 5, 9, 2, 7], [3] * 17, [11, 4], list(range(30))]


def naive_tokens(model, prompts, n):
    model.set_attention("naive")
    return [ta.generate(model, p, n, temperature=0) for p in prompts]


# --------------------------------------------------------------------- Task 1: prefill


def test_task_1_prefill_logits_match_the_model(ext):
    model = small_model(seed=1)
    gen = ta.Generator(model)
    ext.reset_cpu_kernel_runs()
    seq, logits = gen.prefill(PROMPTS[3])
    model.set_attention("naive")
    expected = model(mx.array([PROMPTS[3]]))[0, -1]
    assert_allclose(logits, expected, **TOL_F32_REORDERED, what="next-token logits")
    runs = [name for name, _ in ext.cpu_kernel_runs()]
    assert runs == ["fast"] * len(model.blocks), f"one flash_attention per layer, got {runs}"
    for cache in gen.caches:
        assert cache.length(seq) == len(PROMPTS[3]), "each layer's cache holds the prompt"


def test_task_1_prefill_stores_each_layers_keys_and_values():
    model = small_model(seed=2)
    gen = ta.Generator(model)
    seq, _ = gen.prefill(PROMPTS[1])
    # Layer 0's keys are the projection of its normalised input: recompute them.
    block = model.blocks[0]
    x = model.embed(mx.array([PROMPTS[1]])) + model.position(mx.arange(len(PROMPTS[1])))
    _, k, v = mx.split(block.attn.qkv(block.norm1(x)), 3, axis=-1)
    k, v = ta.split_heads(k, block.attn.num_heads)[0], ta.split_heads(v, block.attn.num_heads)[0]
    got_k, got_v = gen.caches[0].gather(seq)
    assert_allclose(got_k, k, **TOL_F32, what="layer 0 keys")
    assert_allclose(got_v, v, **TOL_F32, what="layer 0 values")


# --------------------------------------------------------------------- Task 2: decode step


def test_task_2_decode_step_matches_the_full_forward(ext):
    model = small_model(seed=3)
    gen = ta.Generator(model)
    seqs = [gen.prefill(p)[0] for p in PROMPTS]
    nxt = [7, 8, 9, 10]
    ext.reset_kv_rows_read()
    logits = gen.decode_step(seqs, nxt)
    model.set_attention("naive")
    for b, p in enumerate(PROMPTS):
        expected = model(mx.array([p + [nxt[b]]]))[0, -1]
        assert_allclose(logits[b], expected, **TOL_F32_REORDERED, what=f"sequence {b}")
    # One paged decode per layer, reading every cached row once per key/value group.
    H = model.blocks[0].attn.num_heads
    rows = sum(len(p) + 1 for p in PROMPTS)
    assert ext.kv_rows_read() == len(model.blocks) * H * rows


# --------------------------------------------------------------------- Task 3: the loop


def test_task_3_greedy_tokens_equal_the_naive_model(ext):
    model = small_model(seed=4)
    n = 12
    gen = ta.Generator(model)
    ext.reset_kv_rows_read()
    out = gen.generate(PROMPTS, n)
    assert out == naive_tokens(model, PROMPTS, n)
    # Decode steps 1 .. n-1 read, per layer, each sequence's cache once per group.
    H, layers = model.blocks[0].attn.num_heads, len(model.blocks)
    expected = layers * H * sum(len(p) + s for s in range(1, n) for p in PROMPTS)
    assert ext.kv_rows_read() == expected, "the decode steps read the paged cache, nothing else"
    assert gen.stats["decode_tokens"] == len(PROMPTS) * (n - 1)
    assert gen.stats["prefill_tokens"] == sum(map(len, PROMPTS))
    assert all(cache.pages_in_use == 0 for cache in gen.caches), "pages freed at the end"


@pytest.mark.parametrize("seed", [5, 6])
def test_task_3_greedy_tokens_other_models(seed):
    model = small_model(seed=seed, dims=64, heads=4, layers=3)
    prompts = [[seed, 2 * seed, 3], [1] * 9]
    assert ta.Generator(model, page_size=4).generate(prompts, 10) == naive_tokens(
        model, prompts, 10
    )


def test_task_3_greedy_tokens_on_the_gpu(ext):
    model = small_model(seed=7)
    prompts = [[4, 8, 15], [16, 23]]
    ext.reset_gpu_dispatches()
    out = ta.Generator(model, stream=GPU).generate(prompts, 3)
    assert out == naive_tokens(model, prompts, 3)
    kernels = {d[0] for d in ext.gpu_dispatches()}
    assert any(k.startswith("flash_attention_") for k in kernels), kernels
    assert any(k.startswith("decode_attention") for k in kernels), kernels
