"""Train the avatar DCGAN on a folder of 96x96 faces, checkpointing to Model/ and resuming from it.

One process, GPU if there is one, else CPU:
    python Train.py --data DataSet/faces
Several GPUs on one machine (one process per GPU, each trains on its own share of every epoch,
gradients averaged by DataParallel; --batch-size is per process, so 2 GPUs x 50 make the brief's
100; only rank 0 writes files):
    python -m paddle.distributed.launch --gpus 0,1 Train.py --data DataSet/faces --batch-size 50
Run it again with the same --model-dir and it continues where it stopped (--fresh starts over).
Checkpoints go to --model-dir every epoch and on Ctrl-C/SIGTERM; sample grids and the loss curve
to --output.

Per batch, as the original (../shared/REFERENCE.md section 1): one discriminator update on a batch
of generated faces alone (label 0), one on the real batch alone (label 1), then --g-steps generator
updates, each on fresh noise, with label 1. Loss: softmax cross entropy over D's two logits.

Every step draws its randomness (noise, dropout) from a seed derived from (--seed, step) and
every epoch's order from (--seed, epoch), so a resumed run goes on exactly as one that never
stopped.
"""
import argparse
import contextlib
import json
import math
import platform
import secrets
import signal
import sys
import time
from pathlib import Path

import Utils  # first: sets the CPU environment before Paddle loads
import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm import tqdm

from Net import Z_DIM, Discriminator, Generator, init_dcgan_weights
from Reader import DataSetError, DeviceLoader, FaceDataset, make_loader
from Utils import UserError

REAL, FAKE = 1, 0
GRID_SIDE = 8  # the progress grids show 8x8 samples of one fixed noise batch
STATE_FILE = "state.json"
# Flags that define the run; a checkpoint trained with other values is not silently continued.
HYPER_PARAMETERS = {"batch_size": 100, "lr": 2e-4, "beta1": 0.8, "g_steps": 2, "init": "paddle",
                    "d_input_bn": True, "seed": None}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="DataSet/faces", help="folder of face images (searched recursively)")
    parser.add_argument("--epochs", type=int, default=300, help="train until this many epochs are done")
    parser.add_argument("--batch-size", type=int, help="real images per batch (default 100)")
    parser.add_argument("--lr", type=float, help="Adam learning rate of both networks (default 2e-4)")
    parser.add_argument("--beta1", type=float, help="Adam beta1 of both networks (default 0.8)")
    parser.add_argument("--g-steps", type=int, help="generator updates per batch (default 2)")
    parser.add_argument("--init", choices=["paddle", "dcgan"],
                        help="weight initialisation: Paddle's default, or DCGAN's N(0, 0.02) (default paddle)")
    parser.add_argument("--no-d-input-bn", dest="d_input_bn", action="store_const", const=False,
                        help="stabiliser outside the brief: no BatchNorm in D's first block, as in DCGAN "
                             "(default: BatchNorm there, as the original)")
    parser.add_argument("--seed", type=int, help="seed of noise, dropout and data order (default: random, then kept)")
    parser.add_argument("--model-dir", default="Model", help="checkpoint folder, read to resume and written every epoch")
    parser.add_argument("--output", default="Output", help="folder for sample grids and the loss curve")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="where to train")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--sample-every", type=int, default=50,
                        help="write a sample grid every this many batches (0: only at epoch ends)")
    parser.add_argument("--limit", type=int, help="use only the first N images of --data")
    parser.add_argument("--flip", action="store_true", help="mirror training faces left-right at random")
    parser.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --model-dir and start over")
    parser.add_argument("--amp", action="store_true",
                        help="GPU only: mixed precision, bfloat16 where the GPU has it, else float16 with loss "
                             "scaling; weights, Adam and checkpoints stay float32")
    parser.add_argument("--cache-device", action="store_true",
                        help="hold the whole data set on the training device as uint8 and cut batches there "
                             "(for fast GPUs; 50,000 faces take 1.4 GB)")
    args = parser.parse_args(argv)
    for name, value in [("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--g-steps", args.g_steps)]:
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1")
    return args


