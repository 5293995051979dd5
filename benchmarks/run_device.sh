#!/usr/bin/env bash
# The accelerator measurements of benchmarks/README.md as one script (fits in ~10 minutes of a GPU machine):
# sweep throughput against batch size on the GPU, sweeps spread over 1 … 16 host devices of
# that machine's CPU cores, the accuracy-matched comparison with torchdiffeq on the GPU, and
# single trajectories on the GPU. Each part has its own time limit, so one that fails or runs
# long does not cost the others. Results (JSON and logs) go to $OUT (default results/device).
#
#     OUT=/tmp/dev bash benchmarks/run_device.sh          # on the GPU machine, from the repo root
#     DRY=1 OUT=/tmp/dev bash benchmarks/run_device.sh    # a tiny CPU rehearsal of every part
set -u
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5  # leave room for torch in the same machine
PY=${PY:-python3}
if [ "${DRY:-0}" = 1 ]; then
    W=10; GPU_BATCHES="1 4"; CPU_DEV="1 2"; CMP="--width 10 --quick"; TDEV=cpu
    ALPHAS="0.1"; T=(120 120 200 120)
else
    W=100; GPU_BATCHES="1 16 64 256 1024"; CPU_DEV="1 2 4 8 16"; CMP="--width 100"; TDEV=cuda
    ALPHAS="0.1 0.01 0.001"; T=(170 110 130 90)
fi
part() {  # part NAME LIMIT_S COMMAND...: run with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) $(date +%T)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 14 "$OUT/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
}
nvidia-smi -L 2>/dev/null
$PY - <<'EOF' || exit 3
import jax, diffrax, equinox, lineax, optimistix, optax, numpy
jax.config.update("jax_enable_x64", True)
print("jax", jax.__version__, "diffrax", diffrax.__version__, "equinox", equinox.__version__,
      "lineax", lineax.__version__, "optimistix", optimistix.__version__, "numpy",
      numpy.__version__, jax.devices())
import jax.random as jr, saddlejax
p = saddlejax.matrix_completion_problem(jr.key(0))
net = saddlejax.init.scale(saddlejax.nn.DeepLinear((10, 10, 10, 10), key=jr.key(1)), 0.1)
sol = saddlejax.gradient_flow(p, net, 10.0, solver=saddlejax.AutoStiff())
print("smoke flow ok:", bool(sol.successful), float(sol.loss[-1]))
EOF
part sweep_gpu "${T[0]}" $PY benchmarks/bench_sweep.py --platform gpu --width $W \
    --batches $GPU_BATCHES --out "$OUT/sweep_gpu.json"
part sweep_cpu_devices "${T[1]}" $PY benchmarks/bench_sweep.py --platform cpu --width 30 \
    --batches 1 16 --devices $CPU_DEV --batching loop --out "$OUT/sweep_cpu_devices.json"
part compare_gpu "${T[2]}" $PY benchmarks/bench_compare.py $CMP --torch-device $TDEV \
    --out "$OUT/compare_gpu.json"
part alpha_gpu "${T[3]}" $PY benchmarks/bench_alpha.py --solvers auto --keys 2 \
    --alphas $ALPHAS --t1-factor 4 --out "$OUT/alpha_gpu.json"
