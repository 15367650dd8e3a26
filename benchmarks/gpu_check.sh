#!/usr/bin/env bash
# Training speed on a CUDA machine, as a table printed one row at a time:
#     bash benchmarks/gpu_check.sh [faces folder]          # default ../shared/data/faces
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh  # another interpreter than python3
# It needs paddlepaddle-gpu (README.md, "Environment"), a visible GPU and a folder of at least
# 100 faces (one batch). Rows: Train.py's training step at batch 100 and 256 in float32 and with
# --amp, then one epoch of Train.py over the folder in float32, with --amp, with --cache-device,
# with both, and on two GPUs (paddle.distributed.launch --gpus 0,1, 50 faces per GPU) when two are
# visible. All inputs are checked before anything trains (a missing one: one line, exit status
# 2), and each row is printed as soon as it is measured, so a failure part way keeps the rows
# above it; a row that fails says why and the rest still run (exit status 1 at the end).
# Not run in CI; see benchmarks/README.md, "GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/faces}"
PYTHON="${PYTHON:-python3}"
BATCH=100  # the original repository's batch, so the epoch rows compare with the CPU numbers
export LC_NUMERIC=C  # $EPOCHREALTIME with a decimal point, as awk reads it

stop() {
    echo "gpu_check.sh: $*" >&2
    exit 2
}

# ------------------------------------------------------------------ inputs, before any training

# The data first: it takes no Paddle to check, and a wrong folder is the likeliest mistake.
count_images() {  # the extensions Reader.py reads, searched as it does (recursively); unreadable subfolders skipped
    find -L "$1" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.webp' \
        -o -iname '*.bmp' \) 2>/dev/null | wc -l
}
[ -d "$DATA" ] || stop "the data folder $DATA does not exist; pass a folder of 96x96 faces as the first argument."
IMAGES=$(count_images "$DATA") || true
[ "$IMAGES" -gt 0 ] || stop "the data folder $DATA holds no images (.jpg .jpeg .png .webp .bmp); pass a folder of faces."
[ "$IMAGES" -ge "$BATCH" ] || stop "the data folder $DATA holds $IMAGES images, fewer than one batch of $BATCH; add faces."

GPUS=$("$PYTHON" - <<'EOF'
import sys
import warnings

warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's note to people who build it
try:
    import paddle
except ImportError:
    sys.exit(f"gpu_check.sh: {sys.executable} cannot import paddle; activate the project's venv or set PYTHON.")
if not paddle.is_compiled_with_cuda():
    sys.exit(f"gpu_check.sh: this Paddle {paddle.__version__} has no CUDA; install paddlepaddle-gpu "
             "(README.md, \"Environment\"). For CPU numbers run benchmarks/bench.py.")
if paddle.device.cuda.device_count() == 0:
    sys.exit("gpu_check.sh: Paddle has CUDA but sees no GPU; check nvidia-smi and CUDA_VISIBLE_DEVICES.")
print(paddle.device.cuda.device_count())
EOF
) || exit 2

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
FAILED=0

# ----------------------------------------------------------------------------- the training step

"$PYTHON" - "$DATA" "$IMAGES" "$GPUS" <<'EOF' || FAILED=1
import sys
import time

import Utils  # first: sets the CPU environment before Paddle loads
import paddle

import Train
from Net import Discriminator, Generator

data, images, gpus = sys.argv[1:]
Utils.choose_device("gpu")
bfloat16 = "bfloat16" if paddle.amp.is_bfloat16_supported() else "float16 with loss scaling (no bfloat16)"
print(f"{time.strftime('%Y-%m-%d')}: {gpus} x {paddle.device.cuda.get_device_name()}, Paddle {paddle.__version__} "
      f"(CUDA {paddle.version.cuda()}), --amp is {bfloat16}; {images} faces in {data}\n\n"
      "| measurement | result |\n|---|---:|", flush=True)


def images_per_second(batch, amp, steps=10, warmup=3):
    paddle.seed(0)
    G, D = Generator(), Discriminator()
    opt_g = paddle.optimizer.Adam(2e-4, beta1=0.8, parameters=G.parameters())
    opt_d = paddle.optimizer.Adam(2e-4, beta1=0.8, parameters=D.parameters())
    real = paddle.rand([batch, 3, 96, 96]) * 2 - 1
    precision = Train.MixedPrecision() if amp else None
    for step in range(warmup + steps):
        if step == warmup:
            paddle.device.synchronize()
            started = time.perf_counter()
        losses = Train.train_step(G, D, opt_g, opt_d, real, 2, True, precision)
    [float(loss) for loss in losses]  # waits for the device
    return batch * steps / (time.perf_counter() - started)


failed = False
for batch in (100, 256):
    for amp in (False, True):
        label = f"training step, batch {batch}, {'--amp' if amp else 'float32'}"
        try:
            print(f"| {label} | {images_per_second(batch, amp):.0f} real images/s |", flush=True)
        except Exception as error:  # noqa: BLE001  one failed row must not cost the others
            reason = [line for line in str(error).splitlines() if line.strip()] or [""]  # Paddle's run long
            print(f"| {label} | failed: {type(error).__name__}: {reason[-1].strip()} |", flush=True)
            failed = True
sys.exit(1 if failed else 0)
EOF

# ------------------------------------------------------------------------ one epoch of Train.py

# One row: the label, then the command. Prints the wall time (start-up included), or the command's
# last line of output when it fails.
epoch_row() {
    local label=$1 started=$EPOCHREALTIME
    shift
    if "$@" --data "$DATA" --epochs 1 --fresh --seed 0 --sample-every 0 --device gpu \
        --model-dir "$SCRATCH/Model" --output "$SCRATCH/Output" >"$SCRATCH/log" 2>&1; then
        awk -v started="$started" -v ended="$EPOCHREALTIME" \
            -v label="$label" 'BEGIN { printf "| %s | %.1f s |\n", label, ended - started }'
    else
        echo "| $label | failed: $(tail -n 1 "$SCRATCH/log") |"
        FAILED=1
    fi
}

TRAIN=("$PYTHON" Train.py --batch-size "$BATCH")
epoch_row "one epoch of Train.py over $IMAGES faces, float32, start-up included" "${TRAIN[@]}"
epoch_row "one epoch, --amp" "${TRAIN[@]}" --amp
epoch_row "one epoch, --cache-device" "${TRAIN[@]}" --cache-device
epoch_row "one epoch, --amp --cache-device" "${TRAIN[@]}" --amp --cache-device
if [ "$GPUS" -ge 2 ]; then
    epoch_row "one epoch, 2 GPUs x batch $((BATCH / 2)), float32" "$PYTHON" -m paddle.distributed.launch \
        --gpus 0,1 --log_dir "$SCRATCH/launch" Train.py --batch-size $((BATCH / 2))
else
    echo "| one epoch, 2 GPUs | skipped: only $GPUS GPU visible |"
fi
exit "$FAILED"
