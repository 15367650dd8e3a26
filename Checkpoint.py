"""The model folder: its file names, its weight files, and a training checkpoint in it, written and
read as one unit; and loading the generator that the scripts draw with.

A model folder (Train.py's --model-dir) holds one checkpoint:

    G.safetensors, D.safetensors   weights and BatchNorm statistics
    G_ema.safetensors              with --ema only: the moving average of G (weights only, never
                                   trained), which Run.py draws with when it is there
    G.pdopt, D.pdopt               Adam's moments (and --amp's loss scaler), in Paddle's format
    state.json                     where training stopped, its settings and its loss history

Every file is stamped with the checkpoint's identity (the run's id and the step), and loading
refuses files whose stamps differ, so weights of one step never meet another step's Adam state.

A save writes all files into `.incoming/` first, flushes them to disk, and then writes the marker
`.incoming/COMPLETE`: that marker is the moment the new checkpoint exists. Only then are the
files of the last checkpoint that the new one has not removed (a G_ema.safetensors, when the new
run trains without --ema) and the new files moved into place. The next run that opens the folder
finishes the move if the marker is there, or throws `.incoming/` away if it is not, so after a
kill at any instant or a full disk the folder holds one consistent checkpoint: the last complete
one.

One process at a time writes to a model folder: `ModelFolder.lock()` takes an advisory lock that
the operating system releases when the process ends, however it ends. A run that is refused lets
go of it at once and removes the lock file if it made it (`ModelFolder.released_if_refused`).
"""
import contextlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import paddle
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

import Files
from Files import UserError
from Net import Generator

STATE_FILE = "state.json"
# state.json's format. 2: the format field itself; a state.json without one is format 1. A newer
# format is refused (its fields may mean what this code cannot know); fields this code does not
# know in a format it reads are kept as they are on the next save (RunState.unknown).
FORMAT = 2
INCOMING = ".incoming"
COMPLETE = "COMPLETE"
LOCK_FILE = ".lock"
NETWORKS = ("G", "D", "G_ema")  # whose weights a checkpoint may hold
TRAINED = ("G", "D")  # whose Adam state it holds: G_ema is never trained


class FolderBusy(UserError):
    """The model folder is locked by another process, which may be training in it right now."""


class DamagedState(UserError):
    """A state.json that cannot be used. Its message advises Train.py's user; path and reason are
    the facts, for callers that word their own advice (hubconf.py)."""

    def __init__(self, path, reason):
        super().__init__(f"{path} cannot be used: {reason}. The weights beside it are intact, but where training "
                         f"stopped is unknown: put back the state.json written with them, or start over with "
                         f"--fresh (which replaces them at its first checkpoint) or another --model-dir.")
        self.path, self.reason = path, reason


def weights_file(name):
    return f"{name}.safetensors"


def adam_file(name):
    return f"{name}.pdopt"


GENERATOR_FILE = weights_file("G")
AVERAGED_GENERATOR_FILE = weights_file("G_ema")  # Train.py --ema's moving average of G


# ------------------------------------------------------------------------------- the run's state

