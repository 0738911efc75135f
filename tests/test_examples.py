"""The examples run as users run them (a real subprocess)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_camera_loop_runs_on_synthetic_frames(tiny_artifact, tmp_path):
    import shutil

    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("cifar10"))
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "camera_loop.py"), "--artifacts", str(art),
                          "--frames", "5"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 6 and lines[-1].startswith("backend cpu: median")