# ------------------------------------------------------------------------------------- the step

def gan_loss(logits, label):
    """Mean softmax cross entropy of D's two logits against one label for the whole batch."""
    labels = paddle.full([logits.shape[0], 1], label, dtype="int64")
    return F.cross_entropy(logits, labels)


def update(optimizer, loss, scaler=None):
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # float16: scale the loss up so that small gradients do not round to zero, and back down
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    optimizer.clear_grad()
    return loss


class MixedPrecision:
    """--amp: the forward passes in bfloat16 where the GPU supports it (same range as float32, no
    loss scaling needed), else in float16 with one loss scaler per optimizer. Paddle's level O1
    keeps the weights, Adam's moments and precision-sensitive operators (softmax cross entropy,
    BatchNorm statistics) in float32, so checkpoints do not change."""

    def __init__(self):
        self.dtype = "bfloat16" if paddle.amp.is_bfloat16_supported() else "float16"
        float16 = self.dtype == "float16"
        self.d_scaler = paddle.amp.GradScaler() if float16 else None
        self.g_scaler = paddle.amp.GradScaler() if float16 else None

    def autocast(self):
        return paddle.amp.auto_cast(dtype=self.dtype, level="O1")


class frozen:
    """Within this block the layer's weights get no gradients: G's updates pass gradients through D
    to G without spending time on D's own weight gradients, which the G step does not use."""

    def __init__(self, layer, enabled=True):
        # BatchNorm's running statistics are parameters with stop_gradient set: leave them be.
        self.parameters = [p for p in layer.parameters() if not p.stop_gradient] if enabled else []

    def __enter__(self):
        for parameter in self.parameters:
            parameter.stop_gradient = True

    def __exit__(self, *exc):
        for parameter in self.parameters:
            parameter.stop_gradient = False


def train_step(G, D, opt_g, opt_d, real, g_steps, freeze_d=True, amp=None):
    """One batch of the original's schedule. Returns the losses (D on fakes, D on reals, mean G)
    as tensors, so the caller decides when to wait for the device. amp: a MixedPrecision, or
    None for float32."""
    batch = real.shape[0]
    autocast = amp.autocast if amp else contextlib.nullcontext
    d_scaler, g_scaler = (amp.d_scaler, amp.g_scaler) if amp else (None, None)
    with paddle.no_grad(), autocast():
        fake = G(paddle.rand([batch, Z_DIM]))
    with autocast():
        d_fake = gan_loss(D(fake), FAKE)
    update(opt_d, d_fake, d_scaler)
    with autocast():
        d_real = gan_loss(D(real), REAL)
    update(opt_d, d_real, d_scaler)
    g_losses = []
    with frozen(D, freeze_d):
        for _ in range(g_steps):
            with autocast():
                g_loss = gan_loss(D(G(paddle.rand([batch, Z_DIM]))), REAL)
            g_losses.append(update(opt_g, g_loss, g_scaler))
    opt_d.clear_grad()  # unused when D is frozen; under DataParallel, D's gradients of the G steps
    return d_fake.detach(), d_real.detach(), paddle.add_n(g_losses).detach() / g_steps