@dataclass
class RunState:
    """What state.json holds: how far training got, with which settings, and what it measured."""

    hyper_parameters: dict
    run: str = ""  # the run's id, which stamps every file of its checkpoints (Train.py draws it)
    epochs_done: int = 0
    batches_done: int = 0  # of the epoch under way
    global_step: int = 0
    wall_seconds: float = 0.0
    losses: dict = field(default_factory=lambda: {"d_fake": [], "d_real": [], "g": []})
    spread: list = field(default_factory=list)  # [step, spread] at each sample grid
    data: str = ""
    images: int = 0
    steps_per_epoch: int = 0
    versions: dict = field(default_factory=dict)
    # {"step": N, flag: new value}: a changeable hyper-parameter or --data changed there, or D started
    # afresh ("fresh_d": the reason)
    changes: list = field(default_factory=list)
    # The mean sign of D's real-minus-generated logit on each step's real batch, and per epoch
    # {"epoch", "step", "r_t"}: their mean over the epoch, ADA's signal of D overfitting (Karras et al.
    # 2020): near 0 D cannot tell the real faces from generated ones; near 1 D is sure of every real face.
    real_sign: list = field(default_factory=list)
    overfitting: list = field(default_factory=list)
    # Top-level fields of state.json this code does not know (a later version's records), written back as read.
    unknown: dict = field(default_factory=dict)
    # One per run of Train.py: {"from_step", "to_step", "machine", "processes", "threads", "cpu_seconds"},
    # the CPU time of rank 0's process (all its threads) from its start to its last checkpoint.
    stretches: list = field(default_factory=list)

    def stamp(self):
        return {"run": self.run, "global_step": str(self.global_step)}

    def where(self):
        return f"step {self.global_step} (epoch {self.epochs_done + 1}, batch {self.batches_done})" \
            if self.batches_done else f"step {self.global_step} (end of epoch {self.epochs_done})"

    @classmethod
    def from_json(cls, data, path):
        """Check every field's type and range; a wrong state.json is refused, never guessed at."""
        if not isinstance(data, dict):
            raise DamagedState(path, f"it holds {type(data).__name__}, not the object Train.py writes")
        version = data.get("format", 1)
        if not _is(version, int) or version < 1:
            raise DamagedState(path, f"its format is {version!r}, not a whole number from 1")
        if version > FORMAT:
            raise UserError(f"{path} was written by a newer version of this project (state.json format {version}; "
                            f"this one reads up to {FORMAT}): update it (git pull) to continue that checkpoint.")
        missing = [f.name for f in fields(cls) if f.name not in data and f.name in REQUIRED_FIELDS]
        if missing:
            raise DamagedState(path, f"it lacks {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name != "unknown"}
        for f in fields(cls):  # each field's annotation is the type it must have
            if f.name in values and not _is(values[f.name], f.type):
                raise DamagedState(path, f"its {f.name} is {values[f.name]!r}, not {_describe(f.type)}")
        for name in ("epochs_done", "batches_done", "global_step"):
            if values[name] < 0:
                raise DamagedState(path, f"its {name} is negative")
        if values.get("steps_per_epoch") and values["batches_done"] > values["steps_per_epoch"]:
            raise DamagedState(path, f"its batches_done, {values['batches_done']}, is more than an epoch's "
                                   f"{values['steps_per_epoch']} batches")
        losses = values.get("losses", {})
        curves = [losses.get(key) for key in ("d_fake", "d_real", "g")]
        if not (all(isinstance(curve, list) and all(_is_number(value) for value in curve) for curve in curves)
                and len({len(curve) for curve in curves}) == 1):
            raise DamagedState(path, "its losses are not the three lists of numbers d_fake, d_real and g, one number "
                                   "per step in each")
        wrong = next(_wrong_entries(values), None)
        if wrong:
            raise DamagedState(path, f"its {wrong[0]} holds {wrong[1]!r}, {LIST_ENTRIES[wrong[0]][1]}")
        known = {f.name for f in fields(cls)} | {"format"}
        return cls(**values, unknown={key: value for key, value in data.items() if key not in known})

    def to_json(self):
        data = asdict(self)
        return {"format": FORMAT, **{key: value for key, value in data.items() if key != "unknown"}, **self.unknown}


REQUIRED_FIELDS = {"hyper_parameters", "epochs_done", "batches_done", "global_step", "losses"}


def _is_step(value):
    return _is(value, int) and value >= 0


def _is_change(entry):
    """{"step": N, what changed: its new value}: a hyper-parameter's value (Train.py checks it
    against its flag), --data's folder and size, or why D started afresh."""
    return (isinstance(entry, dict) and _is_step(entry.get("step")) and len(entry) > 1
            and all(isinstance(value, (str, int, float, bool)) or value is None for value in entry.values()))


# What each list in state.json holds: a test of one entry, and what an entry must be, for a sentence.
LIST_ENTRIES = {
    "real_sign": (lambda sign: _is(sign, float) and -1 <= sign <= 1, "where each entry must be a number from -1 to 1"),
    "spread": (lambda pair: isinstance(pair, list) and len(pair) == 2 and _is_step(pair[0]) and _is(pair[1], float)
               and pair[1] >= 0, "where each entry must be [step, spread], a whole number and a number of at least 0"),
    "changes": (_is_change, "where each entry must be an object with a step (a whole number of at least 0) and "
                            "what changed there"),
    "overfitting": (lambda entry: isinstance(entry, dict) and set(entry) == {"epoch", "step", "r_t"}
                    and _is_step(entry["epoch"]) and _is_step(entry["step"]) and _is(entry["r_t"], float)
                    and -1 <= entry["r_t"] <= 1,
                    "where each entry must be an object of an epoch, a step and an r_t from -1 to 1"),
    "stretches": (lambda entry: isinstance(entry, dict) and _is_step(entry.get("from_step"))
                  and _is_step(entry.get("to_step")) and _is(entry.get("cpu_seconds"), float)
                  and entry["cpu_seconds"] >= 0,
                  "where each entry must be an object with a from_step, a to_step and cpu_seconds of at least 0"),
}


def _wrong_entries(values):
    """(field, entry) for each entry of state.json's lists that is not what Train.py writes."""
    for name, (right, _) in LIST_ENTRIES.items():
        for entry in values.get(name, []):
            if not right(entry):
                yield name, entry


def _same_file(handle, path):
    """Whether an open file is still the one at path (it may have been removed or replaced)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _is(value, kind):
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return _is_number(value) and math.isfinite(value)
    return isinstance(value, kind)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(kind):
    return {int: "a whole number", float: "a number", dict: "an object", list: "a list", str: "a string"}[kind]


# ----------------------------------------------------------------------------- Adam's state

def _rename_optimizer_state(state, renames):
    """Adam keys its moments by Paddle's generated parameter names ("conv2d_17.w_0_moment1_0"),
    which depend on how many layers the process built before; store them under the stable
    structured names ("residual.conv1.weight_moment1_0") instead, and map them back on loading."""
    renamed = {}
    for key, value in state.items():
        old = _parameter_of(key, renames)
        renamed[renames[old] + key[len(old):] if old else key] = value
    return renamed


def _parameter_of(key, names):
    """Which of names (parameter names) Adam's key is about, or None: the longest that key begins
    with, followed by "_"."""
    return max((name for name in names if key.startswith(name + "_")), key=len, default=None)


def optimizer_state(layer, optimizer):
    return _rename_optimizer_state(optimizer.state_dict(), {p.name: name for name, p in layer.named_parameters()})


def set_optimizer_state(layer, optimizer, state, grown=False):
    """grown: the layer has grown since its state was saved (see load_weights)."""
    if grown:
        state = grown_optimizer_state(layer, state)
    optimizer.set_state_dict(_rename_optimizer_state(state, {name: p.name for name, p in layer.named_parameters()}))


def grown_optimizer_state(layer, state):
    """Adam's state (as optimizer_state gives it) for layer, which has grown since the state was
    saved: the moments of a grown weight padded with zeros likewise, as for inputs never updated."""
    shapes = {name: list(p.shape) for name, p in layer.named_parameters()}
    grown = {}
    for key, value in state.items():
        name = _parameter_of(key, shapes)
        if name is not None and "_moment" in key[len(name):] and list(value.shape) != shapes[name]:
            value = paddle.to_tensor(zero_padded(np.asarray(value), shapes[name]))
        grown[key] = value
    return grown


def zero_padded(array, shape):
    """array with zeros appended at the end of each axis up to shape."""
    return np.pad(array, [(0, new - old) for old, new in zip(array.shape, shape)])


# ------------------------------------------------------------------------------- the folder

class ModelFolder:
    """The checkpoint of one model folder: recover, lock, read, load and save it."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None
        self._made_lock_file = False
        self.keep_at_next_save = None  # a subfolder's name: the next save keeps the checkpoint it replaces there

    def lock(self):
        """Take the folder for this process, or refuse at once if another process has it."""
        import fcntl  # POSIX; the lock is advisory and dies with its process

        while True:
            handle, made = self._open_lock_file()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = handle.read().strip() or "another process"
                handle.close()
                raise FolderBusy(f"{self.path} is being trained by another Train.py ({holder}); wait for it to "
                                 f"end, or give this run another --model-dir.") from None
            if _same_file(handle, self.path / LOCK_FILE):
                break
            handle.close()  # a refused run removed the file between our open and our lock: take the new one
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock, self._made_lock_file = handle, made

    def _open_lock_file(self):
        """The folder's lock file, opened, and whether this call made it (the folder too, if need be)."""
        while True:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = self.path / LOCK_FILE
            if lock.is_symlink() and not lock.exists() or lock.is_dir():
                what = "a folder" if lock.is_dir() else "a link to nothing"
                raise UserError(f"{lock} is {what}, not the lock file Train.py makes; remove it (no training "
                                f"needs it) and run again.")
            try:
                return os.fdopen(os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL), "r+"), True
            except FileExistsError:
                pass
            try:
                return open(self.path / LOCK_FILE, "r+"), False
            except FileNotFoundError:
                continue  # a refused run removed it, or its folder, just now

    @contextlib.contextmanager
    def released_if_refused(self):
        """Within this block, a refusal (UserError) or a stop (Ctrl-C, SIGTERM) lets go of the
        folder's lock, after removing the lock file if this run made it, so that a run refused or
        stopped before training leaves nothing behind. Whatever else it cleans up must happen inside
        this block, while the lock is held. The file goes only while it is still the one locked, and
        lock() checks that the file it locked is still the folder's, so two runs never hold the
        folder at once."""
        try:
            yield
        except (UserError, KeyboardInterrupt):
            if self._lock is not None:
                if self._made_lock_file and _same_file(self._lock, self.path / LOCK_FILE):
                    (self.path / LOCK_FILE).unlink()
                self._lock.close()
                self._lock = None
            raise

    def recover(self):
        """Finish or discard a save that was interrupted, and remove stray temporary files.
        Returns a sentence saying what was done, or None."""
        incoming = self.path / INCOMING
        said = None
        names = _complete_names(incoming / COMPLETE) if (incoming / COMPLETE).exists() else None
        if names is not None:
            self._move_into_place(incoming, names)
            said = f"A save into {self.path} was interrupted after it was complete; its move was finished."
        elif (incoming / COMPLETE).exists():
            said = (f"A save into {self.path} was interrupted, and its list of files is damaged, so it cannot be "
                    f"finished; it was discarded.")
        elif incoming.exists():
            said = f"A save into {self.path} was interrupted before it was complete; it was discarded."
        shutil.rmtree(incoming, ignore_errors=True)
        for stray in self.path.glob(".*.tmp*"):
            stray.unlink()
        return said

    def has_checkpoint(self):
        return any((self.path / name).exists() for name in checkpoint_files())

    def checkpoint_bytes(self):
        """The contents of the folder's checkpoint files, by name: what rank 0 sends the other
        training processes, which may run where this folder is not."""
        return {name: (self.path / name).read_bytes() for name in checkpoint_files() if (self.path / name).exists()}

    def read_state(self):
        """The folder's RunState, or None for a folder without any checkpoint file. A folder with
        weights but no usable state.json is refused: guessing would overwrite a trained model."""
        path = self.path / STATE_FILE
        if not path.exists():
            if self.has_checkpoint():
                raise DamagedState(path, "it is missing")
            return None
        try:
            data = Files.read_json(path)
        except ValueError as error:
            raise DamagedState(path, f"it is not valid JSON ({error})") from None
        except OSError as error:  # a folder named state.json, a file that may not be read
            raise DamagedState(path, f"it cannot be read ({error.strerror or error})") from None
        return RunState.from_json(data, path)

    def load(self, networks, optimizers, state, scalers=None, grown=()):
        """Load weights (and Adam's state when it is there) of the checkpoint that state describes,
        and the float16 loss scalers (Train.py --amp) where both the checkpoint and scalers have
        them. grown: the names of networks that have grown new inputs since (see load_weights).
        Returns whether Adam's state was loaded."""
        for name, layer in networks.items():
            path = self.path / weights_file(name)
            if not path.exists():
                raise UserError(f"{path} is missing from the checkpoint that {STATE_FILE} describes; put it back, "
                                f"or start over with --fresh or another --model-dir.")
            self._check_stamp(path.name, load_weights(layer, path, grown=name in grown), state)
        adam = {name: self.path / adam_file(name) for name in optimizers}
        if not all(path.exists() for path in adam.values()):
            return False
        saved = {name: _read_adam(path) for name, path in adam.items()}
        if any(value is None for value in saved.values()):
            return False  # written before files were stamped: it cannot be matched to the weights
        for name, value in saved.items():
            self._check_stamp(adam[name].name, value["checkpoint"], state,
                              f"its Adam state is left from another checkpoint (as `git checkout Model/` leaves a "
                              f"trained one's beside the shipped weights, which have none); delete "
                              f"{' and '.join(map(str, adam.values()))} to go on with Adam started afresh, or put "
                              f"back the matching files.")
            set_optimizer_state(networks[name], optimizers[name], value["adam"], grown=name in grown)
            if value.get("loss_scaler") and name in (scalers or {}):
                scalers[name].load_state_dict(value["loss_scaler"])
        return True

    def _check_stamp(self, name, stamp, state, advice="files of two checkpoints were mixed. Put back the matching "
                                                      "files, or start over with --fresh or another --model-dir."):
        found = (stamp.get("run", ""), str(stamp.get("global_step", "")))
        if found != (state.run, str(state.global_step)):
            raise UserError(f"{self.path / name} belongs to another checkpoint (run {found[0] or '?'}, step "
                            f"{found[1] or '?'}) than {STATE_FILE} (run {state.run or '?'}, step {state.global_step}): "
                            f"{advice}")

    def check_space(self, networks, optimizers, state):
        """Refuse in one sentence, before any training, when the folder's disk cannot hold the next
        checkpoint beside the last one (a save writes the new one whole before removing the old)."""
        needed, free = checkpoint_size(networks, optimizers, state), shutil.disk_usage(self.path).free
        if free < needed:
            raise UserError(f"{self.path} has {megabytes(free)} free, but a checkpoint needs about "
                            f"{megabytes(needed)}; free {megabytes(needed - free)} more or name another --model-dir.")

    def keep_aside(self, name):
        """Keep the folder's checkpoint files in its subfolder name as well, as hard links (copies
        where the file system has none), so that a save replacing them leaves them there. Returns
        that subfolder."""
        aside = self.path / name
        try:
            aside.mkdir()
            for file in checkpoint_files():
                if (self.path / file).exists():
                    try:
                        os.link(self.path / file, aside / file)
                    except OSError:  # no hard links here: a copy, on disk before anything is replaced
                        Files.atomic_write(aside / file, lambda tmp, file=file: shutil.copyfile(self.path / file, tmp))
            Files.fsync_folder(aside)
        except OSError as error:
            shutil.rmtree(aside, ignore_errors=True)
            raise UserError(f"the checkpoint in {self.path} could not be kept in {aside} before being replaced "
                            f"({error.strerror or error}), so nothing was replaced; free some space, or train in "
                            f"another --model-dir.") from None
        return aside

    def save(self, networks, optimizers, state, scalers=None):
        """Write the checkpoint as one unit (see the module's docstring). With keep_at_next_save
        set (Train.py --fresh over a trained checkpoint), the checkpoint it replaces is kept aside
        first, in that subfolder."""
        if self.keep_at_next_save and self.has_checkpoint():
            self.keep_aside(self.keep_at_next_save)
        self.keep_at_next_save = None
        incoming = self.path / INCOMING
        shutil.rmtree(incoming, ignore_errors=True)
        stamp = state.stamp()
        try:
            incoming.mkdir(parents=True)
            for name, layer in networks.items():
                save_weights(layer, incoming / weights_file(name), stamp)
            for name, optimizer in optimizers.items():
                adam = {"checkpoint": stamp, "adam": optimizer_state(networks[name], optimizer),
                        "loss_scaler": scalers[name].state_dict() if name in (scalers or {}) else None}
                Files.atomic_write(incoming / adam_file(name), lambda tmp: paddle.save(adam, tmp))
            Files.write_json(state.to_json(), incoming / STATE_FILE)
            Files.fsync_folder(incoming)
            names = sorted(os.listdir(incoming))
            Files.write_json(names, incoming / COMPLETE)
            Files.fsync_folder(incoming)
        except (OSError, SafetensorError) as error:  # safetensors reports a full disk as a SafetensorError
            shutil.rmtree(incoming, ignore_errors=True)
            reason = getattr(error, "strerror", None) or error
            needed, free = checkpoint_size(networks, optimizers, state), shutil.disk_usage(self.path).free
            raise UserError(f"the checkpoint of {state.where()} could not be written to {self.path} ({reason}; it "
                            f"needs about {megabytes(needed)}, and {megabytes(free)} are free); the folder still holds "
                            f"its last complete checkpoint. Free some space or fix the folder, then run the same "
                            f"command to continue.") from None
        self._move_into_place(incoming, names)

    def _move_into_place(self, incoming, names):
        """Move a complete checkpoint's files (names) from incoming into the folder, state.json
        last, after removing the files of the last checkpoint that this one has not. Safe to repeat
        after an interruption: a file already moved or removed is simply no longer there."""
        for name in sorted(set(checkpoint_files()) - set(names)):  # first: never beside the new checkpoint
            (self.path / name).unlink(missing_ok=True)
        for name in sorted(names, key=lambda name: name == STATE_FILE):
            if (incoming / name).exists():
                os.replace(incoming / name, self.path / name)
        Files.fsync_folder(self.path)
        shutil.rmtree(incoming)


