"""Turn a folder of face images into training batches.

`FaceDataset` finds every image under a folder (recursively), decodes each one once into a uint8
array held in memory (96x96 RGB faces are 27 KB each: 10,000 faces take 276 MB), and hands out
float32 [3, 96, 96] arrays in [-1, 1], the range of the generator's Tanh. Files that cannot be
decoded are skipped and counted, so a bad download never crashes an epoch.

`EpochBatchSampler` and `make_loader` cut it into shuffled batches: the order of every epoch is
a function of (seed, epoch), so a resumed run sees the same batches as an uninterrupted one, and
under several GPUs each process takes its own share of every epoch.
"""
import ctypes
import functools
import os
import signal
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import paddle
from PIL import Image

from Files import FACES_FOLDER, IMAGE_EXTENSIONS, decode_image
from Net import IMAGE_SIZE


class DataSetError(Exception):
    """The folder cannot give a data set (missing, or no readable image in it)."""


def check_folder(folder):
    """folder as a Path, or a DataSetError saying in one sentence why it cannot hold a data set."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise DataSetError(f"The data folder {folder} is a file, not a folder; name the folder that holds the "
                           f"96x96 face images.")
    raise DataSetError(f"The data folder {folder} does not exist; put 96x96 face images in it, "
                       f"or make them with the tools in Pretreatment/ (see Pretreatment/README.md).")


def find_images(folder):
    """Every image file under folder, and every link named like one whose target is missing (it is
    skipped and named then), sorted by path so that --limit and seeds mean the same thing on every
    machine."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or is_dangling(p)))


def is_dangling(path):
    return path.is_symlink() and not path.exists()


def decode_face(path):
    """uint8 [96, 96, 3] RGB for an image file, or None when the file cannot be decoded.
    Decoded as CutImage.py decodes it (Files.decode_image: transparency on white, 16 bits scaled
    to 8, EXIF orientation applied); other sizes are resized."""
    face = decode_image(path)
    if face is not None and face.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        face = np.asarray(Image.fromarray(face).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
    return face


class FaceDataset(paddle.io.Dataset):
    """Faces of a folder as float32 [3, 96, 96] arrays in [-1, 1] (channels, height, width).

    folder: searched recursively for .jpg .jpeg .png .webp .bmp files.
    limit:  use only the first `limit` images (in sorted path order).
    flip:   mirror each image left-right with probability 1/2 (a function of seed, epoch and index).
    """

    def __init__(self, folder=FACES_FOLDER, limit=None, flip=False, seed=0):
        folder = check_folder(folder)
        paths = find_images(folder)
        if limit is not None:
            paths = paths[:limit]
        if not paths:
            raise DataSetError(f"The data folder {folder} holds no images (.jpg .jpeg .png .webp .bmp); "
                               f"make face crops with the tools in Pretreatment/ (see Pretreatment/README.md).")
        with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL decodes without the GIL
            decoded = list(pool.map(decode_face, paths))
        self.paths = [path for path, face in zip(paths, decoded) if face is not None]
        self.skipped = [path for path, face in zip(paths, decoded) if face is None]
        if self.skipped:
            dangling = [path for path in self.skipped if is_dangling(path)]
            links = (f"; {len(dangling)} of them link to a missing file (first: {dangling[0]})" if dangling else "")
            warnings.warn(f"{len(self.skipped)} of {len(paths)} files in {folder} could not be read "
                          f"and were skipped (first: {self.skipped[0]}){links}.", stacklevel=2)
        if not self.paths:
            raise DataSetError(f"None of the {len(paths)} image files in {folder} could be read; "
                               f"make face crops with the tools in Pretreatment/ (see Pretreatment/README.md).")
        self.faces = np.stack([face for face in decoded if face is not None])  # uint8 [N, H, W, 3]
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        """Flips depend on the epoch; loader workers are forked per epoch, so they see this."""
        self.epoch = epoch

    def __len__(self):
        return len(self.faces)

    def mirrored(self, index):
        """Whether face `index` is mirrored this epoch: a function of (seed, epoch, index) alone."""
        return self.flip and np.random.default_rng((self.seed, self.epoch, index)).random() < 0.5

    def __getitem__(self, index):
        face = self.faces[index]
        if self.mirrored(index):
            face = face[:, ::-1]
        return to_model_range(face)


def to_model_range(faces):
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]. The axes are moved explicitly:
    the original's bare `transpose()` reversed them all and swapped height with width."""
    faces = np.moveaxis(np.asarray(faces), -1, -3)
    return faces.astype(np.float32) / 127.5 - 1.0


