"""Calibration: temperature scaling on logits, fitting the temperature, and the ECE.

Expected values come from outside the code under test: labels drawn from a known
temperature (the fit must find it again, within a tolerance worked out from the Fisher
information), ECEs worked out by hand, and softmax values written down from their formula.

    python -m pytest tests/test_calibration.py -q
"""

import math

import numpy as np
import pytest

from lungclf.inference import calibrate
from training.evaluate import expected_calibration_error, fit_temperature


def softmax_by_hand(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def draw(n, classes, true_temperature, seed, scale=2.0):
    """Random logits z, and labels drawn from softmax(z / true_temperature): a model whose
    calibrated temperature is true_temperature by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (n, classes))
    p = softmax_by_hand(z / true_temperature)
    y = (rng.uniform(size=(n, 1)) > p.cumsum(axis=1)).sum(axis=1)  # inverse-CDF sampling
    return z, np.minimum(y, classes - 1)


def standard_error_of_temperature(z, true_temperature):
    """The maximum-likelihood fit's standard error at the true temperature. With b = 1/T the
    log-likelihood is sum(b z_y - logsumexp(b z)); its curvature in b is minus the sum of the
    variances of z under softmax(b z), so se(b) = 1 / sqrt(that sum), and se(T) = T^2 se(b)."""
    p = softmax_by_hand(z / true_temperature)
    variance = (p * z**2).sum(axis=1) - (p * z).sum(axis=1) ** 2
    return true_temperature**2 / math.sqrt(variance.sum())


def test_calibrate_is_the_softmax_of_the_logits_over_the_temperature():
    e = math.e
    assert calibrate([[2.0, 0.0, 0.0]], 2.0)[0] == pytest.approx([e / (e + 2), 1 / (e + 2), 1 / (e + 2)])
    assert calibrate([[2.0, 0.0, 0.0]])[0] == pytest.approx([e**2 / (e**2 + 2), 1 / (e**2 + 2), 1 / (e**2 + 2)])


def test_calibration_on_logits_keeps_what_saturated_probabilities_lose():
    """Logits (50, 0) give probabilities (1, 2e-22): as float32 that is (1, 0), and no
    temperature brings the runner-up back. From the logits, T = 100 gives softmax(0.5, 0)."""
    got = calibrate(np.array([[50.0, 0.0]], np.float32), 100.0)[0]
    assert got == pytest.approx([math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)], abs=1e-9)
    assert np.isfinite(calibrate([[1e4, 0.0, -1e4]], 0.05)).all()


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(true_temperature):
    z, y = draw(20_000, 4, true_temperature, seed=int(true_temperature * 10))
    # Four standard errors: a correct fit lands outside with probability about 6 in 100,000.
    tolerance = 4 * standard_error_of_temperature(z, true_temperature)
    assert tolerance < 0.1 * true_temperature  # the data pin the temperature down
    assert fit_temperature(z, y) == pytest.approx(true_temperature, abs=tolerance)


def test_fit_temperature_without_labels_keeps_the_logits_as_they_are():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_ece_of_an_exactly_calibrated_toy_is_zero():
    """In each confidence bin, the fraction right equals the confidence: 3 of 4 right at
    0.75 and 11 of 20 right at 0.55 (three classes, true class 0)."""
    probs = np.array([[0.75, 0.2, 0.05]] * 4 + [[0.55, 0.3, 0.15]] * 20)
    y = np.array([0, 0, 0, 1] + [0] * 11 + [2] * 9)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_a_miscalibrated_toy_is_the_one_worked_out_by_hand():
    """6 answers at confidence 0.95 of which 3 are right (gap 0.45), 4 at 0.65 of which 3
    are right (accuracy 0.75, gap 0.10): ECE = 6/10 * 0.45 + 4/10 * 0.10 = 0.31."""
    probs = np.array([[0.95, 0.05]] * 6 + [[0.35, 0.65]] * 4)
    y = np.array([0, 0, 0, 1, 1, 1] + [1, 1, 1, 0])
    assert expected_calibration_error(probs, y) == pytest.approx(0.31, abs=1e-12)


def test_ece_is_near_zero_at_the_true_temperature_and_after_fitting_but_not_before():
    """Labels drawn at T = 2.5: the raw logits (T = 1) are overconfident. With n answers in
    10 bins, the sampling noise of the ECE of a calibrated model is at most
    0.5 * sqrt(10 / n) = 0.011 (a bin of m answers: standard deviation at most 0.5 / sqrt(m);
    Cauchy-Schwarz over the bins), so 0.025 is over twice that."""
    z, y = draw(20_000, 4, 2.5, seed=7)
    noise = 0.5 * math.sqrt(10 / len(y))
    assert expected_calibration_error(calibrate(z, 2.5), y) < 2.2 * noise
    assert expected_calibration_error(calibrate(z, fit_temperature(z, y)), y) < 2.2 * noise
    assert expected_calibration_error(calibrate(z, 1.0), y) > 10 * noise