def checkpoint_size(networks, optimizers, state):
    """Bytes a checkpoint of these networks takes, about: float32 weights and statistics, Adam's
    two moments of every trained weight, state.json, and 1 MB for the files' headers."""
    def values(layer, trained_only=False):
        return sum(math.prod(p.shape) for p in (layer.parameters() if trained_only else layer.state_dict().values())
                   if not (trained_only and p.stop_gradient))

    weights = sum(values(layer) for layer in networks.values())
    adam = sum(2 * values(networks[name], trained_only=True) for name in optimizers)
    return 4 * (weights + adam) + len(json.dumps(state.to_json())) + 2**20


def megabytes(size):
    return f"{size / 2**20:,.0f} MB"


def _complete_names(path):
    """The checkpoint's file names that a save's COMPLETE marker lists, or None where it is not
    such a list (damaged, or not written by Train.py)."""
    try:
        names = Files.read_json(path)
    except (OSError, ValueError):
        return None
    if isinstance(names, list) and names and set(names) <= set(checkpoint_files()):
        return names
    return None


def checkpoint_files():
    """The names of every file a checkpoint may hold."""
    return [weights_file(name) for name in NETWORKS] + [adam_file(name) for name in TRAINED] + [STATE_FILE]


def _read_adam(path):
    """The stamped Adam state in path; None for an unstamped one of an older version."""
    try:
        saved = paddle.load(str(path))
    except Exception as error:  # noqa: BLE001  paddle.load raises many kinds for a damaged file
        saved, reason = None, f"{type(error).__name__}: {error}"
    else:
        reason = "it is not an optimizer state written by Train.py"
    if isinstance(saved, dict) and isinstance(saved.get("adam"), dict) and isinstance(saved.get("checkpoint"), dict):
        return saved
    if isinstance(saved, dict) and saved and all("_moment" in key or "_pow_acc" in key for key in saved):
        return None
    raise UserError(f"{path} is damaged or foreign ({reason}). The weights beside it are intact: delete "
                    f"G.pdopt and D.pdopt to continue with Adam started afresh, or start over with --fresh.")


