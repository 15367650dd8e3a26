"""What the scripts share about the process: its CPU set-up, the device, seeding and noise, the
flag types and limits of what users may ask for, pictures (grids, PNGs, GIFs, plots), and the
one-sentence error a user sees instead of a traceback (run_main).

Importing this module sets up the process for Paddle's CPU kernels (`set_up_cpu`). Paddle's
libraries read those settings once, when they load, so every script imports Utils before
anything that imports Paddle; the import order in pyproject.toml (its "process-setup" section)
keeps `import Utils` first, and `ruff check` in CI fails if it moves.
"""
import argparse
import ctypes
import io
import os
import platform
import random
import signal
import sys
import warnings
from pathlib import Path


def _cpuinfo(key):
    """A line of Linux's /proc/cpuinfo, e.g. "vendor_id"; elsewhere what Python knows of the
    processor, e.g. "AMD64 Family 25 Model 97, AuthenticAMD" on Windows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_vendor():
    """The processor's maker as the CPU reports it: "AuthenticAMD", "GenuineIntel", ... or ""."""
    return _cpuinfo("vendor_id")


def set_up_cpu():
    """Every process-wide setting, in one place; each leaves a user's own setting of it alone.
    benchmarks/README.md has the measurements behind them."""
    # Paddle's CPU wheel ships Intel MKL 2019, which takes a slow generic path on AMD processors
    # unless told which instruction set to use. On Intel, MKL's own choice is the fast one.
    if "AuthenticAMD" in cpu_vendor():
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    # Paddle prints "No ccache found" at import; that concerns people who build Paddle, not users.
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message=".*ccache.*")
    import Files  # no Paddle in it, so it may load before the settings are in place

    Files.warnings_as_sentences()
    warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
    _keep_freed_memory()


def _keep_freed_memory():
    # glibc serves large blocks with a fresh mmap and unmaps them when freed, so every training
    # step would page-fault its large tensors in again; keep freed memory in the heap for reuse.
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_MAX_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


_USER_SET_THREADS = "OMP_NUM_THREADS" in os.environ  # read before Paddle loads: it sets the variable to 1


def cpu_threads():
    """The user's OMP_NUM_THREADS if set, else every core this process may run on."""
    if _USER_SET_THREADS and os.environ["OMP_NUM_THREADS"].isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


set_up_cpu()

import numpy as np  # noqa: E402  (the settings above must be in place before Paddle loads)
import paddle  # noqa: E402

import Files  # noqa: E402
from Files import UserError  # noqa: E402
from Net import Z_DIM  # noqa: E402


def _use_all_cores():
    # Paddle's CPU build computes on one thread unless told otherwise. Setting OMP_NUM_THREADS
    # would do it too, but makes Paddle print a warning about data parallelism at every start.
    if not _USER_SET_THREADS and hasattr(paddle.base.core, "set_num_threads"):
        paddle.base.core.set_num_threads(cpu_threads())


_use_all_cores()


def run_main(main):
    """Run a script's main() and exit with the status it returns (None: 0); a UserError, or an
    OSError of the machine's (a full disk, a name too long: Files.os_error_sentence), ends the
    program with one sentence and exit status 2, and Ctrl-C or SIGTERM with a line and status 130,
    where the script does not handle them itself (Train.py's loop saves first; the studio's Gradio
    server closes and exits 0)."""
    signal.signal(signal.SIGTERM, _stop)  # after Paddle's import, whose crash report would take it
    try:
        status = main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        sentence = Files.os_error_sentence(error)
        if sentence is None:
            raise
        print(f"error: {sentence}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def _stop(signum, frame):
    """SIGTERM (a service manager's stop, or `kill`) handled as Ctrl-C."""
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------- device

def machine_name(device):
    """What a training run computes on, for a model's record: the CPU model, and the GPU's on GPUs."""
    name = _cpuinfo("model name") or "unknown CPU"
    if Path("/proc/cpuinfo").exists():  # virtual machines often shorten the name to "AMD EPYC"
        name += f" (family {_cpuinfo('cpu family')}, model {_cpuinfo('model')})"
    name += f", {os.cpu_count()} cores"
    if device == "gpu":
        name += f"; GPU {paddle.device.cuda.get_device_name()}"
    return name


def choose_device(choice="auto"):
    """Select and return "gpu" or "cpu". "auto" takes the GPU when Paddle was built with CUDA and
    one is visible."""
    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if choice == "gpu" and not has_gpu:
        raise UserError("--device gpu was asked for, but this Paddle has no CUDA or no GPU is visible; "
                        "install paddlepaddle-gpu (see README.md) or use --device cpu.")
    device = "gpu" if choice == "gpu" or (choice == "auto" and has_gpu) else "cpu"
    if device == "gpu" and paddle.distributed.get_world_size() > 1:
        paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().device_id}")
    else:
        paddle.set_device(device)
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    paddle.seed(seed)


