"""The artifact manifest: ``<artifact dir>/manifest.json``.

One directory holds everything the runtime needs for one backbone + weights:

    coder-artifacts/ViT-B-32__openai/
        manifest.json                 this file's subject
        image_encoder.fp32.onnx       (B,3,H,W) float32 -> (B,D) float32, raw (not normalised)
        image_encoder.fp16.onnx       same I/O types, fp16 inside, LayerNorm/Softmax in fp32
        text_encoder.fp32.onnx        (B,L) int32 token ids -> (B,D) float32, L <= context length
        text_encoder.fp16.onnx
        image_encoder.int8.onnx       --int8: static QDQ for ONNX Runtime's CPU (uint8 activations)
        image_encoder.int8.trt.onnx   --int8: the same calibration for TensorRT (symmetric int8)
        bpe_simple_vocab_16e6.txt.gz  tokenizer vocabulary (CLIP BPE), or tokenizer.json (HF tokenizers)
        *.onnx.data                   ONNX external data of encoders over 2 GB (listed per file)

Fields added without a format bump (older manifests load with these defaults):
``preprocess.source`` (where the transform came from; absent: the model),
``reparameterization`` (absent: none applied), ``image_attention`` (how many
``nn.MultiheadAttention`` modules the image encoder traced as plain matmuls; absent: exported before
that), ``files[*].external_data``
(absent: weights inline), ``text.tokenizer.kind`` ``hf_tokenizers`` (older
manifests only hold ``clip_bpe``), ``int8`` (the static int8 record: ``files`` per consumer,
``cpu`` -> ``image_encoder.int8.onnx``, ``tensorrt`` -> ``image_encoder.int8.trt.onnx``, calibration,
excluded nodes, accuracy; absent: no int8 encoder, or the dynamically quantized one of earlier
versions, which loads for no consumer and names the re-export).

The manifest is versioned (``format`` / ``format_version``) and records the
sha256 of every file; :func:`load_artifact` checks both before anything is used.
Loading is torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ChecksumError
from .store import atomic_write_json, read_json, sha256_file

FORMAT = "coder.artifact"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_VERIFY_CACHE = ".coder-verified.json"

TOWERS = ("image", "text")
PRECISIONS = ("fp32", "fp16", "int8")
INT8_SCHEME = "static-qdq"  # manifest["int8"]["scheme"] of statically calibrated QDQ int8 files


def encoder_filename(tower: str, precision: str) -> str:
    """``encoder_filename("image", "fp16") == "image_encoder.fp16.onnx"``."""
    return f"{tower}_encoder.{precision}.onnx"


@dataclass(frozen=True)
class PreprocessConfig:
    """The model's own inference transform, as open_clip defines it.

    Example: ``PreprocessConfig(size=(224, 224), resize_mode="shortest",
    interpolation="bicubic", mean=(0.481, 0.458, 0.408), std=(0.269, 0.261, 0.276))``.
    """

    size: tuple[int, int]  # (height, width)
    resize_mode: str  # "shortest" | "longest" | "squash"
    interpolation: str  # "bicubic" | "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fill_color: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        size = d["size"]
        size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        return cls(
            size=size,
            resize_mode=str(d.get("resize_mode") or "shortest"),
            interpolation=str(d.get("interpolation") or "bicubic"),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            fill_color=int(d.get("fill_color", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "fill_color": self.fill_color,
        }


@dataclass(frozen=True)
class Artifact:
    """A loaded, format-checked artifact directory. Files are hash-checked on first use."""

    root: Path
    manifest: dict[str, Any]

    @property
    def architecture(self) -> str:
        return self.manifest["architecture"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def max_batch(self) -> int:
        """The largest batch the exported encoders were validated at (``coder export --max-batch``)."""
        return int(self.manifest["exporter"]["max_batch"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions exported for both towers (``int8`` exists for the image tower only)."""
        return tuple(self.manifest["precisions"])

    def variants(self, tower: str) -> tuple[str, ...]:
        return tuple(self.manifest.get("encoders", {}).get(tower, self.manifest["precisions"]))

    def file(self, name: str) -> Path:
        """Path of a manifest-listed file after checking its sha256 (cached by stat)."""
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise ArtifactError(f"{self.root}: manifest lists no file {name!r}")
        path = self.root / name
        verify_file(self.root, name, entry["sha256"])
        # ONNX external data (models over 2 GB): the weights file is checked with its graph.
        for extra in entry.get("external_data", []):
            self.file(extra)
        return path

    def encoder(self, tower: str, precision: str, consumer: str = "cpu") -> Path:
        """The checked encoder file; ``consumer`` (``cpu`` | ``tensorrt`` | ``openvino``) picks among the int8 files."""
        return self.file(self.encoder_name(tower, precision, consumer))

    def encoder_name(self, tower: str, precision: str, consumer: str = "cpu") -> str:
        """``encoder_name("image", "int8", "tensorrt") == "image_encoder.int8.trt.onnx"`` (others: one file)."""
        if precision not in self.variants(tower):
            hint = "--int8" if precision == "int8" else f"--precision {precision}"
            raise ArtifactError(
                f"{self.root} has no {precision} {tower} encoder (exported: {', '.join(self.variants(tower))}); "
                f"re-export with {hint}"
            )
        if precision != "int8":
            return encoder_filename(tower, precision)
        record = self.manifest.get("int8") or {}
        if record.get("scheme") != INT8_SCHEME:
            raise ArtifactError(
                f"{self.root}: its int8 image encoder is dynamically quantized by an earlier coder (an image's "
                "embedding depends on the other images of its batch; no TensorRT file); re-export it with "
                "`coder export --int8 --force`")
        if consumer == "openvino" and consumer not in record["files"]:
            # No OpenVINO IR (exported without nncf, or it missed the gate): OpenVINO runs the plain QDQ file (the
            # cpu file's QAttention is ONNX Runtime's own; symmetric int8 also ran 1.06x faster on OpenVINO).
            consumer = "tensorrt"
        if consumer not in record["files"]:
            raise ArtifactError(f"{self.root}: no int8 file for {consumer!r} (have: {', '.join(record['files'])})")
        return record["files"][consumer]


