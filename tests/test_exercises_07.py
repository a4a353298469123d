"""Tutorial 07's check: cos_F of two batches of updates passes when right and names each
typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_07 import alignment_case, check_cos_frobenius


def right(U, V):
    inner = numpy.sum(U * V, axis=(-2, -1))
    return inner / (numpy.linalg.norm(U, axis=(-2, -1)) * numpy.linalg.norm(V, axis=(-2, -1)))


def test_the_right_answer_passes_and_the_case_has_its_special_pairs(capsys):
    check_cos_frobenius(right)
    assert "✓ cos_F is right" in capsys.readouterr().out
    U, V = alignment_case()
    assert numpy.allclose(right(U, V)[4:], [1.0, -1.0], rtol=0, atol=1e-15)


def fro(U):
    return numpy.linalg.norm(U, axis=(-2, -1))


@pytest.mark.parametrize(
    ("cos_f", "hint"),
    [
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1)), "inner product ⟨U, V⟩_F alone"),
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1)) / (fro(U) ** 2 * fro(V) ** 2), "squared norms"),
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1)) / fro(U) ** 2, "projection coefficient"),
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1))
         / (numpy.linalg.norm(U, 2, axis=(-2, -1)) * numpy.linalg.norm(V, 2, axis=(-2, -1))),
         "spectral norm"),
        (lambda U, V: numpy.abs(right(U, V)), "keeps its sign"),
        (lambda U, V: numpy.mean(numpy.sum(U * V, -1)
                                 / (numpy.linalg.norm(U, axis=-1) * numpy.linalg.norm(V, axis=-1)), -1),
         "row-by-row"),
        (lambda U, V: numpy.sum(U * V) / (numpy.linalg.norm(U) * numpy.linalg.norm(V)), "shape"),
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1)) / fro(U), "divided by ‖U‖_F only"),
        (lambda U, V: numpy.sum(numpy.swapaxes(U, -1, -2) @ V, axis=(-2, -1)) / (fro(U) * fro(V)),
         "its trace"),
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1)) / (numpy.linalg.norm(U) * numpy.linalg.norm(V)),
         "whole batch"),
        (lambda U, V: numpy.trace(numpy.swapaxes(U, -1, -2) @ V) / (fro(U) * fro(V)),
         "ValueError .*axis1=-2, axis2=-1"),
        (lambda U, V: numpy.sum(U * V, axis=-1) / (fro(U) * fro(V)),
         "ValueError .*axis=\\(-2, -1\\)\\) gives ⟨U, V⟩_F per prompt"),
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1))
         / (numpy.linalg.norm(U, "fro") * numpy.linalg.norm(V, "fro")),
         "ValueError .*needs that axis for a stack"),
        (lambda U, V: numpy.vdot(U, V) / (fro(U) * fro(V)), "summed over the whole batch"),
        (lambda U, V: numpy.sum(U @ numpy.swapaxes(V, -1, -2), axis=(-2, -1)) / (fro(U) * fro(V)),
         "every entry of U Vᵀ"),
        (lambda U, V: numpy.mean(U * V, axis=(-2, -1)) / (fro(U) * fro(V)), "mean of U ⊙ V"),
        (lambda U, V: numpy.sum(U * V, axis=(-2, -1)) / numpy.sqrt(fro(U) ** 2 + fro(V) ** 2),
         "not √"),
        (lambda U, V: 1.0 - numpy.sum(U * V, axis=(-2, -1)) / (fro(U) * fro(V)), "cosine distance"),
        (lambda U, V: numpy.trace(U @ V, axis1=-2, axis2=-1) / (fro(U) * fro(V)),
         "ValueError .*does not exist for M ≠ D \\(transpose U first"),
    ],
)
def test_each_typical_mistake_gets_its_hint(cos_f, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_cos_frobenius(cos_f)


def test_placeholder_is_not_written_yet():
    def placeholder(U, V):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_cos_frobenius(placeholder)
