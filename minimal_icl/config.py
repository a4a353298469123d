"""The configuration record of a transformer: one frozen dataclass, validated on creation."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass

ATTENTIONS = ("softmax", "linear")
ACTIVATIONS = ("relu", "gelu")
CONTEXTUAL_LAYERS = ("attention", "rnn")


@dataclass(frozen=True)
class TransformerConfig:
    """A stack of ``n_blocks`` identical blocks acting on tokens of width ``d_token``.

    One block, with z the block input (B, T, D):

        u1  = LN1(z)                      if layer_norm else z
        A   = Attention(u1)               multi-head, output projected back to D
        h   = z + A                       if attn_skip  else A
        u   = LN2(h)                      if layer_norm else h      the MLP input
        m   = W2 g(W1 u + b1) + b2        the MLP; W1 is "the W" of the theorems
        out = h + m                       if mlp_skip   else m

    Tokens are used as given (no embedding, no positions): the package's choice, like
    attention without biases (README, "Our choices"), not a setting taken from the paper.

    Fields:
        d_token:    token width D = model width.
        n_blocks:   number of blocks L.
        n_heads:    attention heads H.
        d_head:     key/query/value width per head K.
        d_mlp:      MLP hidden width M.
        attention:  "softmax" (scores q·k/√K, softmax over keys) or "linear"
                    (un-normalised: the scaled scores q·k/√K weight the values directly).
        activation: "relu" or "gelu" (exact, x·Φ(x) with Φ from erf).
        causal:     token t attends to tokens ≤ t only.
        attn_skip:  residual connection around attention.
        mlp_skip:   residual connection around the MLP.
        layer_norm: pre-LayerNorm before attention and before the MLP (learnable gain
                    and bias, biased variance, eps inside the square root).
        ln_eps:     the LayerNorm eps.
        contextual_layer:
                    "attention" (the above) or "rnn": the recurrent layer of
                    ``minimal_icl.rnn`` in attention's place, s_t = tanh(W_s s_{t−1} +
                    W_in c_t + b_s), s_0 = 0, A_t = W_out s_t (causal by construction; the
                    attention fields n_heads, d_head, attention and causal keep their
                    values and are ignored). The package's own addition (docs/theory.md §8).
        d_state:    the recurrent state's width S (used by contextual_layer="rnn" only).
    """

    d_token: int = 3
    n_blocks: int = 1
    n_heads: int = 1
    d_head: int = 8
    d_mlp: int = 32
    attention: str = "softmax"
    activation: str = "relu"
    causal: bool = False
    attn_skip: bool = False
    mlp_skip: bool = False
    layer_norm: bool = False
    ln_eps: float = 1e-5
    contextual_layer: str = "attention"
    d_state: int = 16

    def __post_init__(self):
        for name in ("d_token", "n_blocks", "n_heads", "d_head", "d_mlp", "d_state"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))  # a NumPy integer becomes an int
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"TransformerConfig.attention must be one of {ATTENTIONS}, got {self.attention!r}"
            )
        if self.contextual_layer not in CONTEXTUAL_LAYERS:
            raise ValueError(
                f"TransformerConfig.contextual_layer must be one of {CONTEXTUAL_LAYERS},"
                f" got {self.contextual_layer!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"TransformerConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        for name in ("causal", "attn_skip", "mlp_skip", "layer_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"TransformerConfig.{name} must be a bool, got {getattr(self, name)!r}"
                )
        if not (isinstance(self.ln_eps, float) and 0.0 < self.ln_eps < math.inf):
            raise ValueError(
                f"TransformerConfig.ln_eps must be a positive finite float, got {self.ln_eps!r}"
            )

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready: ints, floats, strings and bools)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TransformerConfig":
        """The inverse of :meth:`to_dict`. A field left out takes its default; an unknown
        key raises a ValueError naming it, values that are not a mapping a TypeError, and
        every value is validated as on creation."""
        if not isinstance(values, Mapping):
            raise TypeError(
                f"TransformerConfig.from_dict: values must be a dict of fields, got"
                f" {type(values).__name__}"
            )
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"TransformerConfig: unknown fields {sorted(unknown)}")
        return cls(**values)
