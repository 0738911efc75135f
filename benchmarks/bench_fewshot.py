"""Few-shot on real images: zero-shot CODER vs Tip-Adapter vs CODER-Adapter, K = 1, 4, 16; and fit's memory.

    python benchmarks/bench_fewshot.py --artifacts coder-artifacts/ViT-B-32__none [--test 1000] [--json]
    python benchmarks/bench_fewshot.py --artifacts ART --mode memory [--classes 100 --shots 16] [--json]

``--mode memory`` (ART needs a bank of >= ``--classes`` classes, e.g. ``--classes cifar100`` at export):
writes ``--classes`` x (``--shots`` + 2) synthetic 1024x768 JPEGs as an ImageFolder (2 per class go to an
explicit validation folder), runs ``fit`` in a child process and reports its peak RSS (goal <= 1.5 GB at
100 x 16). Then, on ``--check-classes`` of those classes, it fits once with the streaming path and once
with the previous all-in-memory path (every support image decoded up front), each in its own child, and
checks the adapters are bit-identical (same seed), with both peak RSS figures.

Fashion-MNIST (Debian ``dataset-fashion-mnist``): support shots and a validation split from the
training set (alpha/beta searched on validation only), top-1 on ``--test`` held-out test images.
The artifact needs a fashion-mnist bank (`coder bank build ... --texts` from
`coder texts init --classes fashion-mnist`). Also times fit per support image, the search, and
the adapter's per-query overhead vs the encoder at 16 shots x 1000 classes (synthetic keys).
"""

from __future__ import annotations

import time

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.timing import median_ms  # noqa: E402
from coder.runtime.adapter import Adapter, fold_keys  # noqa: E402
from coder.runtime.classifier import Classifier  # noqa: E402
from coder.runtime.datasets import fashion_mnist, match_classes, subset  # noqa: E402
from coder.runtime.encoder import l2_normalize  # noqa: E402
from coder.runtime.fewshot import build_adapter, encode_augmented, encode_plain, split_support_val  # noqa: E402
from coder.runtime.head import stage1_scores  # noqa: E402


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(scores, axis=1) == y).mean())


def run(artifacts: str, test: int, val: int, augment_epochs: int, seed: int) -> dict:
    n_test, n_val, epochs = test, val, augment_epochs
    clf = Classifier.load(artifacts, bank="fashion-mnist", backend="cpu")
    train, test = fashion_mnist("train"), fashion_mnist("test")
    mapping, _ = match_classes(train.classes, clf.class_names)
    support, val, _ = split_support_val(train, mapping, 16, 0.02, seed, n_val)
    t0 = time.perf_counter()
    sup_f = encode_augmented(clf, support, epochs, seed)
    t_fit_per_image = (time.perf_counter() - t0) / len(support)
    sup_y = np.array([y for _, y in support])
    val_f, val_y = encode_plain(clf, val)
    test_items = [(x, mapping[c]) for x, c in subset(test.items, n_test, seed + 1)]
    test_f, test_y = encode_plain(clf, test_items)
    rows = {"zero-shot CODER": {k: accuracy(stage1_scores(test_f, clf.bank), test_y) for k in (1, 4, 16)}}
    searches = []
    for kind, label in (("tip", "Tip-Adapter"), ("coder", "CODER-Adapter")):
        rows[label] = {}
        for k in (1, 4, 16):
            # support is class-major with 16 per class: the first k of each class form the k-shot set
            idx = np.concatenate([np.flatnonzero(sup_y == c)[:k] for c in np.unique(sup_y)])
            ad, _, t_search = build_adapter(kind, clf, sup_f[idx], sup_y[idx], val_f, val_y, {"shots": k})
            searches.append(t_search)
            rows[label][k] = accuracy(ad.logits(test_f, clf.bank.clip_w), test_y)
    return {"n_test": len(test_y), "n_val": len(val_y), "augment_epochs": epochs, "rows": rows,
            "fit_ms_per_support_image": 1e3 * t_fit_per_image, "search_s_median": float(np.median(searches)),
            "overhead": overhead(clf)}


