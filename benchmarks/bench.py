"""How fast the project trains, generates and reads data, against a PyTorch port of the same GAN.

    python benchmarks/bench.py                      # the full table (several minutes on 2 cores)
    python benchmarks/bench.py --threads 4 --json out.json
    python benchmarks/bench.py --batches 2 --steps 1 --gen-batch 2 --reader-limit 8   # smoke test

Measured in one run, all with the same thread count (default 2):
1. training throughput (real images/s) of Recipe.py's own train_step, at batch 16, 64 and 100;
2. the same for benchmarks/torch_dcgan.py (same networks, same schedule), its steps interleaved
   with Paddle's so that machine drift cancels in the ratio;
3. generator inference at batch 64: Paddle's dynamic graph, the path Run.py uses, and PyTorch;
4. Reader.py's loader throughput on --data (DataSet/faces) against what the training step consumes;
5. achieved GFLOP/s of the training step (FLOPs counted from the layer shapes) against the best
   single matrix multiply measured in the same run;
6. Run.py's cold start: wall time from process start to its first PNG on disk.

Each framework runs in its own worker process (this file run with --worker), and the two take
turns step by step. Separate processes keep Paddle's and PyTorch's OpenMP runtimes from spinning
against each other on the same cores. Without torch installed (pip install -r
benchmarks/requirements.txt) the PyTorch columns say "not installed".
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from Files import FACES_FOLDER  # noqa: E402  (no Paddle: the parent process only starts the workers)

# An idle OpenMP runtime keeps its threads spinning for up to 200 ms (Intel's KMP_BLOCKTIME) after
# its last parallel region; the other framework waits this long before it starts, so that it
# gets both cores to itself.
SETTLE_SECONDS = 0.3
NOT_INSTALLED = "not installed"


# ------------------------------------------------------------------------------------ the workers

class PaddleWorker:
    """The project's own code, timed: Recipe.train_step, Drawing.generate, Reader's loader."""

    def __init__(self, threads):
        sys.path.insert(0, str(ROOT))
        import Utils  # first: sets the CPU environment before Paddle loads

        import paddle

        import Checkpoint
        import Drawing
        self.paddle, self.Utils, self.Checkpoint, self.Drawing = paddle, Utils, Checkpoint, Drawing
        paddle.base.core.set_num_threads(threads)
        paddle.set_device("cpu")

    def info(self):
        import numpy as np
        return {"version": self.paddle.__version__, "numpy": np.__version__}

    def setup_train(self, batch, g_steps, d_input_bn):
        import Recipe
        from Net import Discriminator, Generator
        paddle = self.paddle
        paddle.seed(batch)
        G, D = Generator(), Discriminator(input_norm=d_input_bn)
        opt_g = paddle.optimizer.Adam(2e-4, beta1=0.8, parameters=G.parameters())
        opt_d = paddle.optimizer.Adam(2e-4, beta1=0.8, parameters=D.parameters())
        self.players, self.config = Recipe.Players(G, D, opt_g, opt_d), Recipe.StepConfig(g_steps=g_steps)
        self.real = paddle.rand([batch, 3, 96, 96]) * 2 - 1
        self.project_step = Recipe.train_step
        return {}

    def train_step(self):
        """One step as Train.py runs it, ending where Train.py waits for the losses."""
        started = time.perf_counter()
        step = self.project_step(self.players, self.real, self.config)
        losses = [float(step.d_fake), float(step.d_real), float(step.g)]  # the three the torch step returns
        return {"seconds": time.perf_counter() - started, "losses": losses}

    def generate(self, batch, repeats, path):
        """Images/s of a random generator at one batch, through Drawing.generate: "dygraph" is the
        plain eval-mode layer, "run" the generator Run.py loads (an exported inference model
        where that works)."""
        import numpy as np
        Utils, paddle, Checkpoint, Drawing = self.Utils, self.paddle, self.Checkpoint, self.Drawing
        model_dir = Path(tempfile.mkdtemp(prefix="bench-model-"))
        paddle.seed(0)
        from Net import Generator
        Checkpoint.save_weights(Generator(), model_dir / Checkpoint.GENERATOR_FILE)
        generator = (Checkpoint.load_generator(model_dir) if path == "dygraph"
                     else Drawing.load_generator_for_inference(model_dir))
        noise = Utils.random_noise(np.random.default_rng(0), batch)
        # the warm-up call of timings pays for first-call allocations and oneDNN primitives
        seconds = timings(lambda: Drawing.generate(generator, noise, batch_size=batch), repeats)
        shutil.rmtree(model_dir, ignore_errors=True)
        return {"seconds": seconds, "engine": type(generator).__name__}

    def matmul(self, size, repeats):
        paddle = self.paddle
        a, b = paddle.rand([size, size]), paddle.rand([size, size])
        float(paddle.matmul(a, b).sum())
        started = time.perf_counter()
        for _ in range(repeats):
            c = paddle.matmul(a, b)
        float(c[0, 0])
        return {"gflops": 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9}

    def flops(self):
        """FLOPs of one forward pass per image, counted from the layers' shapes."""
        import numpy as np
        import paddle.nn as nn

        from Net import Discriminator, Generator
        paddle = self.paddle
        total = [0]

        def count(layer, inputs, output):
            if isinstance(layer, nn.Conv2D):
                per_output = layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3]
                total[0] += 2 * per_output * int(np.prod(output.shape))
            elif isinstance(layer, nn.Conv2DTranspose):  # each input value meets a Cout x k x k kernel
                total[0] += 2 * int(np.prod(inputs[0].shape)) * int(np.prod(layer.weight.shape[1:]))
            elif isinstance(layer, nn.Linear):
                total[0] += 2 * int(np.prod(layer.weight.shape)) * output.shape[0]

        result = {}
        for name, model, example in [("G", Generator(), paddle.rand([1, 72])),
                                     ("D", Discriminator(), paddle.rand([1, 3, 96, 96]))]:
            model.eval()
            for layer in model.sublayers():
                layer.register_forward_post_hook(count)
            total[0] = 0
            with paddle.no_grad():
                model(example)
            result[name] = total[0]
        return result

    def reader(self, data, limit, batch):
        """Decode a folder with FaceDataset, then time one epoch of Train.py's loader."""
        from Reader import FaceDataset, make_loader
        started = time.perf_counter()
        dataset = FaceDataset(data, limit=limit)
        decode_seconds = time.perf_counter() - started
        loader = make_loader(dataset, batch, seed=0)
        loader.batch_sampler.set_epoch(1)
        started = time.perf_counter()
        images = sum(int(real.shape[0]) for real in loader)
        return {"images": len(dataset), "decode_seconds": decode_seconds,
                "loader_images_per_second": images / (time.perf_counter() - started)}

    def layer(self, transposed, cin, cout, size, batch, repeats):
        """Median seconds of one of the networks' convolutions, forward and backward (weights
        and input gradients), at the networks' kernel 4, stride 2, padding 1, built as Net.py
        builds that layer."""
        from Net import Discriminator, Generator
        paddle = self.paddle
        kind = "Conv2DTranspose" if transposed else "Conv2D"
        layer = next(layer for network in (Generator(), Discriminator()) for layer in network.sublayers()
                     if type(layer).__name__.endswith(kind) and layer.weight.shape[:2] in ([cin, cout], [cout, cin]))
        x = paddle.rand([batch, cin, size, size])
        x.stop_gradient = False

        def run():
            layer(x).sum().backward()
            layer.clear_gradients()
            x.clear_gradient()
        return {"seconds": statistics.median(timings(run, repeats))}

    def save_generator(self, model_dir):
        from Net import Generator
        self.paddle.seed(0)
        self.Checkpoint.save_weights(Generator(), Path(model_dir) / self.Checkpoint.GENERATOR_FILE)
        return {}


