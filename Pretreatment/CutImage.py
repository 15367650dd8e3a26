"""Crop the anime faces out of a folder of illustrations into 96x96 RGB JPEGs for training.

    python Pretreatment/CutImage.py --src DataSet/raw --dst DataSet/faces

For each image under --src (recursively): grayscale, equalizeHist, then detectMultiScale with
lbpcascade_animeface (nagadomi, MIT). Each face box, widened by --margin on every side as far as
the image allows, is cut square, resized to --size with area interpolation and saved as
<dst>/<folder>/<file>-<i>.jpg, where <folder>/<file> is the source's path under --src (so
a/pic.jpg gives a/pic.jpg-0.jpg: no two sources share a crop's name). Files are spread over a
pool of processes, which end with the main process however it ends, and <dst>/manifest.jsonl
lists the sources done by that same path, so that a second run crops only new ones (delete it to
crop everything again, for example with other settings). --dst may not be --src or a folder
inside it, where its crops would be taken for sources.

A mistake a user can fix (a flag out of its range, a missing folder, a cascade that cannot be had)
ends in one sentence, "error: ...", and exit status 2, as in the other scripts; a run in which
not one new file could be read as an image exits 1, after its summary.

The cascade is --cascade, else Pretreatment/lbpcascade_animeface.xml, else downloaded once from
upstream into that path and checked against its known sha256.
"""

import argparse
import errno
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path

import cv2
import requests
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Files.py, also when run as a script
from Files import (  # noqa: E402
    FACES_FOLDER,
    IMAGE_EXTENSIONS,
    UserError,
    decode_image,
    os_error_sentence,
    read_json_lines,
    warnings_as_sentences,
    within,
    write_bytes,
)

# Upstream tells users to fetch the raw file from master; the digest pins the known version.
CASCADE_URL = os.environ.get(
    "LBPCASCADE_URL",
    "https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/lbpcascade_animeface.xml")
CASCADE_SHA256 = "9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30"
DEFAULT_CASCADE = Path(__file__).resolve().parent / "lbpcascade_animeface.xml"
JPEG_QUALITY = 95
READ_CHUNK = 1 << 20
# The ranges of the flags: past them a crop, or OpenCV's pyramid of scaled images, would take
# gigabytes of memory, or a value would overflow OpenCV's C int. The faces Train.py reads are 96
# pixels square.
MAX_SIZE = 1024  # --size
MAX_MIN_SIZE = 4096  # --min-size
# --scale-factor: the pyramid has a level for each step from the image's size down to --min-size,
# so a step much nearer 1 takes minutes and gigabytes per image; one past 2 misses most faces.
MIN_SCALE_FACTOR, MAX_SCALE_FACTOR = 1.01, 2.0
MAX_MIN_NEIGHBORS = 100  # --min-neighbors; 3 to 6 are usual
MAX_MARGIN = 2.0  # --margin: a crop up to five times the face box's width
# --workers: each is a process of its own holding OpenCV and a decoded illustration (hundreds of
# MB for a large one), and cropping is all computation, so processes past the cores only share
# them; a typo (--workers 1000000) would otherwise start a process per file.
MAX_WORKERS = 64


@dataclass(frozen=True)
class Settings:
    src: Path  # resolved, as list_sources resolves the sources
    dst: Path
    size: int
    min_size: int
    scale_factor: float
    min_neighbors: int
    margin: float


def find_cascade(path):
    if path:
        if not Path(path).is_file():
            raise UserError(f"there is no cascade file at {path}: pass the path of "
                            "lbpcascade_animeface.xml with --cascade.")
        return Path(path)
    if not DEFAULT_CASCADE.is_file():
        download_cascade(CASCADE_URL, DEFAULT_CASCADE)
    return DEFAULT_CASCADE


def download_cascade(url, dest):
    print(f"Downloading the face cascade from {url} to {dest}")
    try:
        response = requests.get(url, timeout=30)
        response.raise_for_status()
    except requests.RequestException as error:
        reason = "no connection" if error.response is None else f"HTTP {error.response.status_code}"
        raise UserError(f"could not download the face cascade from {url} ({reason}); "
                        "download that file by hand and pass it with --cascade PATH.") from None
    digest = hashlib.sha256(response.content).hexdigest()
    if digest != CASCADE_SHA256:
        raise UserError(f"the cascade downloaded from {url} has sha256 {digest}, not "
                        f"{CASCADE_SHA256}; download the right file by hand and pass it "
                        "with --cascade PATH.")
    write_bytes(dest, response.content)