def random_noise(rng, count):
    """A batch of generator inputs drawn by a numpy Generator: uniform in [0, 1), as in the original repository."""
    return rng.random((count, Z_DIM), dtype=np.float32)


# ------------------------------------------------------------------------------ what users may ask for

SEED_LIMIT = 2**63  # every script and the studio take seeds 0 .. 2**63 - 1, what paddle.seed's int64 holds
SEED_RANGE = "a whole number from 0 to 2**63 - 1"
# The most a drawing script draws at once, so that a typo such as --grid 1000x1000 is refused at once instead
# of drawing for hours into gigabytes of memory; docs/generating.md has what each costs.
MAX_GRID_SIDE = 64   # rows or columns of a grid: at most 4,096 faces, a 6,144-pixel square picture
MAX_STEPS = 100      # faces in one interpolation strip or morph
MAX_COUNT = 10_000   # single avatars a run writes, avatar_0000.png to avatar_9999.png


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help that says each default once: argparse's "(default: X)" only where the help does not
    say the default itself, and never for a flag that is off or empty unless given."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


seed_number = Files.argument_type(int, lambda value: 0 <= value < SEED_LIMIT, SEED_RANGE)  # the --seed of every script


# ---------------------------------------------------------------------------------------- images

def to_uint8_images(images):
    """Generator output [N, 3, H, W] in [-1, 1] (tensor or array) -> uint8 [N, H, W, 3]."""
    if isinstance(images, paddle.Tensor):
        images = images.numpy()
    pixels = np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def sample_spread(images):
    """Per-pixel standard deviation across uint8 images, in grey levels, averaged over the pixels:
    about 65 for real faces, near 0 when G draws one picture for every noise vector (mode collapse)."""
    return float(images.astype(np.float32).std(axis=0).mean())


def tile_images(images, rows, cols):
    """uint8 [rows*cols, H, W, 3] -> one uint8 picture [rows*H, cols*W, 3], row by row, no margins."""
    count, height, width, channels = images.shape
    if count != rows * cols:
        raise ValueError(f"{count} images do not fill a {rows}x{cols} grid")
    grid = images.reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * height, cols * width, channels)


def save_png(picture, path):
    """Write a uint8 HxWx3 array as a PNG, atomically (the PIL encoder is deterministic, so the
    same pixels always give the same bytes)."""
    from PIL import Image

    Files.atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))


def gif_bytes(frames, frame_ms):
    """An endless animated GIF of uint8 frames [N, H, W, 3], each with a palette of its own colours."""
    from PIL import Image

    images = [Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.MEDIANCUT) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   optimize=True)
    return buffer.getvalue()


def save_loss_curve(losses, steps_per_epoch, path, axis_name):
    """The D and G losses of every batch (faint) and their moving average, as a PNG, the loss axis
    named axis_name (Recipe.loss_axis_name)."""
    plt = pyplot()
    d_loss = np.add(losses["d_fake"], losses["d_real"])
    g_loss = np.asarray(losses["g"])
    steps = np.arange(1, len(g_loss) + 1)
    window = max(1, len(g_loss) // 50)
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    for values, label, color in [(d_loss, "D loss (fake + real)", "tab:blue"), (g_loss, "G loss", "tab:orange")]:
        axes.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        axes.plot(steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid"), color=color,
                  label=label)
    axes.set_xlabel(f"batch ({steps_per_epoch} per epoch)")
    axes.set_ylabel(axis_name)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path)


def pyplot():
    """matplotlib.pyplot, drawing into files alone (no window, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path):
    """A matplotlib figure as a PNG at path, written atomically; the figure is closed either way."""
    try:
        Files.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        pyplot().close(figure)