class TorchWorker:
    """benchmarks/torch_dcgan.py, timed the same way."""

    def __init__(self, threads):
        import torch
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import torch_dcgan
        self.torch, self.dcgan = torch, torch_dcgan
        torch.set_num_threads(threads)

    def info(self):
        return {"version": self.torch.__version__}

    def setup_train(self, batch, g_steps, d_input_bn):
        torch = self.torch
        torch.manual_seed(batch)
        self.G, self.D, self.opt_g, self.opt_d = self.dcgan.make_training(input_norm=d_input_bn)
        self.g_steps = g_steps
        self.real = torch.rand(batch, 3, 96, 96) * 2 - 1
        return {}

    def train_step(self):
        started = time.perf_counter()
        losses = self.dcgan.train_step(self.G, self.D, self.opt_g, self.opt_d, self.real, self.g_steps)
        return {"seconds": time.perf_counter() - started, "losses": list(losses)}

    def generate(self, batch, repeats, path):
        torch = self.torch
        generator = self.dcgan.Generator().eval()
        noise = torch.rand(batch, 72)

        def run():  # the same work as Drawing.generate: forward pass, then uint8 NHWC pixels
            with torch.inference_mode():
                images = generator(noise)
            return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

        return {"seconds": timings(run, repeats), "engine": "eager"}

    def layer(self, transposed, cin, cout, size, batch, repeats):
        torch = self.torch
        layer = (torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d)(cin, cout, 4, stride=2, padding=1)
        x = torch.rand(batch, cin, size, size, requires_grad=True)

        def run():
            layer(x).sum().backward()
            layer.zero_grad()
            x.grad = None
        return {"seconds": statistics.median(timings(run, repeats))}

    def matmul(self, size, repeats):
        torch = self.torch
        a, b = torch.rand(size, size), torch.rand(size, size)
        torch.matmul(a, b)
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        return {"gflops": 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9}


