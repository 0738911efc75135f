"""coder's ONNX image embeddings == open_clip encode_image + normalise on the same files."""

import numpy as np
import pytest
import torch
from PIL import Image

from coder.errors import InputError
from coder.runtime.encoder import ImageEncoder, embed_files, l2_normalize


def _torch_embed(b32_torch, paths):
    model, transform = b32_torch
    with torch.no_grad():
        x = torch.stack([transform(Image.open(p)) for p in paths])
        e = model.encode_image(x)
    return (e / e.norm(dim=-1, keepdim=True)).numpy()


def test_b32_parity_with_open_clip(b32_artifact, b32_torch, sample_images):
    enc = ImageEncoder.load(b32_artifact)
    got = enc.encode(sample_images)
    want = _torch_embed(b32_torch, sample_images)
    assert got.shape == (3, 512) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_b32_fp16_session_runs_and_agrees(b32_artifact, sample_images):
    fp32 = ImageEncoder.load(b32_artifact, "fp32").encode(sample_images)
    fp16 = ImageEncoder.load(b32_artifact, "fp16").encode(sample_images)
    assert (fp32 * fp16).sum(axis=1).min() >= 0.999


def test_chunking_matches_one_batch(tiny_artifact, sample_images):
    enc = ImageEncoder.load(tiny_artifact)
    small = ImageEncoder(enc.artifact, enc.engine, enc.precision, max_batch=2)
    imgs = sample_images * 3
    np.testing.assert_allclose(small.encode(imgs), enc.encode(imgs), atol=1e-6)


def test_inputs_of_every_kind_agree(tiny_artifact, sample_images):
    enc = ImageEncoder.load(tiny_artifact)
    pil = Image.open(sample_images[0]).convert("RGB")
    arr = np.asarray(pil)
    rows = enc.encode([sample_images[0], pil, arr, np.ascontiguousarray(arr[..., ::-1])], bgr=False)
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-6)
    np.testing.assert_allclose(rows[0], rows[2], atol=1e-6)
    bgr = enc.encode([arr[..., ::-1].copy()], bgr=True)
    np.testing.assert_allclose(rows[0], bgr[0], atol=1e-6)


def test_wrong_pixels_shape(tiny_artifact):
    enc = ImageEncoder.load(tiny_artifact)
    with pytest.raises(InputError, match="float32"):
        enc.encode_pixels(np.zeros((1, 3, 32, 32), np.float32))


def test_embed_files_keeps_going(tiny_artifact, sample_images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    enc = ImageEncoder.load(tiny_artifact)
    res = embed_files(enc, [sample_images[0], bad, sample_images[1]], batch_size=2)
    assert res.paths == (str(sample_images[0]), str(sample_images[1]))
    assert len(res.failures) == 1 and res.failures[0][0] == str(bad)
    np.testing.assert_allclose(res.embeddings, enc.encode([sample_images[0], sample_images[1]]), atol=1e-6)
    assert res.backend == "cpu"


def test_l2_normalize_zero_row():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_b32_int8_agrees(b32_artifact, sample_images):
    fp32 = ImageEncoder.load(b32_artifact, "fp32").encode(sample_images)
    int8 = ImageEncoder.load(b32_artifact, "int8").encode(sample_images)
    assert (fp32 * int8).sum(axis=1).min() >= 0.99
