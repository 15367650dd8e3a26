"""Drawing with a trained generator: the fast CPU generator (exported once, cached, run by oneDNN),
`generate` for faces in batches, interpolation strips, and the hair measures that name the latent
dimensions. Run.py, Figures.py, Metrics.py, Studio.py and Train.py's sample grids draw through it.
"""
import Utils  # sets up the CPU for Paddle, so it comes first (pyproject.toml keeps it there)

import hashlib
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import paddle
from matplotlib.colors import rgb_to_hsv

import Files
from Checkpoint import generator_file, load_generator
from Net import IMAGE_SIZE, Z_DIM

EXPORT_TOLERANCE = 1e-4  # largest pixel difference (on [-1, 1]) allowed between the two engines
CACHED_EXPORTS = 4  # exported generators the inference cache keeps, the most recently used (about 9 MB each)
ABANDONED_EXPORT_SECONDS = 3600  # a half-written export this old was left by a killed process
STRIP_STEPS = 20    # 0.05, 0.10, ..., 1.00, as the original's strips
MEASURE_BASES = 16  # base vectors averaged over when measuring a dimension
AVATARS = 64        # Figures.py's avatars.png, 8x8, drawn first from its seed; the hair is measured after it


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

        config = inference.Config(str(program_file(prefix)), f"{prefix}.pdiparams")
        config.disable_gpu()
        config.enable_mkldnn()
        config.set_cpu_math_library_num_threads(Utils.cpu_threads())
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


def prune_exports(keep=CACHED_EXPORTS):
    """Keep the inference cache small: remove all but the `keep` most recently used exported
    generators, and the half-written exports that killed processes left over an hour ago."""
    cache = inference_cache()
    Files.keep_most_recent([path for path in cache.glob("[!.]*-paddle*") if path.is_dir()], keep)
    for staging in cache.glob(".*.tmp*"):
        try:
            abandoned = time.time() - staging.stat().st_mtime > ABANDONED_EXPORT_SECONDS
        except OSError:  # its export just finished, or another process removed it
            continue
        if abandoned:
            shutil.rmtree(staging, ignore_errors=True)


def save_static(generator, prefix):
    """Save generator (in evaluation mode) as a static program, prefix.json (or .pdmodel) and
    prefix.pdiparams, taking noise [N, 72]: what Paddle's inference engine and paddle2onnx read.
    Returns the program's path."""
    from paddle.static import InputSpec

    paddle.jit.save(generator, str(prefix), input_spec=[InputSpec([None, Z_DIM], "float32", "noise")])
    return program_file(prefix)


def program_file(prefix):
    """The program paddle.jit.save wrote at prefix: Paddle 3's new format, or Paddle 2's .pdmodel."""
    program = Path(f"{prefix}.json")
    return program if program.exists() else Path(f"{prefix}.pdmodel")


def export_generator(generator, folder):
    """Save generator (in evaluation mode) as an inference model in folder, then check that the
    inference engine draws what the dynamic graph draws; write nothing if it does not. The folder
    appears whole or not at all, so two processes exporting at once do no harm."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_static(generator, staging / "generator")
        noise = Utils.random_noise(np.random.default_rng(0), 4)
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
            Files.mark_used(folder)
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

    batches = (noise[start:start + batch_size] for start in range(0, len(noise), batch_size))
    pictures = [Utils.to_uint8_images(draw(batch)) for batch in batches]
    return np.concatenate(pictures) if pictures else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)


# ------------------------------------------------------------------------------- latent space

def interpolation_strips(base, dims, steps):
    """Noise [len(dims) * steps, 72]: for each dimension, `steps` copies of base with that value
    set to 1/steps ... 1."""
    values = np.arange(1, steps + 1, dtype=np.float32) / steps
    noise = np.repeat(base[None, :], len(dims) * steps, axis=0)
    for row, dim in enumerate(dims):
        noise[row * steps:(row + 1) * steps, dim] = values
    return noise


def hair_mask(size=IMAGE_SIZE):
    """Where the hair usually is in the crops: the top 30% of the picture (fringe and crown) and
    the outer eighth on each side down to two thirds of the height (hair falling beside the face)."""
    mask = np.zeros((size, size), bool)
    mask[:int(size * 0.3)] = True
    side = size // 8
    mask[:int(size * 2 / 3), :side] = True
    mask[:int(size * 2 / 3), -side:] = True
    return mask


def hair_colour(images, mask):
    """Mean brightness (HSV value, 0..1) and mean chroma of the hair region: a 2-vector whose angle
    is the hue and whose length is how colourful the hair is (grey hair has no reliable hue)."""
    hsv = rgb_to_hsv(images[:, mask].astype(np.float32) / 255)  # [N, pixels, 3]
    angle = 2 * np.pi * hsv[..., 0]
    weight = hsv[..., 1] * hsv[..., 2]
    chroma = np.stack([(weight * np.cos(angle)).mean(1), (weight * np.sin(angle)).mean(1)], axis=1)
    return hsv[..., 2].mean(1), chroma


def measuring_rng(seed):
    """The random numbers measure_hair starts from in `Figures.py --seed seed`: those after the
    noise of its avatars.png. Studio.py measures from here too, so that it names the dimensions the
    README's pictures show."""
    rng = np.random.default_rng(seed)
    Utils.random_noise(rng, AVATARS)
    return rng


def dimension_ends(generator, base):
    """Images [72, 2, bases, 96, 96, 3]: each base vector with each dimension set to the strips'
    first value, 0.05, and to their last, 1.00."""
    noise = np.repeat(base[None], 2 * Z_DIM, axis=0)  # [72 * 2, bases, 72]: each dimension at both ends
    for dim in range(Z_DIM):
        noise[2 * dim, :, dim], noise[2 * dim + 1, :, dim] = 1 / STRIP_STEPS, 1.0
    images = generate(generator, noise.reshape(-1, Z_DIM))
    return images.reshape(Z_DIM, 2, len(base), *images.shape[1:])


def measure_hair(generator, rng, bases=MEASURE_BASES):
    """For each of the 72 dimensions, how much the hair's brightness and hue change between the
    value 0.05 and 1.00, averaged over `bases` random base vectors (see hair_changes)."""
    return hair_changes(dimension_ends(generator, Utils.random_noise(rng, bases)))


def hair_changes(ends):
    """The hair's brightness and hue change of each dimension, from dimension_ends' images. The
    hue change is the angle between the two ends' mean chroma, weighted by the smaller chroma, so
    that a dimension scores only when it turns one clear colour into another."""
    bases = ends.shape[2]
    brightness, chroma = hair_colour(ends.reshape(-1, *ends.shape[3:]), hair_mask())
    brightness, chroma = brightness.reshape(Z_DIM, 2, bases), chroma.reshape(Z_DIM, 2, bases, 2)
    shade = np.abs(brightness[:, 1] - brightness[:, 0]).mean(1)
    start, end = chroma[:, 0], chroma[:, 1]
    cosine = (start * end).sum(-1) / np.maximum(np.linalg.norm(start, axis=-1) * np.linalg.norm(end, axis=-1), 1e-8)
    angle = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
    strength = np.minimum(np.linalg.norm(start, axis=-1), np.linalg.norm(end, axis=-1))
    hue = (angle * strength).mean(1)
    return shade, hue


def hair_dimensions(shade, hue):
    """The dimension that most changes the hair's shade, and another that most changes its colour."""
    shade_dim = int(shade.argmax())
    return shade_dim, int(np.where(np.arange(Z_DIM) == shade_dim, -np.inf, hue).argmax())
