"""What the scripts share: the process's CPU set-up, device choice, seeding, noise, image grids,
weight files, fast generation and the one-sentence error a user sees instead of a traceback.

Importing this module sets up the process for Paddle's CPU kernels (`set_up_cpu`). Paddle's
libraries read those settings once, when they load, so every script imports Utils before
anything that imports Paddle; the import order in pyproject.toml (its "process-setup" section)
keeps `import Utils` first, and `ruff check` in CI fails if it moves.
"""
import argparse
import ctypes
import hashlib
import os
import platform
import random
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
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
from safetensors import SafetensorError, safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

import Files  # noqa: E402
from Files import UserError  # noqa: E402,F401  (the scripts raise it as Utils.UserError)
from Net import IMAGE_SIZE, Z_DIM, Generator  # noqa: E402

GENERATOR_FILE = "G.safetensors"
AVERAGED_GENERATOR_FILE = "G_ema.safetensors"  # Train.py --ema's moving average of G
EXPORT_TOLERANCE = 1e-4  # largest pixel difference (on [-1, 1]) allowed between the two engines
CACHED_EXPORTS = 4  # exported generators the inference cache keeps, the most recently used (about 9 MB each)
ABANDONED_EXPORT_SECONDS = 3600  # a half-written export this old was left by a killed process


def _use_all_cores():
    # Paddle's CPU build computes on one thread unless told otherwise. Setting OMP_NUM_THREADS
    # would do it too, but makes Paddle print a warning about data parallelism at every start.
    if not _USER_SET_THREADS and hasattr(paddle.base.core, "set_num_threads"):
        paddle.base.core.set_num_threads(cpu_threads())


_use_all_cores()


def run_main(main):
    """Run a script's main(); a UserError ends the program with its message and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


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
    """A batch of generator inputs drawn by a numpy Generator: uniform in [0, 1), as the brief says."""
    return rng.random((count, Z_DIM), dtype=np.float32)


# ------------------------------------------------------------------------------ what users may ask for

SEED_LIMIT = 2**63  # every script and the studio take seeds 0 .. 2**63 - 1, what paddle.seed's int64 holds
SEED_RANGE = "a whole number from 0 to 2**63 - 1"
# The most a drawing script draws at once, so that a typo such as --grid 1000x1000 is refused at once instead
# of drawing for hours into gigabytes of memory; README.md ("Generating avatars") has what each costs.
MAX_GRID_SIDE = 64   # rows or columns of a grid: at most 4,096 faces, a 6,144-pixel square picture
MAX_STEPS = 100      # faces in one interpolation strip or morph
MAX_COUNT = 10_000   # single avatars a run writes, avatar_0000.png to avatar_9999.png


def argument_type(kind, accept, wanted):
    """An argparse type: text -> kind(text), refused in one sentence, "'<text>' is not <wanted>",
    unless accept(value)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value
    return parse


def whole_number(least, most, wanted):
    """An argparse type: text -> an int from least to most, else refused as argument_type says."""
    return argument_type(int, lambda value: least <= value <= most, wanted)


seed_number = whole_number(0, SEED_LIMIT - 1, SEED_RANGE)  # the --seed of every script


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