# ------------------------------------------------------- weight files, and the generator that draws

def save_weights(layer, path, metadata=None):
    """Weights and BatchNorm statistics of a layer as safetensors: plain arrays, no pickle, readable
    by any Paddle version (and by numpy alone)."""
    arrays = {name: np.ascontiguousarray(value.numpy()) for name, value in layer.state_dict().items()}
    meta = {key: str(value) for key, value in (metadata or {}).items()}
    Files.atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))


def load_weights(layer, path, grown=False):
    """Load a safetensors file written by save_weights into layer, checking every name and shape.
    Returns the file's metadata (Train.py stamps each file with its checkpoint's step).

    grown: the layer may have grown since the file was written, so a saved weight may be smaller
    than the layer's along any axis; it is padded there with zeros. New inputs of a linear layer
    (D's minibatch standard deviation, Train.py --mbstd turned on when continuing) then start
    weighted zero, and the grown layer computes what the saved one did."""
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
    expected = {name: list(value.shape) for name, value in layer.state_dict().items()}
    if grown:
        arrays = {name: zero_padded(array, expected[name]) if _fits_in(array.shape, expected.get(name)) else array
                  for name, array in arrays.items()}
    wrong = sorted(set(expected) ^ set(arrays))
    wrong += [name for name in expected if name in arrays and list(arrays[name].shape) != expected[name]]
    if wrong:
        raise UserError(f"{path} holds weights of another network (first mismatch: {wrong[0]}); "
                        f"it was not written by this version of Net.py, so train a new model.")
    # The networks are float32; a file saved in another precision (float16, say) loads as float32.
    arrays = {name: array.astype(np.float32, copy=False) for name, array in arrays.items()}
    if not all(np.isfinite(array).all() for array in arrays.values()):
        raise UserError(f"{path} holds weights that are not numbers (NaN or infinite), so it would draw blank "
                        f"pictures: the training that wrote it diverged. Use an earlier checkpoint.")
    layer.set_state_dict({name: paddle.to_tensor(array) for name, array in arrays.items()})
    return metadata


