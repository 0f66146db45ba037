#!/usr/bin/env bash
# deploy/gpu-check.sh: one command that measures emotion-stream on a GPU, in at most 10 minutes,
# and writes one JSON report (OUT_DIR/report.json, also printed on stdout).
#
#   deploy/gpu-check.sh [OUT_DIR]          # default OUT_DIR: out/gpu-check
#
# What it does, each step bounded by the time left of the budget:
#   1. `emotion-stream doctor --json`: GPU, driver, TensorRT, pycuda, ONNX Runtime providers, NVDEC.
#      No GPU: the report says so (and why) and the script exits 0 without measuring anything.
#   2. The path it can measure: "tensorrt" (TensorRT + pycuda), else "cuda-fallback" (ONNX Runtime's
#      CUDA provider for the detector, ONNX Runtime CUDA and torch CUDA for the emotion model).
#   3. Builds the emotion engine and the detector engine in fp32, fp16 and int8 (int8 calibrated on
#      real aligned face crops, and real frames, of the sample clip), with parity against the CPU
#      models (emotion: `engines parity`; detector: same face count, IoU >= 0.95 on real frames).
#   4. `emotion-stream engines bench` per precision and batch size.
#   5. Bisects the number of live-paced 1080p30 streams one GPU sustains end to end
#      (`emotion-stream bench --streams N --realtime`) with p99 capture-to-publish < 150 ms.
#
# Environment: ES_GPU_CHECK_BUDGET_S (600), ES_GPU_CHECK_P99_MS (150), ES_GPU_CHECK_MAX_STREAMS
# (256), ES_GPU_CHECK_FRAMES (150 frames per stream per trial), ES_GPU_CHECK_STREAM_S (240 s of
# the budget kept for the stream bisection), ES_MODELS (models), PYTHON
# (python3), ES_BIN (emotion-stream). ES_GPU_CHECK_FORCE=1 runs every step even without a GPU
# (to test the script itself on a CPU machine; such figures are labelled and mean nothing).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
OUT=${1:-out/gpu-check}
BUDGET=${ES_GPU_CHECK_BUDGET_S:-600}
P99_MS=${ES_GPU_CHECK_P99_MS:-150}
MAX_STREAMS=${ES_GPU_CHECK_MAX_STREAMS:-256}
FRAMES=${ES_GPU_CHECK_FRAMES:-150}
STREAM_S=${ES_GPU_CHECK_STREAM_S:-240}
MODELS=${ES_MODELS:-models}
PY=${PYTHON:-python3}
ES=${ES_BIN:-emotion-stream}
EMO="$MODELS/emotion_mini_xception.onnx"
START=$SECONDS

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT/steps.tsv"
export ES_ENGINE_CACHE="$OUT/engines"

left() { echo $((BUDGET - (SECONDS - START))); }

# [CAP=S] [RESERVE=S] run NAME CMD...: stdout -> OUT/NAME.json, stderr -> OUT/NAME.log, bounded
# by the budget left minus RESERVE (kept for the stream bisection) and by CAP.
run() {
  local name=$1 t0=$SECONDS rc limit
  shift
  limit=$(($(left) - ${RESERVE:-0}))
  if [ -n "${CAP:-}" ] && ((CAP < limit)); then limit=$CAP; fi
  if ((limit < 15)); then
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"
    return 124
  fi
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$OUT/steps.tsv"
  echo "gpu-check: $name rc=$rc ($((SECONDS - t0)) s, $(left) s left)" >&2
  return "$rc"
}