def timings(run, repeats):
    """Seconds of each of repeats calls of run(), after one warm-up call."""
    run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return seconds


def serve(kind, threads):
    """Worker side: one JSON command per line on stdin, one JSON answer per line on stdout,
    marked so that anything a library prints on stdout is not mistaken for an answer."""
    try:
        worker = (PaddleWorker if kind == "paddle" else TorchWorker)(threads)
    except ImportError as error:
        print("@@" + json.dumps({"error": f"{NOT_INSTALLED} ({error})"}), flush=True)
        return
    print("@@" + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        answer = getattr(worker, command.pop("op"))(**command)
        print("@@" + json.dumps(answer), flush=True)


class Worker:
    """Parent side of one worker process. A worker that could not start answers None."""

    def __init__(self, kind, threads):
        self.kind = kind
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--threads", str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        hello = self._read()
        self.error = hello.get("error")
        if self.error:
            self.process.wait()

    def _read(self):
        for line in self.process.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"the {self.kind} worker exited with status {self.process.wait()}; see its stderr above")

    def __call__(self, op, **arguments):
        if self.error:
            return None
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        if not self.error:
            self.process.stdin.close()
            self.process.wait()


# ------------------------------------------------------------------------------------ the parent

def interleaved_training(paddle, torch, batch, steps, schedule):
    """Seconds per step of both frameworks at one batch size, the steps taken in turns.
    schedule: {"g_steps": ..., "d_input_bn": ...}, the training recipe's two flags that change
    the work of a step."""
    paddle("setup_train", batch=batch, **schedule)
    torch("setup_train", batch=batch, **schedule)
    times, losses = {"paddle": [], "torch": []}, {"paddle": None, "torch": None}
    for step in range(steps + 1):  # the first step of each is a warm-up, not counted
        for name, worker in (("paddle", paddle), ("torch", torch)):
            answer = worker("train_step")
            if answer is None:
                continue
            if step > 0:
                times[name].append(answer["seconds"])
            losses[name] = answer["losses"]
            time.sleep(SETTLE_SECONDS)
    return {name: statistics.median(values) if values else None for name, values in times.items()}, losses


