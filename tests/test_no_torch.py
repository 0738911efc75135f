"""The runtime path must not import torch or open_clip (checked in a fresh interpreter)."""

import json
import subprocess
import sys

HEAVY = ("torch", "open_clip", "torchvision")


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r)))" % (HEAVY,)
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_import_coder_and_runtime_is_torch_free():
    assert _loaded_after("import coder, coder.runtime, coder.engines, coder.manifest, coder.samples") == []


def test_cli_module_is_torch_free():
    assert _loaded_after("import coder.cli") == []


def test_embedding_images_is_torch_free(tiny_artifact, sample_images):
    code = (f"from coder.runtime import ImageEncoder\n"
            f"enc = ImageEncoder.load({str(tiny_artifact)!r})\n"
            f"enc.encode([{str(sample_images[0])!r}])")
    assert _loaded_after(code) == []


def test_probe_sees_torch_when_it_is_imported():
    # Guards the probe itself: it must be able to fail.
    assert "torch" in _loaded_after("import torch")


def test_classifier_path_is_torch_free(tiny_artifact, sample_images, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    code = (f"from coder.text_bank.bank import build_bank\n"
            f"from coder.text_bank.texts import init_texts\n"
            f"build_bank({str(art)!r}, init_texts('cifar10'))\n"
            f"from coder import Classifier\n"
            f"Classifier.load({str(art)!r}).classify([{str(sample_images[0])!r}])")
    assert _loaded_after(code) == []


def test_pack_doctor_head_session_and_lazy_clip_weights_are_torch_free(tiny_fp32_artifact, tmp_path):
    code = (f"import coder.pack, coder.doctor, coder.runtime.fused, coder.text_bank.clip_weights\n"
            f"from coder.pack import pack_artifact\n"
            f"pack_artifact({str(tiny_fp32_artifact)!r}, __import__('pathlib').Path({str(tmp_path / 'p')!r}))\n"
            f"from coder.runtime.classifier import Classifier\n"
            f"clf = Classifier.load({str(tmp_path / 'p')!r}, backend='cpu')\n"
            f"assert clf.encoder.head is not None and clf.bank.clip_w.shape[0] == 10\n"
            f"coder.doctor.collect()")
    assert _loaded_after(code) == []