class EpochBatchSampler(paddle.io.Sampler):
    """Batches of indices, shuffled anew each epoch from (seed, epoch), the incomplete last batch
    dropped (a small batch would skew BatchNorm's statistics). With several processes (ranks),
    each takes every world_size-th index of the shuffled order, so the processes share an epoch
    without overlap and in equal parts."""

    def __init__(self, size, batch_size, seed=0, rank=None, world_size=None):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank = paddle.distributed.get_rank() if rank is None else rank
        self.world_size = paddle.distributed.get_world_size() if world_size is None else world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch, start_batch=0):
        """Select the epoch; start_batch skips batches already trained (resuming mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self):
        """This rank's share of the epoch's order. Every rank gets the same number of indices (the
        last size % world_size of the order sit the epoch out), so every rank runs the same number
        of steps: one more on a single rank would wait forever in its gradient all-reduce."""
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
        even = self.size - self.size % self.world_size
        return order[:even][self.rank::self.world_size]

    def __len__(self):
        return len(self.indices()) // self.batch_size

    def __iter__(self):
        mine = self.indices()
        for number in range(self.start_batch, len(self)):
            yield mine[number * self.batch_size:(number + 1) * self.batch_size].tolist()


MAX_WORKERS = 32  # loader processes; decoding is done once, so even a fast GPU needs few (Train.py --num-workers)


def make_loader(dataset, batch_size, num_workers=0, seed=0):
    """A paddle DataLoader over dataset with an EpochBatchSampler; call
    loader.batch_sampler.set_epoch(epoch) before each epoch. Its worker processes end with the
    process that made them (end_with_parent)."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=seed)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                worker_init_fn=functools.partial(end_with_parent, os.getpid()))


def end_with_parent(parent, worker_id):
    """Run first in each loader worker: on Linux the kernel kills it the moment its parent, the
    training process, ends, however that ends (kill -9 and out-of-memory included). Paddle's own
    check of the parent runs only between batches, so workers that are starting up or busy would
    live on, each holding a copy of the faces. Elsewhere it does nothing. (CutImage watches its
    parent from a thread instead, through multiprocessing's sentinel pipe: its workers are spawned,
    while Paddle forks these from the training thread, and each later fork would hold its earlier
    siblings' pipes open. The signal's catch, that it follows the thread that forked, does not bite
    here: that thread is the one that trains.)"""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1  # linux/prctl.h
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os._exit(0)


class DeviceLoader:
    """make_loader's batches, cut on the training device (Train.py --cache-device).

    The whole data set goes to the device once as uint8 (50,000 faces are 1.4 GB) and every batch
    is gathered, mirrored and scaled there, so a fast GPU never waits for the CPU to decode,
    convert and copy. Same batches as make_loader's, to the last bit: the same sampler, the same
    flips, the same arithmetic."""

    def __init__(self, dataset, batch_size, seed=0):
        self.dataset = dataset
        self.batch_sampler = EpochBatchSampler(len(dataset), batch_size, seed=seed)
        self.faces = paddle.to_tensor(dataset.faces)  # uint8 [N, H, W, 3] on the current device

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        for indices in self.batch_sampler:
            faces = paddle.gather(self.faces, paddle.to_tensor(indices)).astype("float32")
            if self.dataset.flip:
                mirrored = paddle.to_tensor([self.dataset.mirrored(index) for index in indices]).reshape([-1, 1, 1, 1])
                faces = paddle.where(mirrored, paddle.flip(faces, axis=[2]), faces)
            # As to_model_range, to the bit: a true division (Paddle 2.6 turns `tensor / 127.5`
            # into a multiplication by 1 / 127.5, which rounds differently).
            yield paddle.divide(paddle.transpose(faces, [0, 3, 1, 2]), paddle.full([1], 127.5)) - 1.0