def load_cascade(path):
    if not hasattr(cv2, "CascadeClassifier"):
        raise UserError(f"OpenCV {cv2.__version__} has no CascadeClassifier; install "
                        "opencv-python-headless<5 (or opencv-contrib-python-headless).")
    cascade = cv2.CascadeClassifier()
    try:
        loaded = cascade.load(str(path))
    except cv2.error:  # a file that is not XML at all (text, an image, an empty file)
        loaded = False
    if not loaded or cascade.empty():
        raise UserError(f"OpenCV cannot load {path} as a cascade: pass the path of "
                        "lbpcascade_animeface.xml with --cascade.")
    return cascade


def read_image(path):
    """The image as 8-bit BGR for OpenCV, decoded as Reader.py decodes it (Files.decode_image),
    or None if it cannot be read or decoded."""
    rgb = decode_image(path)
    return None if rgb is None else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def read_error(path):
    """Why a file that did not decode could not even be read, in the system's words ("Permission
    denied", "Input/output error"), or None when all of it reads, so that it is no image.
    decode_image says None for both; only a file that reads can be called "not an image"."""
    try:
        with open(path, "rb") as file:
            while file.read(READ_CHUNK):
                pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def detect_faces(cascade, image, settings):
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return cascade.detectMultiScale(gray, scaleFactor=settings.scale_factor,
                                    minNeighbors=settings.min_neighbors,
                                    minSize=(settings.min_size, settings.min_size))


def square_crop(image, box, margin):
    """The box widened by `margin` of its width on every side, by less where the image ends:
    the same on all four sides, so the crop stays square and centred on the face."""
    x, y, w, h = (int(v) for v in box)
    height, width = image.shape[:2]
    pad = min(int(round(margin * w)), x, y, width - x - w, height - y - h)
    return image[y - pad:y + h + pad, x - pad:x + w + pad]


_cascade = None
_settings = None


def load_worker(cascade_path, settings):
    global _cascade, _settings
    _cascade, _settings = load_cascade(cascade_path), settings


def init_pool_worker(cascade_path, settings):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    exit_with_parent()
    warnings_as_sentences()  # a spawned process starts with Python's own form of warnings
    cv2.setNumThreads(1)  # the pool already runs one process per core
    load_worker(cascade_path, settings)


def exit_with_parent():
    """End this worker as soon as the main process has ended, however it ended. A main process
    killed outright (SIGKILL, the OOM killer) never stops its pool, and the workers would wait
    for work for good: each holds the task queue's writing end too, so its reads never end.

    A thread watches the parent rather than Linux's prctl(PR_SET_PDEATHSIG): that signal comes
    when the thread that started the worker ends, not its process, and never when the parent died
    before it was set; the watch has neither catch, and works on macOS too."""
    parent = multiprocessing.parent_process()

    def watch():
        parent.join()  # returns once the parent is gone: its end of the spawn pipe closes
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def source_key(source, src):
    """A source's path under --src, as the manifest records it: unique, unlike its file name."""
    return source.relative_to(src).as_posix()


def crop_path(dst, key, i):
    """Where face i of the source `key` goes: the source's folders under dst, then its whole
    file name, extension included (a/pic.jpg and a/pic.png must not share a crop)."""
    return dst / f"{key}-{i}.jpg"


def crop_file(source):
    """Save the faces of one source. Return (source, crops written, None), or, for a source
    skipped, (source, None, (the summary's count, why in words)): a file that cannot be read, one
    that reads whole but does not decode as an image, or one whose crops' names the file system
    refuses as too long (its name and "-<i>.jpg" over 255 bytes), which must not stop the
    others."""
    image = read_image(source)
    if image is None:
        unreadable = read_error(source)
        if unreadable:
            return source, None, ("unreadable", f"it could not be read ({unreadable})")
        return source, None, ("not an image", "it does not decode as an image")
    key = source_key(source, _settings.src)
    crops = []
    try:
        for i, box in enumerate(detect_faces(_cascade, image, _settings)):
            face = cv2.resize(square_crop(image, box, _settings.margin),
                              (_settings.size, _settings.size), interpolation=cv2.INTER_AREA)
            # A 3-channel JPEG is RGB to every reader; OpenCV just holds it in BGR order.
            _, encoded = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            crop = crop_path(_settings.dst, key, i)
            write_bytes(crop, encoded.tobytes())
            crops.append(crop)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        for crop in crops:  # those written: a rerun crops the source again, under the same names
            crop.unlink()
        return source, None, ("name too long", "its name is too long for the names of its crops "
                              f"({error.strerror}); give it a shorter name, then rerun")
    return source, crops, None