def cold_start(model_dir, output, cache):
    """Seconds from launching Run.py to its first PNG (avatars.png) existing; Run.py writes it
    atomically, so a file that exists is complete."""
    first_png = output / "avatars.png"
    environment = dict(os.environ, XDG_CACHE_HOME=str(cache))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "Run.py", "--model-dir", str(model_dir), "--output", str(output),
                                "--seed", "1", "--dims", "0"], cwd=ROOT, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not first_png.exists() and process.poll() is None:
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    _, errors = process.communicate()
    if not first_png.exists():
        raise RuntimeError(f"Run.py wrote no PNG (exit status {process.returncode}):\n{errors}")
    return seconds


def ratio(a, b):
    return a / b if a and b else None


def fmt(value, digits=1):
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.{digits}f}"


def measure(args):
    """Every measurement of the table, from one Paddle and one PyTorch worker process."""
    threads = args.threads
    paddle, torch = Worker("paddle", threads), Worker("torch", threads)
    if paddle.error:
        raise SystemExit(f"the Paddle worker did not start: {paddle.error}")
    results = {"threads": threads, "cpu_count": os.cpu_count(), "paddle": paddle("info"),
               "torch": torch("info") or NOT_INSTALLED}
    try:
        results["training"] = training_speeds(paddle, torch, args)
        results["generation"] = generation_speeds(paddle, torch, args)
        results["flops"] = flop_rates(paddle, torch, args, results["training"])
        results["reader"] = reader_speed(paddle, args, results["training"])
        results["run_cold_start_seconds"] = run_py_cold_starts(paddle)
    finally:
        paddle.close()
        torch.close()
    return results


def training_speeds(paddle, torch, args):
    """Per batch size: both frameworks' training steps, in real images per second and seconds per
    step, their ratio, and each one's last losses."""
    rows = {}
    for batch in args.batches:
        seconds, losses = interleaved_training(paddle, torch, batch, args.steps,
                                               {"g_steps": args.g_steps, "d_input_bn": args.d_input_bn})
        paddle_rate = batch / seconds["paddle"]
        torch_rate = batch / seconds["torch"] if seconds["torch"] else None
        rows[batch] = {"paddle_images_per_second": paddle_rate,
                       "torch_images_per_second": torch_rate,
                       "paddle_seconds_per_step": seconds["paddle"],
                       "torch_seconds_per_step": seconds["torch"],
                       "ratio": ratio(paddle_rate, torch_rate),
                       "paddle_losses": losses["paddle"], "torch_losses": losses["torch"]}
    return rows


def generation_speeds(paddle, torch, args):
    """Generator inference in images per second: Paddle's dynamic graph, the path Run.py uses, and
    PyTorch; each Paddle path also as a ratio to PyTorch."""
    generation = {}
    for name, worker, path in (("paddle_dygraph", paddle, "dygraph"), ("paddle_run_py", paddle, "run"),
                               ("torch", torch, None)):
        answer = worker("generate", batch=args.gen_batch, repeats=args.gen_repeats, path=path)
        generation[name] = (None if answer is None else
                            {"images_per_second": args.gen_batch / statistics.median(answer["seconds"]),
                             "engine": answer["engine"]})
        time.sleep(SETTLE_SECONDS)
    torch_gen = generation["torch"]["images_per_second"] if generation["torch"] else None
    for name in ("paddle_dygraph", "paddle_run_py"):
        generation[name]["ratio"] = ratio(generation[name]["images_per_second"], torch_gen)
    return generation


def flop_rates(paddle, torch, args, training):
    """The networks' GFLOP per forward and per real image trained, the best matmul GFLOP/s of
    either framework, and the GFLOP/s each training row reached."""
    flops = paddle("flops")
    # Per real image: one no-grad G pass makes the fakes; each D update is a forward and a
    # backward (weights and inputs, about twice the forward); each G update is a G forward, a
    # D forward, D's backward to its input only (D is frozen) and G's full backward.
    per_image = (1 + 3 * args.g_steps) * flops["G"] + (6 + 2 * args.g_steps) * flops["D"]
    best_matmul = max(answer["gflops"] for worker in (paddle, torch) for size in args.matmul_sizes
                      if (answer := worker("matmul", size=size, repeats=args.matmul_repeats)) is not None)
    return {"generator_forward_gflop": flops["G"] / 1e9,
            "discriminator_forward_gflop": flops["D"] / 1e9,
            "training_gflop_per_real_image": per_image / 1e9, "best_matmul_gflops": best_matmul,
            "training_gflops": {batch: {
                "paddle": row["paddle_images_per_second"] * per_image / 1e9,
                "torch": row["torch_images_per_second"] * per_image / 1e9
                if row["torch_images_per_second"] else None}
                for batch, row in training.items()}}