def overhead(clf: Classifier, classes: int = 1000, shots: int = 16) -> dict:
    """Adapter cost per query at 16 shots x 1000 classes (synthetic keys) vs the encoder, batch 1."""
    rng = np.random.default_rng(0)
    d = clf.encoder.artifact.embed_dim
    T = l2_normalize(rng.standard_normal((classes * 50, d)).astype(np.float32))
    keys = fold_keys(l2_normalize(rng.standard_normal((classes * shots, d)).astype(np.float32)), T)
    ad = Adapter("coder", keys, np.repeat(np.arange(classes), shots), 1.7, 7.0, {"classes": classes})
    W = l2_normalize(rng.standard_normal((classes, d)).astype(np.float32))
    f = l2_normalize(rng.standard_normal((1, d)).astype(np.float32))
    t_ad = median_ms(lambda: ad.logits(f, W), 50)
    size = clf.encoder.preprocess_config.size
    x = np.zeros((1, 3, *size), np.float32)
    t_enc = median_ms(lambda: clf.encoder.engine.run(x), 10)
    return {"adapter_ms": t_ad, "encoder_ms": t_enc, "pct_of_encoder": 100 * t_ad / t_enc,
            "keys_mb": keys.nbytes / 2**20, "unfolded_keys_mb": classes * shots * len(T) * 4 / 2**20}


def render(r: dict) -> None:
    print(f"Fashion-MNIST, {r['n_test']} test images, top-1 (alpha/beta from {r['n_val']} validation images)")
    print(f"{'method':<16} {'1-shot':>7} {'4-shot':>7} {'16-shot':>8}")
    for name, accs in r["rows"].items():
        print(f"{name:<16} " + " ".join(f"{100 * accs[k]:>6.1f}%" for k in (1, 4)) + f" {100 * accs[16]:>7.1f}%")
    o = r["overhead"]
    print(f"fit {r['fit_ms_per_support_image']:.0f} ms per support image, search {r['search_s_median']:.2f} s; "
          f"adapter at 16 shots x 1000 classes {o['adapter_ms']:.2f} ms/query = {o['pct_of_encoder']:.1f}% of the "
          f"encoder; keys {o['keys_mb']:.0f} MB folded vs {o['unfolded_keys_mb']:.0f} MB as CODER vectors")


# ---- fit memory (--mode memory) -------------------------------------------------------------------

_CHILD = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
import numpy as np
from coder.runtime.classifier import Classifier
from coder.runtime.datasets import image_folder
from coder.runtime import fewshot
if {old!r}:
    sys.path.insert(0, {bench!r})
    from bench_fewshot import encode_augmented_all_in_memory
    fewshot.encode_augmented = encode_augmented_all_in_memory
clf = Classifier.load({art!r}, bank={bank!r}, backend="cpu", fused_head=False)
res = fewshot.fit(clf, image_folder({train!r}), {shots}, image_folder({val!r}), epochs=1, seed=0)
np.savez({out!r}, keys=res.adapter.keys, labels=res.adapter.labels, ab=np.array([res.adapter.alpha, res.adapter.beta]))
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "n_support": res.n_support,
                  "seconds_encode": res.seconds_encode}}))
"""


def encode_augmented_all_in_memory(clf, items, epochs, seed, batch=32, on_step=lambda n: None):
    """``coder fit``'s support encoding before streaming: every image decoded and held up front."""
    from coder.runtime.augment import augment
    from coder.runtime.images import to_pil
    from coder.runtime.preprocess import preprocess_batch

    cfg = clf.encoder.preprocess_config
    rng = np.random.default_rng(seed)
    pils = [to_pil(x).convert("RGB") for x, _ in items]
    total = np.zeros((len(pils), clf.encoder.artifact.embed_dim), np.float32)
    for _ in range(max(epochs, 1)):
        views = [augment(p, cfg.size, rng) for p in pils] if epochs else pils
        for s in range(0, len(views), batch):
            total[s:s + batch] += clf.encoder.encode_pixels(preprocess_batch(views[s:s + batch], cfg))
            on_step(len(views[s:s + batch]))
    return l2_normalize(total)