def check_folders(src, dst):
    """Refuse a --src that is no folder, and a --dst whose crops would be read as sources: --src
    itself, or a folder inside it (sources are searched recursively). Links count as where they
    lead."""
    if not src.is_dir():
        raise UserError(f"there is no folder {src}: download images first with "
                        "Pretreatment/Crawler.py, or point --src at a folder of images.")
    if dst.resolve() == src.resolve():
        raise UserError(f"--dst {dst} is the --src folder itself, where the crops would be read "
                        "as sources; choose another --dst, such as DataSet/faces.")
    if src.resolve() in dst.resolve().parents:
        raise UserError(f"--dst {dst} is inside --src {src}, which is searched recursively, so "
                        "the crops would be read as sources; choose a --dst outside --src.")


def list_sources(src):
    """Image files under src, leaving out hidden files."""
    return sorted(path for path in src.resolve().rglob("*")
                  if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
                  and path.is_file())


def sources_done(records, src, dst):
    """The keys of the sources done. Records are {"file": key, "faces": n}, or, from versions
    that named crops <dst>/<stem>-<i>.jpg, {"stem", "source": absolute path, "faces"}: those count
    by their source's path, except sources whose stem another one shared, whose crops overwrote
    each other's. Their mixed crops are removed, so that they are all cropped again under their
    own names; unless one of them has gone from --src, whose faces would then be lost."""
    done = {record["file"] for record in records if isinstance(record.get("file"), str)}
    older = defaultdict(dict)  # stem -> {source path: faces}
    for record in records:
        if isinstance(record.get("stem"), str) and isinstance(record.get("source"), str):
            older[record["stem"]][Path(record["source"])] = record.get("faces")
    for stem, sources in older.items():
        keys = {source_key(source, src) for source in sources if source.is_relative_to(src)}
        shared = len(sources) > 1 and not keys <= done
        if shared and len(keys) == len(sources) and all(source.is_file() for source in sources):
            remove_older_crops(dst, stem, sources.values())
            tqdm.write(f"Cropping {', '.join(sorted(keys - done))} again: an older "
                       f"CutImage.py wrote their faces over each other's, as {dst / stem}-<i>.jpg.")
        else:
            done |= keys
    return done


def remove_older_crops(dst, stem, faces):
    """Remove <dst>/<stem>-<i>.jpg for every i that one of the sources' face counts reaches."""
    most = max((count for count in faces if isinstance(count, int)), default=0)
    for i in range(most):
        (dst / f"{stem}-{i}.jpg").unlink(missing_ok=True)


def run_crops(sources, cascade_path, settings, workers):
    """Yield (source, crops) as each source is done, in a process pool if workers > 1."""
    if workers == 1:
        load_worker(cascade_path, settings)
        yield from map(crop_file, sources)
        return
    # Spawned, not forked: a fork copies OpenCV's (or an importer's, like Paddle's) thread pools
    # in a state their missing threads never release, and the child can hang on its first call.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=init_pool_worker,
                             initargs=(cascade_path, settings)) as pool:
        pending = set()
        try:
            for source in sources:
                # A few tasks ahead of the workers, not one future per file of a huge folder.
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
                pending.add(pool.submit(crop_file, source))
            yield from (future.result() for future in as_completed(pending))
        finally:  # on Ctrl-C, let running crops finish and drop the queued ones
            pool.shutdown(wait=True, cancel_futures=True)


def cut_images(args):
    """Crop every new source under args.src; return the counts for the summary."""
    src, dst = Path(args.src), Path(args.dst)
    check_folders(src, dst)  # before anything is downloaded or created
    cascade_path = find_cascade(args.cascade)
    load_cascade(cascade_path)  # fail here, in one sentence, rather than in every worker
    dst.mkdir(parents=True, exist_ok=True)
    settings = Settings(src.resolve(), dst, args.size, args.min_size, args.scale_factor,
                        args.min_neighbors, args.margin)
    manifest = dst / "manifest.jsonl"
    done = sources_done(read_json_lines(manifest), settings.src, dst)
    sources = list_sources(src)
    # Largest first: a big illustration started last would keep one process busy after the
    # others are done.
    todo = sorted((source for source in sources if source_key(source, settings.src) not in done),
                  key=lambda source: -source.stat().st_size)
    counts = {"read": 0, "faces": 0, "no face": 0, "not an image": 0, "unreadable": 0,
              "name too long": 0, "done before": len(sources) - len(todo), "interrupted": False}
    results = run_crops(todo, cascade_path, settings, args.workers)
    try:
        record_results(results, len(todo), manifest, settings.src, counts)
    except KeyboardInterrupt:
        results.close()  # stops the pool now, not whenever the generator is collected
        counts["interrupted"] = True
    return counts