def step_seed(seed, rank, step):
    """The seed of one step's noise and dropout: distinct per (seed, process, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


# ------------------------------------------------------------------------------------ checkpoints

def read_state(model_dir):
    path = Path(model_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; delete {model_dir} or train with --fresh.") from None


def settle_hyper_parameters(args, state):
    """Fill unset flags from the checkpoint (or the brief's defaults); refuse flags that differ
    from the checkpoint's, since mixing them would train a model neither setting describes."""
    saved = state["hyper_parameters"] if state else {}
    settled, conflicts = {}, []
    for name, default in HYPER_PARAMETERS.items():
        given = getattr(args, name)
        if name in saved and given is not None and given != saved[name]:
            if name == "d_input_bn":  # the only flag for it is --no-d-input-bn
                conflicts.append("--no-d-input-bn (checkpoint: with BatchNorm on D's input)")
            else:
                conflicts.append(f"--{name.replace('_', '-')} {given} (checkpoint: {saved[name]})")
        settled[name] = saved.get(name, default) if given is None else given
    if conflicts:
        raise UserError(f"{args.model_dir} holds a checkpoint trained with other hyper-parameters: "
                        f"{', '.join(conflicts)}; drop those flags to continue it, or start over "
                        f"with --fresh or another --model-dir.")
    if settled["seed"] is None:
        settled["seed"] = secrets.randbelow(2**31)
    return settled


def _rename_optimizer_state(state, renames):
    """Adam keys its moments by Paddle's generated parameter names ("conv2d_17.w_0_moment1_0"),
    which depend on how many layers the process built before; store them under the stable
    structured names ("residual.conv1.weight_moment1_0") instead, and map them back on loading."""
    renamed = {}
    for key, value in state.items():
        old = max((name for name in renames if key.startswith(name + "_")), key=len, default=None)
        renamed[renames[old] + key[len(old):] if old else key] = value
    return renamed


def optimizer_state(layer, optimizer):
    return _rename_optimizer_state(optimizer.state_dict(), {p.name: name for name, p in layer.named_parameters()})


def set_optimizer_state(layer, optimizer, state):
    optimizer.set_state_dict(_rename_optimizer_state(state, {name: p.name for name, p in layer.named_parameters()}))


def save_checkpoint(model_dir, G, D, opt_g, opt_d, state):
    """G/D weights (safetensors), Adam states (.pdopt) and state.json, each written atomically;
    state.json goes last, so it never describes weights that are not on disk yet."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    step = {"global_step": state["global_step"]}
    Utils.save_weights(G, model_dir / "G.safetensors", step)
    Utils.save_weights(D, model_dir / "D.safetensors", step)
    Utils.atomic_write(model_dir / "G.pdopt", lambda tmp: paddle.save(optimizer_state(G, opt_g), tmp))
    Utils.atomic_write(model_dir / "D.pdopt", lambda tmp: paddle.save(optimizer_state(D, opt_d), tmp))
    Utils.write_json(state, model_dir / STATE_FILE)


def load_checkpoint(model_dir, G, D, opt_g, opt_d):
    model_dir = Path(model_dir)
    Utils.load_weights(G, model_dir / "G.safetensors")
    Utils.load_weights(D, model_dir / "D.safetensors")
    if (model_dir / "G.pdopt").exists() and (model_dir / "D.pdopt").exists():
        set_optimizer_state(G, opt_g, paddle.load(str(model_dir / "G.pdopt")))
        set_optimizer_state(D, opt_d, paddle.load(str(model_dir / "D.pdopt")))
        return True
    return False


# ---------------------------------------------------------------------------------------- outputs

def sample_spread(images):
    """Per-pixel standard deviation across samples, in grey levels, averaged over the pixels: about
    65 for real faces, near 0 when G draws one picture for every noise vector (mode collapse)."""
    return float(images.astype(np.float32).std(axis=0).mean())


def save_sample_grid(G, fixed_noise, path, title):
    """An 8x8 grid of what G makes of the fixed noise, titled like the original's plus the
    samples' spread; returns the spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G.eval()
    samples = Utils.generate(G, fixed_noise)
    G.train()
    spread = sample_spread(samples)
    title += f"  spread {spread:.1f}"
    grid = Utils.tile_images(samples, GRID_SIDE, GRID_SIDE)
    height, width, _ = grid.shape
    title_height = 40
    # One figure pixel per image pixel, so the tiles are not resampled.
    figure = plt.figure(figsize=(width / 100, (height + title_height) / 100), dpi=100)
    axes = figure.add_axes([0, 0, 1, height / (height + title_height)])
    axes.imshow(grid, interpolation="nearest")
    axes.axis("off")
    figure.text(0.5, 1 - title_height / 2 / (height + title_height), title, ha="center", va="center", fontsize=12)
    Utils.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return spread


def save_loss_curve(losses, steps_per_epoch, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d_loss = np.add(losses["d_fake"], losses["d_real"])
    g_loss = np.asarray(losses["g"])
    steps = np.arange(1, len(g_loss) + 1)
    window = max(1, len(g_loss) // 50)
    smooth = lambda values: np.convolve(values, np.ones(window) / window, mode="valid")
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    for values, label, color in [(d_loss, "D loss (fake + real)", "tab:blue"), (g_loss, "G loss", "tab:orange")]:
        axes.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        axes.plot(steps[window - 1:], smooth(values), color=color, label=label)
    axes.set_xlabel(f"batch ({steps_per_epoch} per epoch)")
    axes.set_ylabel("softmax cross entropy")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    Utils.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


# ------------------------------------------------------------------------------------ the program

class StopRequest:
    """Within this block, Ctrl-C or SIGTERM asks the loop to stop after the current step and save
    (stopping halfway through an Adam update would leave the weights half changed); a second
    Ctrl-C stops at once."""

    def __enter__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self.request) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def request(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def train(args):
    rank, world_size = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    writer = rank == 0  # under several GPUs only rank 0 writes files and prints progress
    device = Utils.choose_device(args.device)
    if world_size > 1:
        paddle.distributed.init_parallel_env()

    state = None if args.fresh else read_state(args.model_dir)
    hp = settle_hyper_parameters(args, state)
    try:
        dataset = FaceDataset(args.data, limit=args.limit, flip=args.flip, seed=hp["seed"])
    except DataSetError as error:
        raise UserError(str(error)) from None
    if args.amp and device != "gpu":
        raise UserError("--amp (mixed precision) is for GPUs; Paddle's CPU kernels gain nothing from it, "
                        "so train on CPU without --amp.")
    amp = MixedPrecision() if args.amp else None
    loader = (DeviceLoader(dataset, hp["batch_size"], seed=hp["seed"]) if args.cache_device
              else make_loader(dataset, hp["batch_size"], num_workers=args.num_workers, seed=hp["seed"]))
    steps_per_epoch = len(loader.batch_sampler)
    if steps_per_epoch == 0:
        raise UserError(f"{len(dataset)} images in {args.data} do not fill one batch of {hp['batch_size']} "
                        f"on each of {world_size} process(es); lower --batch-size or add images.")

    Utils.seed_everything(hp["seed"])
    G, D = Generator(), Discriminator(input_norm=hp["d_input_bn"])
    if hp["init"] == "dcgan":
        init_dcgan_weights(G), init_dcgan_weights(D)
    opt_g = paddle.optimizer.Adam(hp["lr"], beta1=hp["beta1"], parameters=G.parameters())
    opt_d = paddle.optimizer.Adam(hp["lr"], beta1=hp["beta1"], parameters=D.parameters())
    if state:
        with_adam = load_checkpoint(args.model_dir, G, D, opt_g, opt_d)
        if writer:
            print(f"Resuming from {args.model_dir}: {state['epochs_done']} epochs and "
                  f"{state['batches_done']} batches done (step {state['global_step']})"
                  + ("." if with_adam else "; no optimizer state there, so Adam starts afresh."))
    else:
        state = {"epochs_done": 0, "batches_done": 0, "global_step": 0,
                 "losses": {"d_fake": [], "d_real": [], "g": []}, "wall_seconds": 0.0}
    state.update(hyper_parameters=hp, data=str(args.data), images=len(dataset), steps_per_epoch=steps_per_epoch,
                 versions={"paddle": paddle.__version__, "numpy": np.__version__, "python": platform.python_version()})
    if state["epochs_done"] >= args.epochs:
        print(f"{args.model_dir} already holds {state['epochs_done']} epochs (--epochs {args.epochs}); nothing to do.")
        return state
    if writer:
        print(f"Training on {device} ({world_size} process(es)"
              + (f", {amp.dtype} mixed precision" if amp else "") + f"), {len(dataset)} faces, "
              f"{steps_per_epoch} batches of {hp['batch_size']} per epoch, seed {hp['seed']}.")
        if dataset.skipped:
            print(f"Skipped {len(dataset.skipped)} unreadable files.")

    # Under several GPUs the steps run through DataParallel wrappers, which average the gradients
    # across processes; checkpoints and samples use the plain networks.
    G_step, D_step = (paddle.DataParallel(G), paddle.DataParallel(D)) if world_size > 1 else (G, D)
    fixed_noise = Utils.random_noise(np.random.default_rng([hp["seed"], 0xF1ED]), GRID_SIDE * GRID_SIDE)
    output = Path(args.output)
    started = time.time() - state["wall_seconds"]
    step_seconds = []  # this run's steps, data loading and pictures left out

    def checkpoint():
        state["wall_seconds"] = round(time.time() - started, 1)
        if writer:
            save_checkpoint(args.model_dir, G, D, opt_g, opt_d, state)

    def sample(epoch, batch):
        losses = state["losses"]
        title = (f"Epoch {epoch}  Batch {batch}  D loss {losses['d_fake'][-1] + losses['d_real'][-1]:.4f}  "
                 f"G loss {losses['g'][-1]:.4f}")
        spread = save_sample_grid(G, fixed_noise, output / f"epoch_{epoch:04d}_batch_{batch:04d}.png", title)
        state.setdefault("spread", []).append([state["global_step"], round(spread, 2)])

    with StopRequest() as stop:
        while state["epochs_done"] < args.epochs:
            epoch = state["epochs_done"] + 1
            loader.batch_sampler.set_epoch(epoch, start_batch=state["batches_done"])
            dataset.set_epoch(epoch)
            progress = tqdm(loader, total=steps_per_epoch, initial=state["batches_done"],
                            desc=f"epoch {epoch}/{args.epochs}", disable=not writer, dynamic_ncols=True)
            for real in progress:
                paddle.seed(step_seed(hp["seed"], rank, state["global_step"]))
                step_started = time.perf_counter()
                step_losses = train_step(G_step, D_step, opt_g, opt_d, real, hp["g_steps"], world_size == 1, amp)
                losses = [float(loss) for loss in step_losses]  # waits for the device
                step_seconds.append(time.perf_counter() - step_started)
                if not all(math.isfinite(loss) for loss in losses):
                    raise UserError(f"the losses became {losses} at epoch {epoch}, step {state['global_step'] + 1}; "
                                    f"training stopped and the last checkpoint in {args.model_dir} was kept. "
                                    f"Try a lower --lr, or --init dcgan.")
                for key, value in zip(("d_fake", "d_real", "g"), losses):
                    state["losses"][key].append(round(value, 5))
                state["global_step"] += 1
                state["batches_done"] += 1
                progress.set_postfix(D=f"{losses[0] + losses[1]:.3f}", G=f"{losses[2]:.3f}")
                every = args.sample_every and state["batches_done"] % args.sample_every == 0
                if writer and (every or state["batches_done"] == steps_per_epoch):
                    sample(epoch, state["batches_done"])
                if stop.requested:
                    progress.close()
                    checkpoint()
                    print(f"Stopped in epoch {epoch} after batch {state['batches_done']}; checkpoint saved to "
                          f"{args.model_dir}. Run the same command to continue.")
                    sys.exit(130)
            progress.close()
            state["epochs_done"], state["batches_done"] = epoch, 0
            checkpoint()
            if writer:
                save_loss_curve(state["losses"], steps_per_epoch, output / "loss.png")
    if writer:
        print(f"Done: {state['epochs_done']} epochs, {state['global_step']} steps; model in {args.model_dir}, "
              f"samples in {output}. A training step took {np.median(step_seconds):.2f} s "
              f"(median of this run's {len(step_seconds)}).")
    return state


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    Utils.run_main(main)