# jget FILE EXPR: evaluate a Python expression over the JSON object `d` in FILE.
jget() {
  "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}

report() { # report GPU_PRESENT PATH NOTE
  "$PY" - "$OUT" "$1" "$2" "$3" "$BUDGET" "$((SECONDS - START))" "$P99_MS" <<'EOF'
import json, sys
from pathlib import Path

out, gpu, path, note, budget, elapsed, p99 = sys.argv[1:8]
out = Path(out)

def load(name):
    f = out / f"{name}.json"
    if not f.is_file():
        return None
    text = f.read_text().strip()
    try:
        return json.loads(text.splitlines()[-1]) if text else None
    except ValueError:
        try:
            return json.loads(text)
        except ValueError:
            return {"text": text[-2000:]}

steps = []
if (out / "steps.tsv").is_file():
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, secs = line.split("\t")
        steps.append({"step": name, "rc": rc, "seconds": int(secs)})
doctor = load("doctor") or {}
trials = [json.loads(l) for l in (out / "trials.jsonl").read_text().splitlines()] if (out / "trials.jsonl").is_file() else []
ok = [t for t in trials if t["sustained"]]
rep = {
    "schema": "emotion-stream.gpu-check/v1",
    "gpu_present": gpu == "yes",
    "measured_path": path,
    "note": note,
    "gpus": (doctor.get("gpu") or {}).get("devices", []),
    "driver_cuda_version": (doctor.get("gpu") or {}).get("driver_cuda_version"),
    "backends": {b["name"]: {"usable": b["usable"], "reason": b["reason"]} for b in doctor.get("backends", [])},
    "emotion_builds": {p: load(f"build-emotion-{p}") for p in ("fp32", "fp16", "int8")},
    "detector": {p: load(f"detector-{p}") for p in ("fp32", "fp16", "int8", "ort-cuda")},
    "emotion_parity": load("parity-emotion"),
    "emotion_bench": load("bench-emotion"),
    "streams_1080p30": {
        "criterion": f"p99 capture-to-publish < {p99} ms and >= 95% of real-time frame rate",
        "max_sustained": max((t["streams"] for t in ok), default=0),
        "goal": 64,
        "trials": trials,
    },
    "steps": steps,
    "budget_s": int(budget),
    "elapsed_s": int(elapsed),
}
rep["detector"] = {k: v for k, v in rep["detector"].items() if v is not None}
(out / "report.json").write_text(json.dumps(rep, indent=2))
print(json.dumps(rep, indent=2))
EOF
}

# ---------------------------------------------------------------- 1. what is here
run doctor "$ES" doctor --json
if ! [ -s "$OUT/doctor.json" ]; then
  report no none "emotion-stream doctor failed: see $OUT/doctor.log"
  exit 1
fi
NGPU=$(jget "$OUT/doctor.json" 'len(d["gpu"]["devices"])')
NGPU=${NGPU:-0}
GPU=yes
if [ "$NGPU" = 0 ]; then
  GPU=no
  WHY=$(jget "$OUT/doctor.json" 'd["gpu"]["reason"]')
  if [ "${ES_GPU_CHECK_FORCE:-0}" != 1 ]; then
    report no none "no GPU here ($WHY): nothing measured"
    exit 0
  fi
fi
TRT=$(jget "$OUT/doctor.json" '[b["usable"] for b in d["backends"] if b["name"]=="tensorrt"][0]')
if [ "$TRT" = True ]; then
  PATHKIND=tensorrt
  PRECISIONS="fp32 fp16 int8"
  RUNFLAGS=(--backend tensorrt --precision fp16 --detector-backend tensorrt)
else
  PATHKIND=cuda-fallback
  PRECISIONS=""
  RUNFLAGS=(--backend auto --precision fp32 --detector-backend onnxruntime)
fi
[ "$GPU" = no ] && PATHKIND="$PATHKIND (forced without a GPU: figures are CPU figures)"
echo "gpu-check: $NGPU GPU(s), measuring the $PATHKIND path" >&2

# ---------------------------------------------------------------- 2. models and media
[ -f "$EMO" ] || run models "$ES" models bootstrap --dir "$MODELS"
run sample "$ES" sample --out "$OUT/sample.mp4"
CAP=120 run clip1080 "$PY" -m pipeline.tools.gpu_check clip --out "$OUT/clip1080.mp4" --seconds 6
run calib-frames "$PY" -m pipeline.tools.gpu_check calib-frames --clip "$OUT/sample.mp4" --out "$OUT/detector-calib.npy"

# ---------------------------------------------------------------- 3. engines, parity
for p in $PRECISIONS; do
  calib=()
  dcalib=()
  if [ "$p" = int8 ]; then
    calib=(--calib "$OUT/sample.mp4")
    dcalib=(--calib "$OUT/detector-calib.npy")
  fi
  CAP=150 RESERVE=$STREAM_S run "build-emotion-$p" "$ES" engines build "$EMO" --precision "$p" --max-batch 64 "${calib[@]}"
  CAP=150 RESERVE=$STREAM_S run "detector-$p" "$PY" -m pipeline.tools.gpu_check detector --models "$MODELS" \
    --clip "$OUT/sample.mp4" --backend tensorrt --precision "$p" "${dcalib[@]}"
done
if [ "$TRT" = True ]; then
  CAP=120 RESERVE=$STREAM_S run parity-emotion "$ES" engines parity "$EMO" --crops "$OUT/sample.mp4" --int8-calib "$OUT/sample.mp4" --json
  CAP=120 RESERVE=$STREAM_S run bench-emotion "$ES" engines bench "$EMO" --backend tensorrt --precision fp32,fp16,int8 \
    --batch-sizes 1,8,32,64 --iters 20 --json
else
  CAP=150 RESERVE=$STREAM_S run detector-ort-cuda "$PY" -m pipeline.tools.gpu_check detector --models "$MODELS" \
    --clip "$OUT/sample.mp4" --backend onnxruntime
  CAP=120 RESERVE=$STREAM_S run parity-emotion "$ES" engines parity "$EMO" --crops "$OUT/sample.mp4" --json
  CAP=120 RESERVE=$STREAM_S run bench-emotion "$ES" engines bench "$EMO" --backend all --precision fp32,fp16 \
    --batch-sizes 1,8,32,64 --iters 20 --device cuda --json
fi

# ---------------------------------------------------------------- 4. streams per GPU
# trial N: one end-to-end bench of N live-paced copies of the 1080p30 clip; appends to trials.jsonl.
trial() {
  local n=$1 f="$OUT/bench-streams-$1.json" verdict
  run "bench-streams-$n" "$ES" bench "$OUT/clip1080.mp4" --streams "$n" --realtime \
    --max-frames "$FRAMES" --max-batch 64 --json "${RUNFLAGS[@]}" || true
  verdict=$("$PY" - "$f" "$n" "$P99_MS" <<'EOF'
import json, sys
f, n, p99 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    d = json.loads(open(f).read().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    print(json.dumps({"streams": n, "sustained": False, "error": "no bench result"}))
    raise SystemExit
fps_needed = 0.95 * 30 * n
ok = d["latency_ms_p99"] < p99 and d["frames_per_s"] >= fps_needed
print(json.dumps({"streams": n, "sustained": ok, "latency_ms_p50": d["latency_ms_p50"],
                  "latency_ms_p99": d["latency_ms_p99"], "frames_per_s": d["frames_per_s"],
                  "frames_per_s_needed": round(fps_needed, 1), "backend": d.get("backend"),
                  "precision": d.get("precision"), "detector": d.get("detector"),
                  "cpu_percent": d.get("cpu_percent")}))
EOF
  )
  echo "$verdict" >>"$OUT/trials.jsonl"
  echo "gpu-check: $n streams -> $verdict" >&2
  [[ "$verdict" == *'"sustained": true'* ]]
}

good=0
bad=0
n=1
while ((n <= MAX_STREAMS)) && (($(left) > 60)); do
  if trial "$n"; then
    good=$n
    n=$((n * 2))
  else
    bad=$n
    break
  fi
done
while ((bad > good + 1)) && (($(left) > 60)); do
  mid=$(((good + bad) / 2))
  if trial "$mid"; then good=$mid; else bad=$mid; fi
done

report "$GPU" "$PATHKIND" "max sustained 1080p30 streams: $good (first failing: ${bad:-none})"