PACK_JOURNAL = ".coder-pack-journal.json"  # inside a `coder pack` destination while the copy moves in


def swap_journal(root: Path) -> Path:
    """``.<name>.coder-swap.json`` beside ``root``: the journal of an export replacing that artifact."""
    return root.parent / f".{root.name}.coder-swap.json"


def load_artifact(root: str | os.PathLike) -> Artifact:
    """Read and check ``root/manifest.json`` (format, version, listed files present).

    >>> art = load_artifact("coder-artifacts/ViT-B-32__none")   # doctest: +SKIP
    >>> art.encoder("image", "fp32")                            # sha256 checked here
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        if (root / PACK_JOURNAL).is_file():
            raise ArtifactError(f"{root}: a `coder pack` into it was stopped while moving the copy in; run the same "
                                "`coder pack ARTIFACT DIR` again: it finishes the move first, from its journal")
        if swap_journal(root).is_file():
            raise ArtifactError(f"{root}: an export replacing this artifact was stopped in the middle of its swap; "
                                f"run `coder export --backbone ARCH --out {root}` (without --force): it finishes "
                                "the swap first, from its journal")
        raise ArtifactError(f"{root}: no {MANIFEST_NAME}; run `coder export` to create an artifact there")
    try:
        manifest = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{e}; re-run `coder export --force`") from None
    check_manifest(manifest, root)
    return Artifact(root=root, manifest=manifest)


def check_manifest(manifest: Any, root: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{root}/{MANIFEST_NAME}: not a coder artifact manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{root}: artifact format_version {version!r}, this coder reads {FORMAT_VERSION}; "
            "re-export it with this version (`coder export --force`)"
        )
    for key in ("architecture", "embed_dim", "preprocess", "files", "precisions", "text"):
        if key not in manifest:
            raise ArtifactError(f"{root}/{MANIFEST_NAME}: missing field {key!r}; re-run `coder export --force`")
    for name, entry in manifest["files"].items():
        p = root / name
        if not p.is_file():
            raise ArtifactError(f"{root}: file {name} listed in the manifest is missing; re-run `coder export`")
        if p.stat().st_size != entry.get("bytes"):
            raise ChecksumError(
                f"{p}: size {p.stat().st_size} != manifest {entry.get('bytes')}; the file changed, "
                "re-run `coder export --force`"
            )


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(root / MANIFEST_NAME, manifest)


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify_file(root: Path, name: str, expected: str) -> None:
    """Check ``root/name`` against ``expected`` (ChecksumError); remember a match by (size, mtime, inode).

    Hashing a 350 MB encoder costs ~0.5 s, so a verified file is not hashed
    again until its stat changes. The cache is advisory: an unwritable
    artifact directory (read-only partition) just means hashing every time.
    """
    path = root / name
    cache_path = root / _VERIFY_CACHE
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
    except (ValueError, OSError):
        cache = {}
    key = [expected, *_stat_key(path)]
    if cache.get(name) == key:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: sha256 {actual[:12]}… does not match the manifest ({expected[:12]}…); "
            "the file is corrupt or was replaced, re-run `coder export --force`"
        )
    cache[name] = key
    try:
        atomic_write_json(cache_path, cache)
    except OSError:
        pass


DEFAULT_BASE = Path("coder-artifacts")


def default_artifact_dir() -> Path:
    """``$CODER_ARTIFACTS`` if set, else the most recently exported artifact under ``./coder-artifacts``."""
    env = os.environ.get("CODER_ARTIFACTS")
    if env:
        return Path(env)
    manifests = sorted(DEFAULT_BASE.glob(f"*/{MANIFEST_NAME}"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise ArtifactError(f"no artifact in ./{DEFAULT_BASE} and CODER_ARTIFACTS is unset; "
                            "run `coder export` first or pass --artifacts DIR")
    return manifests[-1].parent