def save_loss_curve(losses, steps_per_epoch, path):
    """The D and G losses of every batch (faint) and their moving average, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    axes.set_ylabel("softmax cross entropy")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    Files.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


# ----------------------------------------------------------------------------------- checkpoints

def save_weights(layer, path, metadata=None):
    """Weights and BatchNorm statistics of a layer as safetensors: plain arrays, no pickle, readable
    by any Paddle version (and by numpy alone)."""
    arrays = {name: np.ascontiguousarray(value.numpy()) for name, value in layer.state_dict().items()}
    meta = {key: str(value) for key, value in (metadata or {}).items()}
    Files.atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


def load_weights(layer, path):
    """Load a safetensors file written by save_weights into layer, checking every name and shape.
    Returns the file's metadata (Train.py stamps each file with its checkpoint's step)."""
    path = Path(path)
    try:
        with safe_open(str(path), "np") as weights:
            metadata = weights.metadata() or {}
            arrays = {name: weights.get_tensor(name) for name in weights.keys()}
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; train a model with `python Train.py` first "
                        f"or point --model-dir at a folder that holds {path.name}.") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error}): it is damaged or was never "
                        f"one. Put back a good copy of it, or use another --model-dir.") from None
    expected = layer.state_dict()
    wrong = sorted(set(expected) ^ set(arrays))
    wrong += [name for name in expected if name in arrays and list(arrays[name].shape) != list(expected[name].shape)]
    if wrong:
        raise UserError(f"{path} holds weights of another network (first mismatch: {wrong[0]}); "
                        f"it was not written by this version of Net.py, so train a new model.")
    layer.set_state_dict({name: paddle.to_tensor(array) for name, array in arrays.items()})
    return metadata


def generator_file(model_dir, raw_g=False):
    """The weights the scripts draw with: G_ema.safetensors where model_dir has it (the moving
    average of G's weights that Train.py --ema keeps, free of the swings of G's latest update),
    else G.safetensors; with raw_g, G.safetensors, the trained G itself, in any case."""
    averaged = Path(model_dir) / AVERAGED_GENERATOR_FILE
    return averaged if averaged.exists() and not raw_g else Path(model_dir) / GENERATOR_FILE


def load_generator(model_dir, raw_g=False):
    """The generator of model_dir (see generator_file), in evaluation mode (BatchNorm uses its
    running statistics)."""
    path = generator_file(model_dir, raw_g)
    if raw_g and not path.exists() and (Path(model_dir) / AVERAGED_GENERATOR_FILE).exists():
        raise UserError(f"{path} does not exist, so --raw-g has nothing to draw with; leave --raw-g out to draw "
                        f"with {AVERAGED_GENERATOR_FILE}, the averaged generator beside it.")
    generator = Generator()
    load_weights(generator, path)
    generator.eval()
    return generator


def add_generator_flags(parser):
    """--model-dir and --raw-g, which say the weights that draw: Run.py's, and Studio.py's too."""
    parser.add_argument("--model-dir", default="Model", help="folder holding G.safetensors (and G_ema.safetensors)")
    parser.add_argument("--raw-g", action="store_true",
                        help="draw with G.safetensors even where the averaged G_ema.safetensors is there")


def drawn_with(model_dir, raw_g):
    """Which weights draw the pictures, in words: G_ema's are not the trained G's, and a user
    comparing folders needs to know which they saw. It points to --raw-g only where the folder
    has the G.safetensors that --raw-g draws with."""
    path = generator_file(model_dir, raw_g)
    if path.name != AVERAGED_GENERATOR_FILE:
        return f"{path}, the trained generator"
    if (Path(model_dir) / GENERATOR_FILE).exists():
        return f"{path}, the averaged generator (--raw-g draws with {GENERATOR_FILE})"
    return f"{path}, the averaged generator"


# ---------------------------------------------------------------------------- fast generation

class ExportedGenerator:
    """A generator exported with paddle.jit.save and run by paddle.inference with oneDNN.

    On CPU this draws more than twice the images/s of the dynamic graph (benchmarks/README.md):
    Paddle's dynamic graph computes convolutions as im2col + GEMM, while the inference engine runs
    them, with their bias, BatchNorm and activation fused, as oneDNN primitives. Call it with a
    numpy noise batch [N, 72]; it returns images [N, 3, 96, 96].

    Every call runs on one thread of its own, whichever thread makes it: Paddle keeps oneDNN's
    primitives and reordered weights per calling thread (tens of MB each), so a server drawing on
    each of its many worker threads held a copy per thread, and a predictor must not run on two
    threads at once."""

    def __init__(self, prefix):
        from paddle import inference

        program = Path(f"{prefix}.json")  # Paddle 3 saves its new program format; Paddle 2 a .pdmodel
        config = inference.Config(str(program if program.exists() else Path(f"{prefix}.pdmodel")),
                                  f"{prefix}.pdiparams")
        config.disable_gpu()
        config.enable_mkldnn()
        config.set_cpu_math_library_num_threads(cpu_threads())
        config.disable_glog_info()
        self.predictor = inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="exported-generator")

    def __call__(self, noise):
        return self.thread.submit(self._run, noise).result()

    def _run(self, noise):
        self.input.reshape(list(noise.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(noise, dtype=np.float32))
        self.predictor.run()
        return self.output.copy_to_cpu()


def file_digest(path):
    """The first 16 hex digits of a file's sha256: what the caches of a weights file are named by."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def inference_cache():
    """Where exported generators are kept: $XDG_CACHE_HOME (or ~/.cache)/avatar-generator, outside
    the model folder, which may be read-only or shared."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "avatar-generator"


def mark_used(path):
    """Set path's modification time to now: the cache keeps what was used last (keep_most_recent)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a cache this process may not write keeps its order; the entry is still usable


