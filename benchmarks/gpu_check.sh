#!/usr/bin/env bash
# First run on a machine with an NVIDIA GPU: one command that checks everything GPU-side coder does.
#
#   benchmarks/gpu_check.sh ARTIFACT_DIR [IMAGE ...]
#
# Needs `coder` on PATH with the [gpu] (onnxruntime-gpu) and [trt] (tensorrt, cuda-python) extras and an
# artifact exported with fp16 and a bank (coder export --precision both). Without images, 16 synthetic
# scenes are written. Steps: coder doctor -> build-engine (fp16, fused head, validated) -> classify on
# cpu (fp32 reference), cuda, tensorrt and tensorrt-native (fp16) -> labels equal across backends (a
# difference passes only at a near-tie of the cpu decision: the rule engine validation uses,
# coder.runtime.engine_build.near_tie) -> coder bench -> the gpu-marked tests (also on a Jetson, which
# has no nvidia-smi). Everything lands in $GPU_CHECK_OUT (default ./gpu-check-<time>); the summary says
# which step failed and what to report. Exit 0 only if every step passed and labels agree.
set -uo pipefail

ART=${1:?usage: benchmarks/gpu_check.sh ARTIFACT_DIR [IMAGE ...]}
shift
OUT=${GPU_CHECK_OUT:-gpu-check-$(date +%Y%m%dT%H%M%S)}
CODER=${CODER:-coder}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
failed=()

step() {  # step NAME OUTFILE CMD...: run, keep stdout in OUTFILE and stderr in OUTFILE.err
  local name=$1 file=$2
  shift 2
  printf '%-34s' "$name"
  if "$@" >"$OUT/$file" 2>"$OUT/$file.err"; then
    echo ok
  else
    echo "FAILED (exit $?, see $OUT/$file.err)"
    failed+=("$name")
  fi
}

if [ $# -eq 0 ]; then
  mkdir -p "$OUT/images"
  "$PYTHON" -c "
import sys
from coder.samples import synthetic_scene
for i in range(16):
    synthetic_scene(2000 + i, (640, 480)).save(f'{sys.argv[1]}/scene-{i:02d}.jpg', quality=92)
" "$OUT/images" || { echo "cannot write sample images (is coder importable by $PYTHON?)"; exit 2; }
  set -- "$OUT"/images/*.jpg
fi

step "doctor" doctor.json "$CODER" doctor --json
step "build-engine (fp16)" build-engine.json "$CODER" build-engine "$ART" --precision fp16 --json
step "classify cpu (fp32)" classify-cpu.jsonl "$CODER" classify "$@" -a "$ART" --backend cpu --precision fp32 --json
for b in cuda tensorrt tensorrt-native; do
  step "classify $b (fp16)" "classify-$b.jsonl" "$CODER" classify "$@" -a "$ART" --backend "$b" --precision fp16 --json
done

printf '%-34s' "labels equal"
if "$PYTHON" - "$OUT" "$ART" <<'PY'
# The rule of engine validation: a differing label passes only where the cpu fp32 decision is itself a
# near-tie (coder.runtime.engine_build.near_tie), judged on the score differences the two runs show.
import json, pathlib, sys
from coder.manifest import load_artifact
from coder.runtime.classifier import find_bank
from coder.runtime.engine_build import compare_labels
from coder.text_bank.bank import load_bank
from coder.errors import CoderError, one_line
out = pathlib.Path(sys.argv[1])
try:
    art = load_artifact(sys.argv[2])
    tau = load_bank(find_bank(art.root, None), art).tau
except CoderError as e:
    print(f"cannot read the bank's tau: {one_line(e)}")
    sys.exit(1)
runs = {}
for f in sorted(out.glob("classify-*.jsonl")):
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if rows:
        runs[f.stem.removeprefix("classify-")] = rows
ref = runs.get("cpu")
if not ref or len(runs) < 2:
    print(f"nothing to compare (ran: {', '.join(runs) or 'none'})")
    sys.exit(1)
bad = 0
for name, rows in runs.items():
    backends = sorted({r.get("backend") for r in rows})
    c = compare_labels(ref, rows, tau)
    bad += not c.passed
    print(f"\n  {name:16s} backend reported {backends}: {c.equal}/{c.total} labels equal to cpu fp32, "
          f"{c.near_ties} near-tie(s) accepted", end="")
    for f, want, got in c.differ[:5]:
        print(f"\n    {f}: cpu {want}, {name} {got} (not a near-tie)", end="")
print("\n" + " " * 34, end="")
sys.exit(1 if bad else 0)
PY
then echo "  ok"; else failed+=("labels equal"); fi

# shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of options
step "bench" bench.json "$CODER" bench "$ART" ${GPU_CHECK_BENCH_ARGS:---batches 1,8,32} --json
if [ -d tests ] && [ "${GPU_CHECK_PYTEST:-1}" != 0 ]; then
  step "pytest -m gpu" pytest-gpu.txt "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests
fi

echo "results in $OUT"
echo "to report: this summary, $OUT/doctor.json (versions, GPU, JetPack), $OUT/build-engine.json (validation),"
echo "  $OUT/bench.json (figures), $OUT/pytest-gpu.txt, and the .err file of every step that failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
