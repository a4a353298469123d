"""The same model written in PyTorch from our parameters: loss and every gradient agree.

An independent implementation (PyTorch's own layers and autograd) checks the handwritten
forward, backward and query loss end to end, in float64. Skipped where torch is absent.
"""

from __future__ import annotations

import math

import numpy
import pytest

from minimal_icl import TransformerConfig, backward, forward, init_params, tree_leaves, tree_map
from minimal_icl.gradcheck import relative_error
from minimal_icl.loss import query_loss

torch = pytest.importorskip("torch")
F = torch.nn.functional

CROSSCHECK_RTOL = 1e-10


def torch_model(params, config: TransformerConfig, tokens):
    """The model as a PyTorch replication would write it: full sequence, read the query after."""
    B, T, D = tokens.shape
    H, K = config.n_heads, config.d_head
    x = tokens
    for p in params.blocks:
        u1 = (
            F.layer_norm(x, (D,), p.ln1.gain, p.ln1.bias, config.ln_eps) if config.layer_norm else x
        )
        q = F.linear(u1, p.attn.W_Q).view(B, T, H, K).transpose(1, 2)
        k = F.linear(u1, p.attn.W_K).view(B, T, H, K).transpose(1, 2)
        v = F.linear(u1, p.attn.W_V).view(B, T, H, K).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(K)
        if config.causal:
            future = ~torch.ones(T, T, dtype=torch.bool).tril()
            scores = scores.masked_fill(future, -math.inf if config.attention == "softmax" else 0.0)
        weights = F.softmax(scores, dim=-1) if config.attention == "softmax" else scores
        A = F.linear((weights @ v).transpose(1, 2).reshape(B, T, H * K), p.attn.W_O)
        h = x + A if config.attn_skip else A
        u = F.layer_norm(h, (D,), p.ln2.gain, p.ln2.bias, config.ln_eps) if config.layer_norm else h
        act = F.relu if config.activation == "relu" else F.gelu  # exact (erf) GELU by default
        m = F.linear(act(F.linear(u, p.mlp.W1, p.mlp.b1)), p.mlp.W2, p.mlp.b2)
        x = h + m if config.mlp_skip else m
    return x


CONFIGS = [
    TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=8),  # the paper's block
    TransformerConfig(
        d_token=3,
        n_blocks=1,
        n_heads=1,
        d_head=3,
        d_mlp=6,
        attention="linear",
        activation="gelu",
        causal=True,
    ),
    TransformerConfig(
        d_token=4,
        n_blocks=2,
        n_heads=2,
        d_head=3,
        d_mlp=7,
        activation="gelu",
        causal=True,
        attn_skip=True,
        mlp_skip=True,
        layer_norm=True,
    ),
    TransformerConfig(
        d_token=5,
        n_blocks=2,
        n_heads=3,
        d_head=2,
        d_mlp=6,
        attention="linear",
        mlp_skip=True,
        layer_norm=True,
    ),
    TransformerConfig(
        d_token=16,
        n_blocks=2,
        n_heads=4,
        d_head=4,
        d_mlp=64,
        attn_skip=True,
        mlp_skip=True,
        layer_norm=True,
    ),  # the benchmark's larger model
]


@pytest.mark.parametrize(
    "config",
    CONFIGS,
    ids=lambda c: (
        f"{c.attention}-{c.activation}-L{c.n_blocks}"
        f"{'-causal' if c.causal else ''}{'-skips' if c.attn_skip else ''}"
        f"{'-LN' if c.layer_norm else ''}-D{c.d_token}"
    ),
)
@pytest.mark.parametrize("last_only", [True, False])
def test_loss_and_every_gradient_match_pytorch(config, last_only):
    rng = numpy.random.default_rng(config.d_token)
    params = tree_map(lambda p: p + 0.3 * rng.standard_normal(p.shape), init_params(config, seed=1))
    tokens = rng.standard_normal((4, 7, config.d_token))
    target = rng.standard_normal(4)

    out, cache = forward(params, config, tokens, last_only=last_only)
    loss, dout = query_loss(out, target)
    dtokens, grads = backward(dout, cache)

    torch_params = tree_map(
        lambda p: torch.tensor(p, dtype=torch.float64, requires_grad=True), params
    )
    torch_tokens = torch.tensor(tokens, dtype=torch.float64, requires_grad=True)
    torch_out = torch_model(torch_params, config, torch_tokens)
    torch_loss = ((torch_out[:, -1, -1] - torch.tensor(target)) ** 2).mean()
    torch_loss.backward()

    assert abs(float(loss) - torch_loss.item()) <= CROSSCHECK_RTOL * abs(torch_loss.item())
    errors = {"tokens": relative_error(dtokens, torch_tokens.grad.numpy())}
    for (name, ours), (_, theirs) in zip(tree_leaves(grads), tree_leaves(torch_params)):
        errors[name] = relative_error(ours, theirs.grad.numpy())
    assert len(errors) == 1 + len(tree_leaves(params))
    bad = {name: err for name, err in errors.items() if not err <= CROSSCHECK_RTOL}
    assert not bad, bad
