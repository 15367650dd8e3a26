#!/usr/bin/env bash
# On a CUDA machine with paddlepaddle-gpu: Train.py's training step at batch 100 and 256, in float32
# and with --amp, then one epoch of Train.py over ../shared/data/faces (or $1) with and without
# --amp --cache-device, as one table.
#     bash benchmarks/gpu_check.sh [faces folder]
# Not run in CI, and not yet run on a GPU by the project: the one GPU it was lent had no Paddle and
# could not be given one (benchmarks/README.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/faces}"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

python - "$DATA" "$SCRATCH" <<'EOF'
import subprocess
import sys
import time

import Utils  # first: sets the CPU environment before Paddle loads
import paddle

import Train
from Net import Discriminator, Generator

data, scratch = sys.argv[1], sys.argv[2]
if Utils.choose_device("auto") != "gpu":
    sys.exit("gpu_check.sh needs paddlepaddle-gpu and a visible CUDA GPU; for CPU numbers run benchmarks/bench.py.")
rows = [f"GPU: {paddle.device.cuda.get_device_name()}, Paddle {paddle.__version__}, "
        f"bfloat16 {'supported' if paddle.amp.is_bfloat16_supported() else 'not supported (float16 + loss scaling)'}",
        "", "| measurement | float32 | --amp |", "|---|---:|---:|"]


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


for batch in (100, 256):
    fp32, amp = images_per_second(batch, False), images_per_second(batch, True)
    rows.append(f"| training step, batch {batch}, real images/s | {fp32:.0f} | {amp:.0f} |")


def epoch_seconds(*flags):
    command = [sys.executable, "Train.py", "--data", data, "--epochs", "1", "--batch-size", "100", "--fresh",
               "--sample-every", "0", "--model-dir", f"{scratch}/Model", "--output", f"{scratch}/Output", *flags]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


rows.append(f"| one epoch of Train.py over {data}, s (includes start-up) | {epoch_seconds():.1f} | "
            f"{epoch_seconds('--amp'):.1f} |")
rows.append(f"| the same with --cache-device, s | {epoch_seconds('--cache-device'):.1f} | "
            f"{epoch_seconds('--amp', '--cache-device'):.1f} |")
print("\n".join(rows))
EOF
