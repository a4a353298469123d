"""The exercise checks' shared machinery fails on wrong answers, with the right hint."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError, call_answer, check_array, check_scalar


def expected():
    return numpy.random.default_rng(0).standard_normal((4, 3))


def test_right_answer_passes_and_reports_the_residual(capsys):
    e = expected()
    assert check_array("ΔW", e + 1e-17, e) <= 1e-15
    assert "✓ ΔW is right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (None, "is None"),
        ("text", "expected an array"),
        (numpy.zeros((3, 4)), "swapped"),
        (numpy.zeros(12), "wrong layout"),
        (numpy.zeros((2, 2)), "shape"),
        (-expected(), "wrong sign"),
        (2.5 * expected(), "2.5 times"),
        (expected() + 1.0, "relative residual"),
        (numpy.full((4, 3), numpy.nan), "NaN"),
    ],
)
def test_wrong_answers_fail_with_a_specific_hint(answer, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_array("ΔW", answer, expected())


def test_a_listed_mistake_gets_its_own_hint_and_a_square_transpose_is_named():
    e = expected()
    with pytest.raises(ExerciseError, match="divide by ‖a‖²"):
        check_array("ΔW", e + 3.0, e, mistakes=[("you did not divide by ‖a‖²", e + 3.0)])
    square = numpy.random.default_rng(1).standard_normal((3, 3))
    with pytest.raises(ExerciseError, match="transpose"):
        check_array("P", square.T, square)


def test_a_listed_mistake_of_another_shape_gets_its_own_hint():
    """A typical mistake may have another shape than the answer (a scalar for a matrix,
    a (d, d) block for a (D, D) matrix): its hint comes before the generic shape message,
    and an answer of that shape that matches no mistake still gets the shape message."""
    e = expected()
    wrong = e[..., :2]
    mistakes = [("the top-left block alone", wrong)]
    with pytest.raises(ExerciseError, match="the top-left block alone"):
        check_array("ΔW", wrong.copy(), e, mistakes=mistakes)
    with pytest.raises(ExerciseError, match="has shape"):
        check_array("ΔW", wrong + 1.0, e, mistakes=mistakes)


def test_placeholder_is_reported_as_not_written_yet():
    def placeholder(x):
        raise NotImplementedError("your turn: ...")

    with pytest.raises(ExerciseError, match="not written yet"):
        call_answer(placeholder, 1.0)
    with pytest.raises(ExerciseError, match="expected the function"):
        call_answer(3.0)
    assert call_answer(lambda x: 2 * x, 2.0) == 4.0


def test_check_scalar():
    check_scalar("η", 0.5, 0.5, quiet=True)
    with pytest.raises(ExerciseError):
        check_scalar("η", 0.25, 0.5)
    for several in ([0.5, 0.5], numpy.ones(3), []):  # NumPy's "cannot reshape" before
        with pytest.raises(ExerciseError, match=r"η must be one number, got an array of shape"):
            check_scalar("η", several, 0.5)


def test_numpy_scalars_and_other_backends_are_accepted():
    check_scalar("mean", numpy.mean(numpy.ones(3)), 1.0, quiet=True)
    import array_api_strict as xps

    check_array("ΔW", xps.asarray(expected()), expected(), quiet=True)


def test_an_array_that_cannot_leave_its_library_is_named():
    torch = pytest.importorskip("torch")
    answer = torch.tensor(expected(), requires_grad=True)  # no DLPack: a bare BufferError
    with pytest.raises(ExerciseError, match=r"ΔW: a Tensor that cannot be brought to NumPy"):
        check_array("ΔW", answer, expected(), quiet=True)