def _fits_in(shape, bigger):
    return bigger is not None and len(shape) == len(bigger) and all(a <= b for a, b in zip(shape, bigger))


def generator_file(model_dir, raw_g=False, raw_g_said="--raw-g"):
    """The weights the scripts draw with: G_ema.safetensors where model_dir has it (the moving
    average of G's weights that Train.py --ema keeps, free of the swings of G's latest update),
    else G.safetensors; with raw_g, G.safetensors, the trained G itself, in any case. raw_g_said:
    how the caller's user asks for raw_g ("raw_g=True" from Python)."""
    averaged = Path(model_dir) / AVERAGED_GENERATOR_FILE
    if averaged.is_symlink() and not averaged.exists() and not raw_g:  # not the trained G in its place, unsaid
        raise UserError(f"{averaged} is a link to {os.readlink(averaged)}, which does not exist; put that file "
                        f"back, or pass {raw_g_said} to draw with {GENERATOR_FILE}.")
    return averaged if averaged.exists() and not raw_g else Path(model_dir) / GENERATOR_FILE


def load_generator(model_dir, raw_g=False):
    """The generator of model_dir (see generator_file), in evaluation mode (BatchNorm uses its
    running statistics). Its stamp is the run and step its weights were saved at (Train.py's)."""
    path = generator_file(model_dir, raw_g)
    if raw_g and not path.exists() and (Path(model_dir) / AVERAGED_GENERATOR_FILE).exists():
        raise UserError(f"{path} does not exist, so --raw-g has nothing to draw with; leave --raw-g out to draw "
                        f"with {AVERAGED_GENERATOR_FILE}, the averaged generator beside it.")
    generator = Generator()
    generator.stamp = load_weights(generator, path)  # the run and step it was saved at ({} if unstamped)
    generator.eval()
    return generator


def add_generator_flags(parser):
    """--model-dir and --raw-g, which say the weights that draw (or are measured): every script's
    that uses a trained generator."""
    parser.add_argument("--model-dir", default="Model", help="folder holding G.safetensors (and G_ema.safetensors)")
    parser.add_argument("--raw-g", action="store_true",
                        help="use G.safetensors even where the averaged G_ema.safetensors is there")


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
