"""The entropy threshold search equals ONNX Runtime's own (the reference), on real and synthetic histograms."""

import numpy as np
import pytest

from coder.export.int8_entropy import entropy_threshold

calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")


def _reference(hist, edges, lowest, highest, n_quantized):
    return calibrate.HistogramCollector.get_entropy_threshold(None, (hist, edges, lowest, highest), n_quantized)


@pytest.mark.parametrize("seed,bins,n_quantized", [(0, 2048, 128), (1, 512, 128), (2, 300, 64), (3, 257, 128)])
def test_same_thresholds_as_onnxruntime(seed, bins, n_quantized):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(20_000), rng.standard_t(2, 300) * 4, [25.0]]).astype(np.float32)
    if seed == 2:
        x = np.abs(x)  # one-sided (a Softmax or GELU output): half the histogram is empty
    hist, edges = np.histogram(x, bins=bins)
    want = _reference(hist, edges, x.min(), x.max(), n_quantized)
    got = entropy_threshold(hist, edges, x.min(), x.max(), n_quantized)
    assert (float(got[0]), float(got[1])) == (float(want[0]), float(want[1]))
    assert float(got[1]) - float(got[0]) < float(x.max() - x.min())  # outliers clipped: not the MinMax range


def test_same_thresholds_on_the_test_models_activations(tiny_artifact):
    """Histograms ONNX Runtime's collector built from the tiny model's MatMul inputs."""
    from coder.export.int8 import Int8Options, calibration_pixels, collect_histograms
    from coder.manifest import load_artifact

    art = load_artifact(tiny_artifact)
    pixels, _ = calibration_pixels(Int8Options(images=4), art.preprocess)
    histograms = collect_histograms(art.encoder("image", "fp32"), pixels)
    assert len(histograms) > 10
    for name, (hist, edges, lowest, highest) in list(histograms.items())[:6]:
        want = _reference(hist, edges, lowest, highest, 128)
        got = entropy_threshold(hist, edges, lowest, highest, 128)
        assert (float(got[0]), float(got[1])) == (float(want[0]), float(want[1])), name