def record_results(results, total, manifest, src, counts):
    """Count each source's outcome as it comes, say why a source was skipped, and add each
    source cropped to the manifest."""
    with open(manifest, "a", encoding="utf-8") as log, \
            tqdm(results, total=total, unit="img", desc="cropping") as bar:
        for source, crops, skipped in bar:
            if skipped:
                kind, why = skipped
                counts[kind] += 1
                tqdm.write(f"Skipped {source}: {why}.")
                continue
            counts["read"] += 1
            counts["faces"] += len(crops)  # one file each: no two sources share a name
            counts["no face"] += not crops
            log.write(json.dumps({"file": source_key(source, src), "faces": len(crops)}) + "\n")
            log.flush()


def format_summary(counts, seconds):
    rate = counts["read"] / seconds if seconds > 0 else 0.0
    return "\n".join([
        f"Images read:     {counts['read']} ({rate:.1f} images/s)",
        f"Faces written:   {counts['faces']}",
        f"No face:         {counts['no face']}",
        f"Not an image:    {counts['not an image']}",
        f"Could not read:  {counts['unreadable']}",
        f"Name too long:   {counts['name too long']}",
        f"Done before:     {counts['done before']}",
    ])


def nothing_read(counts, src):
    """The sentence for a run in which every new source was skipped, or None."""
    skipped = counts["not an image"] + counts["unreadable"] + counts["name too long"]
    if counts["read"] or not skipped:
        return None
    too_long = f", name too long: {counts['name too long']}" if counts["name too long"] else ""
    return (f"None of the {skipped} new files under {src} could be cropped (could not be read: "
            f"{counts['unreadable']}, not an image: {counts['not an image']}{too_long}); fix their "
            "permissions or the disk, or remove them, then rerun.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default="DataSet/raw",
                        help="folder of illustrations, searched recursively (default DataSet/raw)")
    parser.add_argument("--dst", default=FACES_FOLDER,
                        help=f"folder for the face crops, neither --src nor inside it (default {FACES_FOLDER})")
    parser.add_argument("--size", type=within(int, 1, MAX_SIZE), default=96,
                        help=f"side of the saved square crops, pixels, 1 to {MAX_SIZE} (default 96)")
    parser.add_argument("--min-size", type=within(int, 1, MAX_MIN_SIZE), default=96,
                        help=f"smallest face detected, pixels, 1 to {MAX_MIN_SIZE}; smaller faces "
                             "would be upscaled (default 96)")
    parser.add_argument("--scale-factor", type=within(float, MIN_SCALE_FACTOR, MAX_SCALE_FACTOR), default=1.1,
                        help=f"detectMultiScale's step between scales, {MIN_SCALE_FACTOR:g} to "
                             f"{MAX_SCALE_FACTOR:g} (default 1.1)")
    parser.add_argument("--min-neighbors", type=within(int, 0, MAX_MIN_NEIGHBORS), default=5,
                        help="detectMultiScale's overlapping detections needed to keep a face, "
                             f"0 to {MAX_MIN_NEIGHBORS} (default 5)")
    parser.add_argument("--margin", type=within(float, 0, MAX_MARGIN), default=0.0,
                        help=f"fraction of the face box added on each side, 0 to {MAX_MARGIN:g}, less "
                             "where the image ends (default 0.0, the bare box)")
    parser.add_argument("--workers", type=within(int, 1, MAX_WORKERS),
                        default=min(os.cpu_count() or 1, MAX_WORKERS),
                        help=f"processes cropping in parallel, 1 to {MAX_WORKERS}; they end with this "
                             f"one, however it ends (default: one per CPU core, at most {MAX_WORKERS})")
    parser.add_argument("--cascade", default=None,
                        help="lbpcascade_animeface.xml to use (default "
                             "Pretreatment/lbpcascade_animeface.xml, downloaded if missing)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    warnings_as_sentences()  # Pillow's warning about a huge image, say, without a source line
    started = time.monotonic()
    try:
        counts = cut_images(args)
    except OSError as error:  # a full disk, say: the crops written are whole, and a rerun continues
        sentence = os_error_sentence(error)
        if sentence is None:
            raise  # not the machine's doing: a bug, so a traceback
        return refuse(sentence)
    except UserError as error:
        return refuse(error)
    print(format_summary(counts, time.monotonic() - started))
    if counts["interrupted"]:
        print("Interrupted: rerun the same command to crop the rest.")
        return 130
    problem = nothing_read(counts, args.src)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


def refuse(sentence):
    """End as Utils.run_main ends the other scripts on a UserError: one sentence, exit status 2."""
    print(f"error: {sentence}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
