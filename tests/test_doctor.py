"""coder doctor recognises a Jetson from its release file and device tree (fake root here)."""

import json

from typer.testing import CliRunner

from coder.cli import app
from coder.doctor import jetson_status, tensorrt_status


def _fake_jetson(root, release="# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
                                "DATE: Fri Sep 13 04:36:44 UTC 2024\n"):
    (root / "etc").mkdir(parents=True)
    (root / "proc" / "device-tree").mkdir(parents=True)
    if release is not None:
        (root / "etc" / "nv_tegra_release").write_text(release)
    (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference "
                                                          b"Developer Kit Super\0")


def test_jetson_release_and_model(tmp_path):
    _fake_jetson(tmp_path)
    assert jetson_status(str(tmp_path)) == {"model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                                            "l4t": "36.4.0", "jetpack": "6.1/6.2"}


def test_jetpack5_and_model_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_jetson(a, "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    assert jetson_status(str(a))["jetpack"] == "5.1.2" and jetson_status(str(a))["l4t"] == "35.4.1"
    _fake_jetson(b, None)
    assert jetson_status(str(b))["l4t"] == "unknown" and "Jetson" in jetson_status(str(b))["model"]


def test_not_a_jetson(tmp_path):
    assert jetson_status(str(tmp_path)) is None
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    assert jetson_status(str(tmp_path)) is None


def test_doctor_cli_reports_the_jetson(tmp_path, monkeypatch):
    _fake_jetson(tmp_path)
    monkeypatch.setenv("CODER_SYSROOT", str(tmp_path))
    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["jetson"]["jetpack"] == "6.1/6.2"
    table = CliRunner().invoke(app, ["doctor"], terminal_width=200)
    assert "L4T 36.4.0" in table.output and "JetPack 6.1/6.2" in table.output


def test_tensorrt_status_names_where_it_was_found():
    status = tensorrt_status()
    assert "not installed" in status or " from " in status


def test_a_jetson_counts_as_a_gpu_without_nvidia_smi(tmp_path, monkeypatch):
    """JetPack has no nvidia-smi: the one GPU check (doctor, the gpu-marked tests' gates) finds the Jetson."""
    from coder import doctor

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no nvidia-smi anywhere
    monkeypatch.setenv("CODER_SYSROOT", str(tmp_path / "none"))
    assert not doctor.nvidia_gpu_present()
    assert doctor.gpu_status().startswith("none")
    _fake_jetson(tmp_path / "orin")
    monkeypatch.setenv("CODER_SYSROOT", str(tmp_path / "orin"))
    assert doctor.nvidia_gpu_present() and doctor.nvidia_gpu_present(str(tmp_path / "orin"))
    assert "Jetson Orin Nano" in doctor.gpu_status()
    tegra = tmp_path / "tegra" / "proc" / "device-tree"  # model without "Jetson", device tree says tegra
    tegra.mkdir(parents=True)
    (tegra / "model").write_bytes(b"p3768-0000+p3767-0005\0")
    (tegra / "compatible").write_bytes(b"nvidia,p3768-0000+p3767-0005\0nvidia,tegra234\0")
    assert doctor.nvidia_gpu_present(str(tmp_path / "tegra"))
    smi = tmp_path / "bin" / "nvidia-smi"  # a desktop: nvidia-smi, no Jetson
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'NVIDIA L4, 8.9, 580.65'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(smi.parent))
    assert doctor.nvidia_gpu_present(str(tmp_path / "none")) and doctor.gpu_status() == "NVIDIA L4, 8.9, 580.65"


def test_gpu_tests_gate_on_the_shared_check():
    """No test module decides "is there a GPU" from nvidia-smi alone (that skips every GPU test on a Jetson)."""
    from pathlib import Path

    offenders = [p.name for p in Path(__file__).parent.glob("test_*.py")
                 if 'which("nvidia-smi")' in p.read_text() and p.name != Path(__file__).name]
    assert offenders == []
