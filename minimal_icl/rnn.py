"""A recurrent contextual layer, a forward/backward pair (backpropagation through time).

Theorem 2.2 and Proposition 3.1 of Dherin et al. (2025) never use attention: any layer
that returns a vector at the query works (docs/theory.md §8). This module is the
classic contrast, an Elman recurrence with a tanh state, read out at every position:

    s_0 = 0,   s_t = tanh(W_s s_{t−1} + W_in c_t + b_s),   A_t = W_out s_t     t = 1..T

so the output at the query (the last token) is W_out s_T after reading C then x, and a
token alone gives A(x) = W_out tanh(W_in x + b_s). There is no averaging over tokens: a
new token enters through one more application of tanh, not through a weight ≈ 1/(i+2).

Shapes: B prompts, T tokens, D token width, S state width (``config.d_state``).

The functions follow CS231n's ``rnn_layers.py``: ``rnn_step_forward`` /
``rnn_step_backward`` for one step, ``rnn_forward`` / ``rnn_backward`` for the
sequence, each backward line under the forward line it inverts. With
``last_only=True`` the read-out W_out s is taken at the last position only; the
recurrence itself still runs over every token (the last state needs all of them).
"""

from __future__ import annotations

from typing import NamedTuple

from .backend import Array, device, namespace
from .linear import LinearCache, linear_backward, linear_forward


class RNNParams(NamedTuple):
    """The recurrent layer's weights (the paper's orientation: (out, in))."""

    W_in: Array  # (S, D)  token -> state
    W_s: Array  # (S, S)   state -> state
    b: Array  # (S,)       the state's bias (b_s in docs/notation.md)
    W_out: Array  # (D, S) state -> the layer's output A


class RNNStepCache(NamedTuple):
    x: Array  # (B, D)       the token c_t read at this step
    s_prev: Array  # (B, S)  s_{t−1}
    s: Array  # (B, S)       s_t = tanh(pre): its derivative is 1 − s_t²
    W_in: Array  # (S, D)
    W_s: Array  # (S, S)


class RNNCache(NamedTuple):
    x: Array  # (B, T, D)       the layer's inputs c_1..c_T
    states: Array  # (B, T, S)  s_1..s_T
    steps: tuple  # tuple[RNNStepCache, ...], one per position
    out_proj: LinearCache  # input: the states read out, (B, T, S) or (B, 1, S)
    last_only: bool


def rnn_step_forward(x: Array, s_prev: Array, p: RNNParams) -> tuple[Array, RNNStepCache]:
    """One step of the recurrence: s = tanh(W_s s_prev + W_in x + b_s).

    x (B, D), s_prev (B, S). Returns (s (B, S), RNNStepCache).
    """
    xp = namespace(x, s_prev)
    pre = s_prev @ p.W_s.mT + x @ p.W_in.mT + p.b  # (B, S)
    s = xp.tanh(pre)  # (B, S)
    return s, RNNStepCache(x, s_prev, s, p.W_in, p.W_s)


def rnn_step_backward(ds: Array, cache: RNNStepCache) -> tuple[Array, Array, Array, Array, Array]:
    """The gradients of one step, given ds = ∂loss/∂s (B, S):

        dpre = ds ⊙ (1 − s²)                     (tanh′ = 1 − tanh²)
        dx = dpre W_in,   ds_prev = dpre W_s,
        dW_in = dpreᵀ x,  dW_s = dpreᵀ s_prev,   db_s = Σ_B dpre.

    Returns (dx (B, D), ds_prev (B, S), dW_in (S, D), dW_s (S, S), db_s (S,)).
    """
    c = cache
    xp = namespace(ds)
    # forward was: s = tanh(pre)
    dpre = ds * (1.0 - c.s * c.s)  # (B, S)
    # forward was: pre = s_prev W_sᵀ + x W_inᵀ + b_s
    dx = dpre @ c.W_in  # (B, D)
    ds_prev = dpre @ c.W_s  # (B, S)
    dW_in = dpre.mT @ c.x  # (S, D)
    dW_s = dpre.mT @ c.s_prev  # (S, S)
    db = xp.sum(dpre, axis=0)  # (S,)
    return dx, ds_prev, dW_in, dW_s, db