def reader_speed(paddle, args, training):
    """Reader.py's loader in images per second, against the fastest training row's appetite; or
    why it was not measured."""
    if not args.data.is_dir():
        return f"{args.data} is absent"
    reader = paddle("reader", data=str(args.data), limit=args.reader_limit, batch=args.reader_batch)
    consumed = max(row["paddle_images_per_second"] for row in training.values())
    reader["training_images_per_second"] = consumed
    reader["ratio"] = reader["loader_images_per_second"] / consumed
    return reader


def run_py_cold_starts(paddle):
    """Seconds from launching Run.py to its first PNG, with an empty export cache and a filled one,
    for a generator the Paddle worker saves."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        paddle("save_generator", model_dir=str(scratch / "Model"))
        return {"first_run": cold_start(scratch / "Model", scratch / "out1", scratch / "cache"),
                "cached": cold_start(scratch / "Model", scratch / "out2", scratch / "cache")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def table(results):
    torch_version = results["torch"] if isinstance(results["torch"], str) else results["torch"]["version"]
    lines = [f"Paddle {results['paddle']['version']}, PyTorch {torch_version}, {results['threads']} threads "
             f"({results['cpu_count']} CPUs visible)", "",
             "| measurement | Paddle | PyTorch | Paddle / PyTorch |", "|---|---:|---:|---:|"]
    for batch, row in results["training"].items():
        lines.append(f"| training, batch {batch} (real images/s) | {fmt(row['paddle_images_per_second'], 2)} | "
                     f"{fmt(row['torch_images_per_second'] or NOT_INSTALLED, 2)} | {fmt(row['ratio'], 2)}x |")
    generation = results["generation"]
    torch_gen = generation["torch"]["images_per_second"] if generation["torch"] else NOT_INSTALLED
    for name, label in (("paddle_dygraph", "dynamic graph"), ("paddle_run_py", "Run.py path")):
        row = generation[name]
        lines.append(f"| generation, {label} ({row['engine']}), images/s | {fmt(row['images_per_second'])} | "
                     f"{fmt(torch_gen)} | {fmt(row['ratio'], 2)}x |")
    flops = results["flops"]
    for batch, row in flops["training_gflops"].items():
        lines.append(f"| training GFLOP/s, batch {batch} | {fmt(row['paddle'])} | "
                     f"{fmt(row['torch'] or NOT_INSTALLED)} | {fmt(ratio(row['paddle'], row['torch']), 2)}x |")
    lines.append(f"| best single matmul GFLOP/s | {fmt(flops['best_matmul_gflops'])} | | |")
    reader = results["reader"]
    if isinstance(reader, dict):
        lines.append(f"| Reader.py loader, images/s ({reader['images']} faces decoded in "
                     f"{reader['decode_seconds']:.1f} s) | {fmt(reader['loader_images_per_second'])} | | "
                     f"{fmt(reader['ratio'])}x the step's {fmt(reader['training_images_per_second'], 2)} images/s |")
    else:
        lines.append(f"| Reader.py loader | {reader} | | |")
    cold = results["run_cold_start_seconds"]
    lines.append(f"| Run.py cold start to first PNG, s | {fmt(cold['first_run'], 2)} (first run), "
                 f"{fmt(cold['cached'], 2)} (cached) | | |")
    lines.append("")
    lines.append(f"FLOPs counted from the layer shapes: G forward {flops['generator_forward_gflop']:.3f} GFLOP, "
                 f"D forward {flops['discriminator_forward_gflop']:.3f} GFLOP, one training step "
                 f"{flops['training_gflop_per_real_image']:.2f} GFLOP per real image.")
    return "\n".join(lines)


def sizes(text):
    """An argparse type: "16,64,100" -> [16, 64, 100]."""
    return [int(value) for value in text.split(",")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = " (default %(default)s)"
    parser.add_argument("--threads", type=int, default=2, help="threads of each framework" + default)
    parser.add_argument("--batches", type=sizes, default=[16, 64, 100],
                        help="training batch sizes, comma-separated (default 16,64,100)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per framework and batch size "
                        "(after one warm-up step); the median is reported" + default)
    parser.add_argument("--gen-batch", type=int, default=64, help="generation batch size" + default)
    parser.add_argument("--gen-repeats", type=int, default=5, help="timed generation batches per path" + default)
    parser.add_argument("--matmul-sizes", type=sizes, default=[1024, 2048],
                        help="square matmul sizes tried (default 1024,2048)")
    parser.add_argument("--matmul-repeats", type=int, default=5, help="timed matmuls per size" + default)
    parser.add_argument("--data", type=Path, default=ROOT / FACES_FOLDER,
                        help=f"face folder for the Reader measurement (default {FACES_FOLDER})")
    parser.add_argument("--reader-limit", type=int, help="decode only the first N faces (default: all)")
    parser.add_argument("--reader-batch", type=int, default=64, help="loader batch size" + default)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results.json",
                        help="where to write the results (default benchmarks/results.json)")
    parser.add_argument("--g-steps", type=int, default=2, help="G updates per batch in the training rows: 2 as "
                        "the original repository, 1 as the shipped recipe" + default)
    parser.add_argument("--d-input-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="BatchNorm on D's input in the training rows (default: on; the shipped recipe: "
                             "--no-d-input-bn)")
    parser.add_argument("--layers", action="store_true",
                        help="only the per-layer table: each convolution forward and backward, both frameworks")
    parser.add_argument("--layer-batch", type=int, default=64, help="batch of the per-layer table" + default)
    parser.add_argument("--worker", choices=["paddle", "torch"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# The networks' stride-2 convolutions: (name, transposed, in channels, out channels, input side).
LAYERS = [("D conv 3->64, 96 px", False, 3, 64, 96), ("D conv 64->128, 48 px", False, 64, 128, 48),
          ("D conv 128->256, 24 px", False, 128, 256, 24), ("D conv 256->512, 12 px", False, 256, 512, 12),
          ("G convT 256->256, 6 px", True, 256, 256, 6), ("G convT 256->128, 12 px", True, 256, 128, 12),
          ("G convT 128->64, 24 px", True, 128, 64, 24), ("G convT 64->3, 48 px", True, 64, 3, 48)]


def layer_table(args):
    """Each convolution forward and backward in both frameworks, taking turns layer by layer."""
    workers = {name: Worker(name, args.threads) for name in ("paddle", "torch")}
    lines = [f"| layer, batch {args.layer_batch} | Paddle ms | PyTorch ms | Paddle / PyTorch speed |",
             "|---|---:|---:|---:|"]
    for name, transposed, cin, cout, size in LAYERS:
        ms = {}
        for framework, worker in workers.items():
            answer = worker("layer", transposed=transposed, cin=cin, cout=cout, size=size, batch=args.layer_batch,
                            repeats=args.steps)
            ms[framework] = answer["seconds"] * 1e3 if answer else None
            time.sleep(SETTLE_SECONDS)
        lines.append(f"| {name} | {fmt(ms['paddle'], 0)} | {fmt(ms['torch'] or NOT_INSTALLED, 0)} | "
                     f"{fmt(ratio(ms['torch'], ms['paddle']), 2)}x |")
    for worker in workers.values():
        worker.close()
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return serve(args.worker, args.threads)
    if args.layers:
        return print(layer_table(args))
    results = measure(args)
    results["table"] = table(results)
    print(results["table"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