def keep_most_recent(paths, keep):
    """Remove all but the `keep` most recently used (modified) of paths, folders or files. Two
    processes pruning the same cache at once do no harm."""
    def last_used(path):
        try:
            return path.stat().st_mtime
        except OSError:  # just removed by another process
            return 0.0

    for path in sorted(paths, key=last_used, reverse=True)[keep:]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def prune_exports(keep=CACHED_EXPORTS):
    """Keep the inference cache small: remove all but the `keep` most recently used exported
    generators, and the half-written exports that killed processes left over an hour ago."""
    cache = inference_cache()
    keep_most_recent([path for path in cache.glob("[!.]*-paddle*") if path.is_dir()], keep)
    for staging in cache.glob(".*.tmp*"):
        try:
            abandoned = time.time() - staging.stat().st_mtime > ABANDONED_EXPORT_SECONDS
        except OSError:  # its export just finished, or another process removed it
            continue
        if abandoned:
            shutil.rmtree(staging, ignore_errors=True)


def export_generator(generator, folder):
    """Save generator (in evaluation mode) as an inference model in folder, then check that the
    inference engine draws what the dynamic graph draws; write nothing if it does not. The folder
    appears whole or not at all, so two processes exporting at once do no harm."""
    from paddle.static import InputSpec

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        noise_spec = InputSpec([None, Z_DIM], "float32", "noise")
        paddle.jit.save(generator, str(staging / "generator"), input_spec=[noise_spec])
        noise = random_noise(np.random.default_rng(0), 4)
        with paddle.no_grad():
            expected = generator(paddle.to_tensor(noise)).numpy()
        difference = float(np.abs(ExportedGenerator(staging / "generator")(noise) - expected).max())
        if not difference <= EXPORT_TOLERANCE:
            raise ValueError(f"the exported generator differs from the dynamic graph by {difference:.2g}")
        try:
            os.rename(staging, folder)
        except OSError:  # another process got there first; its export is as good as this one
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "generator"


def load_generator_for_inference(model_dir, raw_g=False):
    """The fastest generator for this machine: on CPU, load_generator's generator exported once
    to the inference cache (keyed by the sha256 of the weights file it loads and Paddle's version,
    the CACHED_EXPORTS most recently used kept) and run by oneDNN; on a GPU, or if exporting fails
    for any reason, the dynamic graph."""
    generator = load_generator(model_dir, raw_g)  # checks the file and says what is wrong, in one sentence
    if paddle.device.get_device() != "cpu":
        return generator
    try:
        folder = inference_cache() / f"{file_digest(generator_file(model_dir, raw_g))}-paddle{paddle.__version__}"
        prefix = folder / "generator"
        if Path(f"{prefix}.pdiparams").exists():
            mark_used(folder)
        else:
            prefix = export_generator(generator, folder)
            prune_exports()
        return ExportedGenerator(prefix)
    except Exception as error:  # noqa: BLE001  any failure only costs speed
        warnings.warn(f"the fast CPU generator is unavailable ({type(error).__name__}: {error}); "
                      f"using the dynamic graph, which draws the same pictures more slowly.", stacklevel=2)
        return generator


@paddle.no_grad()
def generate(generator, noise, batch_size=64):
    """uint8 images [N, 96, 96, 3] for a numpy noise array [N, 72], in batches. generator is a
    Generator layer or an ExportedGenerator."""
    def draw(batch):
        return generator(batch) if isinstance(generator, ExportedGenerator) else generator(paddle.to_tensor(batch))

    pictures = [to_uint8_images(draw(noise[start:start + batch_size])) for start in range(0, len(noise), batch_size)]
    return np.concatenate(pictures) if pictures else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
