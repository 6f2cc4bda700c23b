"""Week 4, Day 5: a small transformer that trains with your FlashAttention.

Book: book/src/week4-05-training.md. References: mx.fast.scaled_dot_product_attention on the CPU
for one attention layer; a NumPy cross-entropy for the loss; the same model with Week 1's naive
attention for the gradients and the training curve. Tolerances: TOL_F32_REORDERED for one layer
and its gradients; LOSS_RTOL for a loss after a few optimizer steps (the two attentions round
differently and Adam carries the difference on).
"""

import math

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_attn_base import *  # noqa: F403
from tiny_attn_base import TOL_F32_REORDERED, assert_allclose, rand, ta, to_numpy

LOSS_RTOL = 1e-4
TEXT = "the cat sat on the mat. the dog sat on the log. " * 8


def vocab():
    chars = sorted(set(TEXT))
    return chars, np.array([chars.index(c) for c in TEXT])


def model(attention, seed=0, **kw):
    mx.random.seed(seed)  # the same seed: the same initial weights for either attention
    args = {"dims": 32, "num_heads": 4, "num_layers": 2, "max_len": 64, **kw}
    m = ta.Transformer(len(vocab()[0]), attention=attention, **args)
    mx.eval(m.parameters())
    return m


def batches(n, B=4, L=33, seed=0):
    _, data = vocab()
    rng = np.random.default_rng(seed)
    for _ in range(n):
        starts = rng.integers(0, len(data) - L, B)
        yield mx.array(np.stack([data[s : s + L] for s in starts]))


# --- Task 1: causal self-attention with your kernel -------------------------------------------


@pytest.mark.parametrize("attention", ["naive", "flash"])
def test_task_1_self_attention_matches_mlx(attention):
    mx.random.seed(1)
    layer = ta.CausalSelfAttention(32, 4, attention=attention)
    x = rand((2, 21, 32), seed=2)
    qkv = x @ layer.qkv.weight.T
    q, k, v = (t.reshape(2, 21, 4, 8).transpose(0, 2, 1, 3) for t in mx.split(qkv, 3, axis=-1))
    o = mx.fast.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(8), mask="causal")
    expected = o.transpose(0, 2, 1, 3).reshape(2, 21, 32) @ layer.out.weight.T
    assert_allclose(layer(x), expected, **TOL_F32_REORDERED, what=attention)


def test_task_1_the_model_refuses_token_ids_past_its_vocabulary():
    m = model("flash")
    V = m.embed.weight.shape[0]
    mx.eval(m(mx.array([[0, 1, V - 1]])))  # the first and last ids run
    for bad in ([[1, V]], [[-1, 2]]):  # an embedding row outside the table: never read
        with raises_naming(ValueError, "tokens"):
            m(mx.array(bad))


def test_task_1_position_i_sees_only_positions_up_to_i():
    mx.random.seed(3)
    layer = ta.CausalSelfAttention(32, 2, attention="flash")
    x = rand((1, 16, 32), seed=4)
    y = rand((1, 16, 32), seed=5)
    changed = mx.concatenate([x[:, :10], y[:, 10:]], axis=1)  # positions 10.. differ
    assert_allclose(layer(changed)[:, :10], layer(x)[:, :10], **TOL_F32_REORDERED)


def test_task_1_gradients_through_the_flash_layer(ext):
    # The same weights, naive and flash: the same loss and the same gradients for every
    # parameter, and the flash layer's gradient ran the C++ backward kernel.
    mx.random.seed(6)
    layer = ta.CausalSelfAttention(32, 4, attention="naive")
    x = rand((2, 40, 32), seed=7)
    target = rand((2, 40, 32), seed=8)

    def loss(m, x):
        return mx.mean((m(x) - target) ** 2)

    naive_loss, naive_grads = nn.value_and_grad(layer, loss)(layer, x)
    layer.attention = "flash"
    ext.reset_backward_tiles_visited()
    flash_loss, flash_grads = nn.value_and_grad(layer, loss)(layer, x)
    mx.eval(flash_grads)
    assert ext.backward_tiles_visited() > 0, "the flash layer must use the C++ backward"
    assert_allclose(flash_loss, naive_loss, **TOL_F32_REORDERED, what="loss")
    for (name, g), (_, w) in zip(tree_flatten(flash_grads), tree_flatten(naive_grads), strict=True):
        assert_allclose(g, w, **TOL_F32_REORDERED, what=name)


# --- Task 2: the loss, and training with either attention -------------------------------------


def test_task_2_lm_loss_is_the_next_token_cross_entropy():
    m = model("flash")
    tokens = next(batches(1))
    logits = to_numpy(m(tokens[:, :-1]))
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = np.array(tokens[:, 1:])
    expected = -np.take_along_axis(logp, targets[..., None], axis=-1).mean()
    assert_allclose(ta.lm_loss(m, tokens), expected, **TOL_F32_REORDERED)


def test_task_2_naive_and_flash_train_alike():
    # From the same seed and the same batches, Adam steps with either attention give the same
    # losses, step by step, and the loss falls.
    curves = {}
    for attention in ("naive", "flash"):
        m = model(attention)
        opt = optim.Adam(learning_rate=3e-3)
        step = nn.value_and_grad(m, ta.lm_loss)
        curve = []
        for tokens in batches(12):
            loss, grads = step(m, tokens)
            opt.update(m, grads)
            mx.eval(m.parameters(), opt.state, loss)
            curve.append(loss.item())
        curves[attention] = np.array(curve)
    np.testing.assert_allclose(curves["flash"], curves["naive"], rtol=LOSS_RTOL, atol=0)
    assert curves["flash"][-1] < 0.8 * curves["flash"][0], f"the loss did not fall: {curves}"


def test_task_2_lm_loss_rejects_short_sequences():
    m = model("flash")
    with pytest.raises(ValueError, match="tokens"):
        ta.lm_loss(m, mx.array([[1]]))


# --- Task 3: generation ----------------------------------------------------------------------


def test_task_3_greedy_generation_follows_the_argmax():
    m = model("flash")
    out = ta.generate(m, [1, 2, 3], 5, temperature=0)
    assert len(out) == 8 and out[:3] == [1, 2, 3]
    for t in range(3, 8):  # each token is the model's most likely next token at its time
        logits = m(mx.array([out[:t]]))[0, -1]
        assert out[t] == int(mx.argmax(logits))


def test_task_3_sampling_is_reproducible_and_in_the_vocabulary():
    m = model("flash")
    a = ta.generate(m, [0], 20, temperature=1.0, seed=7)
    b = ta.generate(m, [0], 20, temperature=1.0, seed=7)
    assert a == b and len(a) == 21
    assert all(0 <= t < len(vocab()[0]) for t in a)


def test_task_3_longer_than_the_context_window():
    m = model("flash", max_len=8)
    out = ta.generate(m, [1, 2, 3, 4, 5, 6], 6, temperature=0)
    assert len(out) == 12  # the model only ever sees the last 8 tokens


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"prompt": []}, ValueError),
        ({"temperature": -1.0}, ValueError),
        ({"temperature": "hot"}, TypeError),
        ({"n": -2}, ValueError),
        ({"prompt": [1, 10**9]}, ValueError),  # past the embedding table: never read
    ],
    ids=["empty prompt", "negative temperature", "temperature string", "negative n", "token id"],
)
def test_task_3_bad_input_is_a_clear_error(kwargs, error):
    m = model("flash")
    args = {"prompt": [1], "n": 3, "temperature": 1.0, **kwargs}
    with pytest.raises(error, match=next(iter(kwargs))):
        ta.generate(m, **args)
