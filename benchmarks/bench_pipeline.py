"""End-to-end runtime figures (CPU): cold start vs a plain open_clip script, and folder throughput.

    python benchmarks/bench_pipeline.py --artifacts coder-artifacts/ViT-B-32__none [--images 1000] [--runs 3]

* Cold start: a fresh ``coder classify IMG --json`` process until its answer, vs a fresh Python process
  running open_clip (same random weights, same class prompts from the bank's texts) to its answer;
  median wall time and peak RSS of each.
* Throughput: ``Classifier.classify`` over a folder of synthetic 640x480 JPEGs at batch 8 and 32
  (decode + preprocess + encoder + head) vs the encoder alone on the same pixels.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import script  # noqa: E402  (also puts the repository on sys.path)

OPEN_CLIP_SCRIPT = """
import sys, torch, open_clip
from PIL import Image
arch, seed, image, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split("|")
torch.manual_seed(seed)
model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
tok = open_clip.get_tokenizer(arch)
with torch.no_grad():
    t = model.encode_text(tok([f"a photo of a {n}." for n in names]))
    f = model.encode_image(preprocess(Image.open(image)).unsqueeze(0))
    t = t / t.norm(dim=-1, keepdim=True)
    f = f / f.norm(dim=-1, keepdim=True)
print(names[int((f @ t.T).argmax())])
"""


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"command failed ({status}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def cold_start(artifacts: str, image: str, runs: int) -> dict:
    from coder.manifest import load_artifact
    from coder.runtime.classifier import find_bank
    from coder.text_bank.bank import load_bank

    art = load_artifact(artifacts)
    names = load_bank(find_bank(art.root, None)).class_names
    coder_cmd = [sys.executable, "-m", "coder", "classify", image, "-a", artifacts, "--json", "--backend", "cpu"]
    oc_cmd = [sys.executable, "-c", OPEN_CLIP_SCRIPT, art.architecture, str(art.manifest["pretrained"]["seed"]),
              image, "|".join(names)]
    run_measured(coder_cmd)  # warm the page cache and the sha256 stat cache, as on a robot after boot
    coder = [run_measured(coder_cmd) for _ in range(runs)]
    oc = [run_measured(oc_cmd) for _ in range(runs)]
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    return {"coder_s": med(coder, 0), "open_clip_s": med(oc, 0), "speedup": med(oc, 0) / med(coder, 0),
            "coder_rss_mb": med(coder, 1), "open_clip_rss_mb": med(oc, 1),
            "rss_ratio": med(coder, 1) / med(oc, 1)}


def throughput(artifacts: str, n_images: int) -> list[dict]:
    from coder.runtime.classifier import Classifier
    from coder.runtime.preprocess import preprocess_batch
    from coder.runtime.images import load_image
    from coder.samples import synthetic_scene

    clf = Classifier.load(artifacts, backend="cpu")
    out = []
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(n_images):
            p = Path(d) / f"{i:05d}.jpg"
            synthetic_scene(i % 50, (640, 480)).save(p, quality=90)
            paths.append(p)
        for batch in (8, 32):
            t0 = time.perf_counter()
            for s in range(0, len(paths), batch):
                clf.classify(paths[s:s + batch])
            t_pipe = time.perf_counter() - t0
            pixels = [preprocess_batch([load_image(p) for p in paths[s:s + batch]], clf.encoder.preprocess_config)
                      for s in range(0, len(paths), batch)]
            t0 = time.perf_counter()
            for x in pixels:
                clf.encoder.engine.run(x)
            t_enc = time.perf_counter() - t0
            out.append({"batch": batch, "images": n_images, "pipeline_img_per_s": n_images / t_pipe,
                        "encoder_img_per_s": n_images / t_enc, "pipeline_over_encoder": t_pipe / t_enc})
            del pixels
    return out


def run(artifacts: str, images: int, runs: int) -> dict:
    from coder.samples import synthetic_scene

    with tempfile.TemporaryDirectory() as d:
        img = str(Path(d) / "probe.jpg")
        synthetic_scene(1, (640, 480)).save(img)
        cs = cold_start(artifacts, img, runs)
    return {"cold_start": cs, "throughput": throughput(artifacts, images)}


def render(r: dict) -> None:
    cs = r["cold_start"]
    print(f"cold start: coder classify {cs['coder_s']:.2f} s, {cs['coder_rss_mb']:.0f} MiB | open_clip script "
          f"{cs['open_clip_s']:.2f} s, {cs['open_clip_rss_mb']:.0f} MiB -> {cs['speedup']:.1f}x faster, "
          f"{cs['rss_ratio']:.2f}x the memory")
    for t in r["throughput"]:
        print(f"batch {t['batch']:>2}: pipeline {t['pipeline_img_per_s']:.1f} img/s, encoder alone "
              f"{t['encoder_img_per_s']:.1f} img/s -> pipeline/encoder time {t['pipeline_over_encoder']:.2f}x "
              f"({t['images']} images)")


if __name__ == "__main__":
    script(__doc__, run, render, images=1000, runs=3)