def rnn_forward(x: Array, p: RNNParams, last_only: bool = False) -> tuple[Array, RNNCache]:
    """The recurrent layer over x (B, T, D): s_t = tanh(W_s s_{t−1} + W_in c_t + b_s),
    s_0 = 0, and A_t = W_out s_t.

    Returns (A (B, T, D), or (B, 1, D) if ``last_only``, RNNCache).
    """
    xp = namespace(x)
    B, T, D = x.shape
    S = p.W_s.shape[0]
    s = xp.zeros((B, S), dtype=x.dtype, device=device(x))  # s_0 = 0
    states, steps = [], []
    for t in range(T):
        s, step = rnn_step_forward(x[:, t, :], s, p)  # s_t (B, S)
        states.append(s)
        steps.append(step)
    states = xp.stack(states, axis=1)  # (B, T, S)
    read = states[:, -1:, :] if last_only else states  # (B, Tq, S)
    out, out_proj = linear_forward(read, p.W_out)  # (B, Tq, D)  A_t = W_out s_t
    return out, RNNCache(x, states, tuple(steps), out_proj, last_only)


def rnn_backward(dout: Array, cache: RNNCache) -> tuple[Array, RNNParams]:
    """Backpropagation through time: the gradients of ``rnn_forward``.

    With dA_t = ∂loss/∂A_t, the state's gradient collects the read-out at t and the
    step after it, ds_t = W_outᵀ dA_t + ∂loss/∂s_t via s_{t+1}, walked from t = T down
    to 1; each step's weights' gradients add up over time (the weights are shared).
    Returns (dx (B, T, D), RNNParams of gradients).
    """
    c = cache
    xp = namespace(dout)
    B, T, D = c.x.shape
    # forward was: A = read W_outᵀ
    dread, dW_out, _ = linear_backward(dout, c.out_proj)  # (B, Tq, S)
    # forward was: read = states[:, -1:] (last_only) or read = states
    if c.last_only:
        dstates = xp.concat([xp.zeros_like(c.states[:, :-1, :]), dread], axis=1)  # (B, T, S)
    else:
        dstates = dread
    # forward was: for t = 1..T: s_t = step(c_t, s_{t−1}), so walk t = T..1
    dW_in = xp.zeros_like(c.steps[0].W_in)
    dW_s = xp.zeros_like(c.steps[0].W_s)
    db = xp.zeros_like(c.states[0, 0, :])
    ds_next = xp.zeros_like(dstates[:, 0, :])  # ∂loss/∂s_T through s_{T+1}: none
    dx = []
    for t in reversed(range(T)):
        ds = dstates[:, t, :] + ds_next  # (B, S)  read-out at t + the step after t
        dx_t, ds_next, dW_in_t, dW_s_t, db_t = rnn_step_backward(ds, c.steps[t])
        dx.append(dx_t)
        dW_in, dW_s, db = dW_in + dW_in_t, dW_s + dW_s_t, db + db_t
    # forward was: s_0 = 0, a constant: ds_next is dropped
    dx = xp.stack(dx[::-1], axis=1)  # (B, T, D)
    return dx, RNNParams(W_in=dW_in, W_s=dW_s, b=db, W_out=dW_out)


def rnn_query_after_prefixes(states: Array, x_query: Array, p: RNNParams) -> Array:
    """A_i = W_out tanh(W_s s_i + W_in x + b_s) for every prefix i = 0..N at once.

    ``states`` (B, N+1, S) holds s_0 = 0, s_1..s_N: the states after reading c_1..c_i
    (one run over the context); x_query (B, D) is the query's input to the layer. The
    result (B, N+1, D) is the layer's output at the query on [c_1..c_i, x], what
    ``rnn_forward`` gives on that prompt (the recurrence only ever looks back) to rounding:
    the same sums, batched differently. Measured on the trained recurrent block of
    ``experiments.models.rnn_setting``, 4 batches of 256 prompts, every prefix: the
    ``relative_residual`` of a batch (against its largest entry) is up to about 5e-16,
    median 2e-16; prompt by prompt, against that prompt's own largest entry, up to 2e-14
    (median 1e-16), where a prompt's output is small.
    """
    xp = namespace(states, x_query)
    x = xp.expand_dims(x_query, axis=1)  # (B, 1, D)
    s = xp.tanh(states @ p.W_s.mT + x @ p.W_in.mT + p.b)  # (B, N+1, S)
    return s @ p.W_out.mT  # (B, N+1, D)