def write_folder(root, names: list[str], per_class: int, size=(1024, 768), seed: int = 0) -> None:
    """``root/<name>/<i>.jpg``: smooth random colour fields (compress like photos, ~100 KB each)."""
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in names:
        d = Path(root) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize(size, Image.BILINEAR).save(d / f"{i:03d}.jpg", quality=90)


def _fit_child(art: str, bank: str, train, val, shots: int, out, old: bool) -> dict:
    import json
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    code = _CHILD.format(root=str(here.parent), bench=str(here), old=old, art=art, bank=bank, train=str(train),
                         val=str(val), shots=shots, out=str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"fit child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def run_memory(artifacts: str, classes: int, shots: int, check_classes: int, bank: str) -> dict:
    import shutil
    import tempfile
    from pathlib import Path

    clf = Classifier.load(artifacts, bank=bank or None, backend="cpu", fused_head=False)
    names = [n for n in clf.class_names if "/" not in n][:classes]  # folder names must equal class names
    bank = clf.bank.root.name
    del clf
    tmp = Path(tempfile.mkdtemp(prefix="coder-fit-mem-"))
    try:
        t0 = time.perf_counter()
        write_folder(tmp / "train", names, shots)
        write_folder(tmp / "val", names, 2, seed=1)
        t_write = time.perf_counter() - t0
        full = _fit_child(artifacts, bank, tmp / "train", tmp / "val", shots, tmp / "full.npz", old=False)
        sub = tmp / "sub"
        for split in ("train", "val"):
            for n in names[:check_classes]:
                shutil.copytree(tmp / split / n, sub / split / n)
        new = _fit_child(artifacts, bank, sub / "train", sub / "val", shots, tmp / "new.npz", old=False)
        old = _fit_child(artifacts, bank, sub / "train", sub / "val", shots, tmp / "old.npz", old=True)
        a, b = np.load(tmp / "new.npz"), np.load(tmp / "old.npz")
        identical = all(np.array_equal(a[k], b[k]) for k in ("keys", "labels", "ab"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"mode": "memory", "image_size": [1024, 768], "classes": classes, "shots": shots,
            "full": full, "check_classes": check_classes, "check_streaming": new, "check_all_in_memory": old,
            "adapter_identical": identical, "seconds_writing_jpegs": t_write,
            "decoded_support_gb_all_in_memory": classes * shots * 1024 * 768 * 3 / 1e9}


def render_memory(r: dict) -> None:
    f, n, o = r["full"], r["check_streaming"], r["check_all_in_memory"]
    print(f"coder fit, {r['classes']} classes x {r['shots']} shots of 1024x768 JPEGs (+2 val per class): "
          f"peak RSS {f['peak_rss_mb']:.0f} MB (goal <= 1536 MB), encode {f['seconds_encode']:.0f} s")
    print(f"{r['check_classes']} classes x {r['shots']} shots: streaming {n['peak_rss_mb']:.0f} MB vs all-in-memory "
          f"{o['peak_rss_mb']:.0f} MB peak RSS; adapters bit-identical: {r['adapter_identical']}")
    print(f"(all-in-memory would hold {r['decoded_support_gb_all_in_memory']:.1f} GB of decoded support images at "
          f"{r['classes']} x {r['shots']})")


def main_run(artifacts: str, mode: str, test: int, val: int, augment_epochs: int, seed: int, classes: int,
             shots: int, check_classes: int, bank: str) -> dict:
    if mode == "memory":
        return run_memory(artifacts, classes, shots, check_classes, bank)
    return run(artifacts, test, val, augment_epochs, seed)


def main_render(r: dict) -> None:
    (render_memory if r.get("mode") == "memory" else render)(r)


if __name__ == "__main__":
    script(__doc__, main_run, main_render, mode="accuracy", test=1000, val=500, augment_epochs=1, seed=0,
           classes=100, shots=16, check_classes=10, bank="")
