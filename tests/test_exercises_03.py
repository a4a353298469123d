"""Tutorial 03's check passes the right null-space projection and names each mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl import TransformerConfig, init_params
from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_03 import check_null_space, null_space_mistakes

CONFIG = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=16,
                           attention="softmax", activation="relu")
PARAMS = init_params(CONFIG, seed=0)


def Za_and_row(Z, a):
    return Z @ a[:, :, None], a[:, None, :]


def right(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z - Za * a_row / numpy.sum(a * a, axis=-1)[:, None, None]


def right_with_a_projector(Z, a):
    D = a.shape[-1]
    norm2 = numpy.sum(a * a, axis=-1)[:, None, None]
    projector = numpy.eye(D) - a[:, :, None] * a[:, None, :] / norm2
    return Z @ projector


def no_norm(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z - Za * a_row


def divided_by_norm(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z - Za * a_row / numpy.linalg.norm(a, axis=-1)[:, None, None]


def along_a(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Za * a_row / numpy.sum(a * a, axis=-1)[:, None, None]


def plus(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z + Za * a_row / numpy.sum(a * a, axis=-1)[:, None, None]


def one_norm_for_the_batch(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z - Za * a_row / numpy.linalg.norm(a) ** 2  # no axis: every prompt at once


def unchanged(Z, a):
    return Z.copy()


def prompt_0_for_all(Z, a):
    a0 = a[0]
    return Z - (Z @ a0)[:, :, None] * a0 / numpy.sum(a0 * a0)


def norm_as_a_vector(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z - Za * a_row / numpy.sum(a * a, axis=-1)  # (B,) against (B, M, D): ValueError


def without_the_row(Z, a):
    Za, _ = Za_and_row(Z, a)
    return Z - Za / numpy.sum(a * a, axis=-1)[:, None, None]  # (B, M, 1) broadcast over D


def correction_only(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return -Za * a_row / numpy.sum(a * a, axis=-1)[:, None, None]


def entrywise(Z, a):
    return Z * (1.0 - a[:, None, :] ** 2 / numpy.sum(a * a, axis=-1)[:, None, None])


def prompt_0_norm(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z - Za * a_row / numpy.dot(a[0], a[0])


def flattened_outer(Z, a):
    D = a.shape[-1]
    return Z @ (numpy.eye(D) - numpy.outer(a, a) / numpy.sum(a * a))  # (B·D, B·D): ValueError


def reflection(Z, a):
    Za, a_row = Za_and_row(Z, a)
    return Z - 2.0 * Za * a_row / numpy.sum(a * a, axis=-1)[:, None, None]


def unit_vector_divided_again(Z, a):
    unit = a / numpy.linalg.norm(a, axis=-1, keepdims=True)
    return Z - (Z @ unit[:, :, None]) * unit[:, None, :] / numpy.sum(a * a, axis=-1)[:, None, None]


def zero(Z, a):
    return numpy.zeros_like(Z)


def placeholder(Z, a):
    raise NotImplementedError("your turn")


@pytest.mark.parametrize("answer", [right, right_with_a_projector])
@pytest.mark.parametrize(
    "config",
    [CONFIG,
     TransformerConfig(d_token=4, n_blocks=1, n_heads=1, d_head=4, d_mlp=8, attention="softmax",
                       activation="gelu", attn_skip=True, mlp_skip=True, layer_norm=True)],
)
def test_right_answer_passes(answer, config, capsys):
    assert check_null_space(answer, init_params(config, seed=2), config) <= 1e-12
    assert "✓ Z_⊥ is right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (no_norm, "division by ‖a‖² is missing"),
        (divided_by_norm, "instead of ‖a‖²"),
        (along_a, "part of Z along a"),
        (plus, "sign of the correction"),
        (one_norm_for_the_batch, "summed over every prompt"),
        (placeholder, "not written yet"),
        (unchanged, "nothing was removed"),
        (prompt_0_for_all, "prompt 0's a"),
        (norm_as_a_vector, "ValueError .*`numpy.sum\\(a \\* a, axis=-1\\)\\[:, None, None\\]`"),
        (without_the_row, "lacks its row aᵀ"),
        (correction_only, "only the correction"),
        (entrywise, "entry by entry"),
        (prompt_0_norm, "prompt 0's ‖a‖²"),
        (flattened_outer, "ValueError .*numpy.outer flattens the batch"),
        (reflection, "subtracted twice.*Householder"),
        (unit_vector_divided_again, "divided by ‖a‖⁴"),
        (zero, "Z_⊥ = 0 annihilates a"),
    ],
)
def test_typical_mistakes_get_their_hint(answer, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_null_space(answer, PARAMS, CONFIG)


def test_the_projector_from_the_left_is_named_when_it_can_be_applied():
    """With M = D the projector can multiply Z from the left; that mistake has its hint."""
    rng = numpy.random.default_rng(0)
    Z, a = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3))
    hints = [hint for hint, _ in null_space_mistakes(Z, a)]
    assert any("from the left" in h for h in hints)
    left = dict((h, w) for h, w in null_space_mistakes(Z, a))[hints[-1]]
    assert numpy.allclose(numpy.swapaxes(left, -1, -2) @ a[:, :, None], 0.0)  # aᵀ Z_left = 0
    assert not numpy.allclose(left @ a[:, :, None], 0.0)  # but Z_left a ≠ 0


def test_an_answer_that_fails_only_in_the_patched_forward_is_caught(monkeypatch):
    import minimal_icl.exercises.tutorial_03 as module

    monkeypatch.setattr(module, "check_array", lambda *args, **kwargs: 0.0)
    with pytest.raises(ExerciseError, match="patched forward"):
        check_null_space(no_norm, PARAMS, CONFIG)
