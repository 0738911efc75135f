"""Property tests: coder's torch-free transform == open_clip's inference transform."""

import numpy as np
import open_clip
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from coder.manifest import PreprocessConfig
from coder.runtime.preprocess import preprocess, preprocess_batch

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ["RGB", "L", "P", "RGBA", "LA", "I;16", "CMYK", "1"]


def _pair(size, resize_mode, interpolation="bicubic", mean=MEAN, std=STD, fill=0):
    ref = open_clip.image_transform(size, is_train=False, mean=mean, std=std, resize_mode=resize_mode,
                                    interpolation=interpolation, fill_color=fill)
    cfg = PreprocessConfig.from_dict({"size": size, "resize_mode": resize_mode, "interpolation": interpolation,
                                      "mean": mean, "std": std, "fill_color": fill})
    return ref, cfg


def _image(seed: int, w: int, h: int, mode: str) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth + noisy content so resampling filters matter.
    base = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    noise = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(np.asarray(img) // 2 + noise)
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype("<u2")
        return Image.frombytes("I;16", (w, h), arr.tobytes())
    if mode == "P":
        return img.quantize(colors=int(rng.integers(2, 64)))
    if mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        return rgba.convert(mode)
    return img.convert(mode)


sizes = st.tuples(st.integers(1, 700), st.integers(1, 700))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wh=sizes, mode=st.sampled_from(MODES), seed=st.integers(0, 10_000),
       resize_mode=st.sampled_from(["shortest", "longest", "squash"]),
       target=st.sampled_from([224, 64, (96, 64), (64, 96)]),
       interpolation=st.sampled_from(["bicubic", "bilinear"]))
def test_matches_open_clip(wh, mode, seed, resize_mode, target, interpolation):
    ref, cfg = _pair(target, resize_mode, interpolation, fill=seed % 256)
    img = _image(seed, *wh, mode)
    got = preprocess(img, cfg)
    try:
        want = ref(img).numpy()
    except ValueError:
        # open_clip crashes on strips that round to 0 px (e.g. 1x128, "longest"); coder keeps >= 1 px.
        assert got.shape == (3, *cfg.size) and np.isfinite(got).all()
        return
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("wh", [(1, 1), (2, 5000), (5000, 3), (4000, 3000)])
@pytest.mark.parametrize("mode", MODES)
def test_extreme_sizes(wh, mode):
    ref, cfg = _pair(224, "shortest")
    img = _image(1, *wh, mode)
    assert np.abs(preprocess(img, cfg) - ref(img).numpy()).max() <= 1e-6


def test_degenerate_strip_longest():
    ref, cfg = _pair(64, "longest")
    img = _image(0, 1, 128, "RGB")
    with pytest.raises(ValueError):
        ref(img)
    assert preprocess(img, cfg).shape == (3, 64, 64)


def test_siglip_style_constants_and_squash():
    ref, cfg = _pair(256, "squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = _image(3, 300, 123, "RGB")
    assert np.abs(preprocess(img, cfg) - ref(img).numpy()).max() <= 1e-6


def test_batch_shape_and_order():
    _, cfg = _pair(64, "shortest")
    imgs = [_image(i, 80 + i, 70, "RGB") for i in range(3)]
    batch = preprocess_batch(imgs, cfg)
    assert batch.shape == (3, 3, 64, 64)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(batch[i], preprocess(img, cfg))


def test_config_round_trip():
    _, cfg = _pair((96, 64), "longest", fill=7)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.size == (96, 64)


# The constants of the families coder exports (open_clip's pretrained configs): OpenAI CLIP, MobileCLIP /
# MobileCLIP2-S0/S2/B (mean 0, std 1), SigLIP (Inception 0.5/0.5), CLIPA (ImageNet).
FAMILY_CONSTANTS = [(MEAN, STD), ((0.0,) * 3, (1.0,) * 3), ((0.5,) * 3, (0.5,) * 3),
                    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wh=st.tuples(st.integers(8, 400), st.integers(8, 400)), mode=st.sampled_from(["RGB", "L", "P", "RGBA"]),
       seed=st.integers(0, 10_000), resize_mode=st.sampled_from(["shortest", "longest", "squash"]),
       target=st.sampled_from([64, 96, (96, 64)]), interpolation=st.sampled_from(["bicubic", "bilinear"]),
       constants=st.sampled_from(FAMILY_CONSTANTS))
def test_bit_exact_for_every_family_constants(wh, mode, seed, resize_mode, target, interpolation, constants):
    """Same float32 bits as open_clip's transform, per resize mode, interpolation and family constants."""
    ref, cfg = _pair(target, resize_mode, interpolation, mean=constants[0], std=constants[1])
    img = _image(seed, *wh, mode)
    want = ref(img).numpy()
    got = preprocess(img, cfg)
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)
