#!/usr/bin/env bash
# Every GPU check of issue 14 and the GPU benchmark, in one go (about 5 minutes on one H100).
#
#   bash scripts/gpu-checks.sh --fetch-wheels   # here, once: the wheels the device lacks -> .whl/
#   bash scripts/gpu-checks.sh                  # on the device (it gets the tree, not the venv)
#   bash scripts/gpu-checks.sh --dry-run        # anywhere, on the CPU: what CI runs
#
# The device tool's call (docs/torch.md, "Running the GPU checks"):
#   run(command="bash scripts/gpu-checks.sh", carry=[".whl"], timeout_s=480)
#
# Parts, each writing its results under $OUT as soon as it finishes (8 files at most come
# back): env.txt (card, driver, torch), cuda-tests.log + cuda-tests.xml (every test marked
# cuda, under set_sync_debug_mode("error") where they say so), bench.log + bench.json
# (bench/bench_gpu.py), summary.txt (one line per part). The exit status is 0 only when
# every part passed and no cuda test was skipped except the two-GPU one on a one-GPU card.
# --dry-run runs the same parts on the CPU: a tiny benchmark, the cuda tests collected
# (they skip), nothing fetched.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=device
case "${1:-}" in
  --dry-run) mode=dry ;;
  --fetch-wheels) mode=fetch ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac

# What the device's image lacks (docs: /work/.library/device/KINDS.md lists what it has):
# OpenTelemetry, orjson, and a protobuf new enough for opentelemetry-proto.
WHEELS="opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-grpc
opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-common
opentelemetry-exporter-http-transport googleapis-common-protos protobuf orjson"
DEVICE_PY=3.12  # python3 on the device image (torch 2.11 in /opt/torch/.venv)

if [ "$mode" = fetch ]; then
  # the versions this checkout's venv tested together, where it has them
  frozen=$(uv pip freeze --python .venv/bin/python 2>/dev/null || true)
  rm -rf .whl && mkdir -p .whl
  for name in $WHEELS; do
    spec=$(printf '%s\n' "$frozen" | grep -i "^${name}==" || echo "$name")
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version "$DEVICE_PY" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d .whl "$spec" || { echo "could not fetch $spec" >&2; exit 1; }
  done
  ls .whl
  du -sh .whl
  exit 0
fi

if [ "$mode" = dry ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  OUT=${OUT:-$(mktemp -d)}
  BENCH_ARGS=(--dry-run)
else
  PY=${PYTHON:-python3}
  OUT=${OUT:-$(mktemp -d)}
  BENCH_ARGS=()
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/otel-sparse-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/otel-sparse-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
status=0
note() { echo "$*" | tee -a "$summary"; }

# 1. the machine
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("devices", torch.cuda.device_count(),
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
import opentelemetry.sdk, orjson, otel_sparse  # noqa: F401  (the carried wheels import)
print("otel_sparse imports")
EOF
} >"$OUT/env.txt" 2>&1
if grep -q "otel_sparse imports" "$OUT/env.txt"; then
  note "env: ok ($(grep '^python' "$OUT/env.txt"))"
else
  note "env: FAILED (see env.txt)"; cat "$OUT/env.txt"; exit 1
fi

# 2. every cuda test (none may be skipped on a GPU, except the two-GPU one on one card)
timeout 270 "$PY" -m pytest -p no:cacheprovider -m cuda -rs -q \
  --junitxml "$OUT/cuda-tests.xml" tests/test_cuda.py tests/test_gpu_checks.py \
  tests/test_tensors.py tests/test_torch_hooks.py tests/test_bad_input.py \
  >"$OUT/cuda-tests.log" 2>&1
rc=$?
tail -n 25 "$OUT/cuda-tests.log"
counts=$("$PY" - "$OUT/cuda-tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
skipped = [c.get("name") for c in suite.iter("testcase") if c.find("skipped") is not None]
unexpected = [n for n in skipped if n != "test_only_cuda1_leaves_cuda0_alone"]
print(suite.get("tests"), suite.get("failures"), suite.get("errors"), len(skipped),
      len(unexpected))
EOF
) || counts="? ? ? ? ?"
read -r total failed errored skipped unexpected <<<"$counts"
if [ "$mode" = dry ]; then
  # on the CPU every cuda test skips; collecting them all is the check
  [ "$rc" -eq 0 ] && [ "$total" != "?" ] && [ "$total" -gt 0 ] \
    && note "cuda tests: $total collected, $skipped skipped (CPU)" \
    || { note "cuda tests: FAILED to collect (rc $rc)"; status=1; }
elif [ "$rc" -eq 0 ] && [ "$unexpected" = 0 ]; then
  note "cuda tests: $total run, $failed failed, $skipped skipped (two-GPU test only)"
else
  note "cuda tests: FAILED rc=$rc tests=$total failures=$failed errors=$errored skipped=$skipped (unexpected $unexpected)"
  status=1
fi

# 3. the benchmark (eager and CUDA graphs; off / otel_sparse / .item())
timeout 150 "$PY" bench/bench_gpu.py "${BENCH_ARGS[@]}" --out "$OUT/bench.json" \
  >"$OUT/bench.log" 2>&1
rc=$?
cat "$OUT/bench.log"
if [ "$rc" -eq 0 ]; then
  note "bench: ok"
  grep -E '^(eager|graph)' "$OUT/bench.log" >>"$summary" || true
else
  note "bench: FAILED rc=$rc"
  status=1
fi

note "done: status $status; results in $OUT"
exit "$status"
