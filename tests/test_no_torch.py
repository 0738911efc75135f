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
    assert _loaded_after("import coder, coder.runtime, coder.engines, coder.engines.trt, coder.runtime.engine_build, "
                         "coder.manifest, coder.samples") == []


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


def test_ros_deploy_modules_are_torch_free():
    mods = "coder.deploy.ros_msgs, coder.deploy.bag, coder.deploy.ros2_core, coder.deploy.ros2_node, coder.cli.bag"
    assert _loaded_after(f"import {mods}") == []


def test_labeling_a_bag_is_torch_free(tiny_artifact, tmp_path):
    import shutil

    from tests.ros_bags import Frame, write_bag
    from coder.samples import synthetic_scene
    import numpy as np

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    bag = write_bag(tmp_path / "b", [Frame("/cam", 10**9, "cam", "rgb8", np.asarray(synthetic_scene(0, (32, 24))))])
    code = (f"from coder.text_bank.bank import build_bank\n"
            f"from coder.text_bank.texts import init_texts\n"
            f"build_bank({str(art)!r}, init_texts('cifar10'))\n"
            f"from pathlib import Path\n"
            f"from coder import Classifier\n"
            f"from coder.deploy.bag import BagOptions, classify_bags, plan_bags\n"
            f"plans, _, _ = plan_bags([Path({str(bag)!r})], ['/cam'])\n"
            f"assert len(list(classify_bags(Classifier.load({str(art)!r}), plans, BagOptions()))) == 1")
    assert _loaded_after(code) == []


def test_embed_text_command_is_torch_free(tiny_artifact):
    code = ("from typer.testing import CliRunner\nfrom coder.cli import app\n"
            f"r = CliRunner().invoke(app, ['embed', '-a', {str(tiny_artifact)!r}, '--text', 'wow!;', '--json'])\n"
            "assert r.exit_code == 0, r.output")
    assert _loaded_after(code) == []


def test_triton_modules_are_torch_free():
    assert _loaded_after("import coder.deploy.triton_model, coder.deploy.triton_repo, coder.deploy.triton_server, "
                         "coder.deploy.triton_ensemble, coder.deploy.serve_stats, coder.cli.serve, coder.client") == []


def test_batch_labeling_modules_are_torch_free(tiny_artifact, sample_images, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    code = (f"from coder.text_bank.bank import build_bank\n"
            f"from coder.text_bank.texts import init_texts\n"
            f"build_bank({str(art)!r}, init_texts('cifar10'))\n"
            f"import coder.deploy.ray_batch, coder.cli.batch\n"
            f"from coder.deploy.batch import ClassifyJob, run_local\n"
            f"from coder.runtime.classifier import ClassifierOptions\n"
            f"from coder.deploy.sources import expand_sources\n"
            f"run_local(ClassifyJob(ClassifierOptions({str(art)!r})), list(expand_sources([{str(sample_images[0])!r}])), print)")
    assert _loaded_after(code) == []


def test_openvino_backend_is_torch_free(tiny_artifact, sample_images):
    import importlib.util

    import pytest

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("the [openvino] extra is not installed")
    code = (f"from coder.runtime import ImageEncoder\n"
            f"enc = ImageEncoder.load({str(tiny_artifact)!r}, 'fp32', 'openvino')\n"
            f"enc.encode([{str(sample_images[0])!r}])\n"
            f"import coder.doctor; coder.doctor.collect()")
    assert _loaded_after(code) == []
