"""File helpers that need no Paddle, so that Pretreatment's scripts can use them too: atomic
writes, JSON, checking that a folder can be written before any work goes into it, decoding an
image file the way a viewer shows it, and the flag types that refuse a wrong value in one sentence."""
import argparse
import errno
import json
import math
import os
import re
import shutil
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image


class UserError(Exception):
    """A mistake the user can fix (a missing folder, a wrong flag): shown as one sentence by
    Utils.run_main. It lives here, without Paddle, so that these helpers can raise it too."""


def os_error_sentence(error):
    """The one sentence for an OSError that the machine, not the program, caused: a full disk, a
    name too long for the file system, a file that may not be written. None for any other, which
    stays a traceback, since it may be a bug."""
    name = error.filename or "a file"
    if len(str(name)) > 80:
        name = f"{str(name)[:40]}...{str(name)[-30:]}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{name} could not be written: the disk is full ({error.strerror}); free some space and run it again."
    if error.errno == errno.ENAMETOOLONG:
        return f"{name} is too long a name for the file system ({error.strerror}); use a shorter path."
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{name} cannot be written ({error.strerror}); fix its permissions or name another place."
    return None


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


def within(kind, least, most=math.inf):
    """An argparse type: text -> kind(text) from least to most, refused as argument_type says
    ("'nan' is not a number from 0 to 600"); never NaN or infinite, even without a most."""
    wanted = "a whole number" if kind is int else "a number"
    wanted += f" of at least {least:g}" if most == math.inf else f" from {least:g} to {most:g}"
    return argument_type(kind, lambda value: math.isfinite(value) and least <= value <= most, wanted)


def warnings_as_sentences():
    """Print the warnings meant for users as "warning: <sentence>", without the file and source
    line Python adds for programmers: this project's own (UserWarning), and Pillow's about an image
    of very many pixels, a RuntimeWarning (DecompressionBombWarning) whose words name no file, so
    the sentence names the one open_image is opening. Each such image gets its line, not only the
    first of a size. Other categories keep Python's form."""
    plain = warnings.formatwarning

    def sentence(message, category, filename, lineno, line=None):
        if category is UserWarning:
            return f"warning: {message}\n"
        if issubclass(category, Image.DecompressionBombWarning):
            return f"warning: {huge_image_sentence(message)}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = sentence
    warnings.filterwarnings("always", category=Image.DecompressionBombWarning)


_opening = threading.local()  # .path: the file open_image is opening in this thread


@contextmanager
def open_image(path):
    """Image.open(path) for the block. Pillow's warning about an image of very many pixels, given
    while it opens, names no file; warnings_as_sentences finds the file here. Per thread, as the
    reader decodes on several."""
    _opening.path = path
    try:
        image = Image.open(path)
    finally:
        _opening.path = None
    with image:
        yield image


def huge_image_sentence(message):
    """Pillow's DecompressionBombWarning in this project's words, with the file open_image is
    opening; Pillow's own words when that file or the pixel count is unknown."""
    path = getattr(_opening, "path", None)
    pixels = re.search(r"\((\d+) pixels\)", str(message))
    if path is None or pixels is None:
        return str(message)
    return (f"{path} is a very large image ({int(pixels.group(1)):,} pixels, over Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} against decompression bombs); it is decoded anyway, which "
            "takes much memory.")


NAME_MAX = 255  # bytes in a file name, on Linux's, macOS's and Windows' file systems alike
# What mkstemp adds to a temporary file's prefix: 8 random characters and the suffix ".tmp".
TEMPORARY_TAIL = 8 + len(".tmp")


def atomic_write(path, write):
    """Call write(temporary_path), flush it to disk, then rename it onto path. A crash at any
    moment leaves either the old file or the new one under path, never half of one, and no
    temporary file behind unless the process itself is killed. The temporary file is
    .<path's name>.<random>.tmp, its name cut short where that would pass NAME_MAX, so that any
    name the file system takes can be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    room = NAME_MAX - TEMPORARY_TAIL - len("..")
    prefix = f".{os.fsdecode(os.fsencode(path.name)[:room])}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes private files; models and pictures are meant to be shared
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path, data):
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_json(path):
    """The JSON value in path; raises ValueError (JSONDecodeError) for text that is not JSON."""
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 text: {error}") from None


def read_json_lines(path):
    """The JSON objects of a JSON-lines file (a manifest), in order; [] if there is no file. A line
    that is not a whole object, as a process killed mid-write leaves, is passed over."""
    records = []
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def write_json(data, path):
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


def fsync_folder(folder):
    """Make the renames inside folder durable (a power cut after os.replace can otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def writable_folder(folder, flag):
    """Create folder if needed and prove it can be written, by writing and removing a small file.
    Raises UserError with one sentence naming the command-line flag when it cannot."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder; name a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        raise UserError(f"{flag} {folder} cannot be written ({error.strerror or error}); "
                        f"free some space, fix its permissions or name another folder.") from None
    return folder


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
FACES_FOLDER = "DataSet/faces"  # where CutImage.py puts its crops, and where every script reads faces by default
# Pillow raises SyntaxError for some files that are not what their header says.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# EXIF orientation -> the turn that shows the picture upright (ImageOps.exif_transpose's table).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def decode_image(path):
    """uint8 [H, W, 3] RGB of an image file as a viewer shows it, or None if it cannot be decoded.

    8 or 16 bits a sample; grayscale, grayscale with alpha, palette (with or without transparent
    entries), RGB or RGBA. Transparent pixels are laid on white, 16-bit samples are scaled to
    8 bits as round(v * 255 / 65535), and the EXIF orientation is applied. The reader and the
    face cropper both decode with this, so that they train on and crop the same pixels."""
    try:
        with open_image(path) as image:
            colour, alpha, full = samples(path, image)  # decodes fully: a truncated file raises
            orientation = image.getexif().get(ExifTags.Base.Orientation)
    except DECODE_ERRORS:
        return None
    rgb = on_white(colour, alpha, full)
    if orientation in UPRIGHT:
        rgb = np.asarray(Image.fromarray(rgb).transpose(UPRIGHT[orientation]))
    return rgb


def samples(path, image):
    """(colour [H, W, 1 or 3], alpha [H, W] or None, the value of full intensity) of an opened
    image, as stored: 255 for 8-bit samples, 65535 for 16-bit ones."""
    if image.format == "PNG" and image.mode in ("RGB", "RGBA") and png_bit_depth(path) == 16:
        return sixteen_bit_colour(path)
    if image.mode.startswith("I"):  # 16-bit grayscale: I;16 (Pillow before 10 says I)
        values = np.clip(np.asarray(image), 0, 65535)
        key = image.info.get("transparency")  # a PNG's one transparent gray value
        alpha = None if key is None else np.where(values == key, 0, 65535)
        return values[..., None], alpha, 65535
    if "transparency" in image.info or image.mode not in ("L", "LA", "RGB", "RGBA"):
        # Palette, bilevel, CMYK, and colours marked transparent by a tRNS chunk.
        has_alpha = "transparency" in image.info or "A" in image.getbands()
        image = image.convert("RGBA" if has_alpha else "RGB")
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if image.mode in ("LA", "RGBA"):
        return pixels[..., :-1], pixels[..., -1], 255
    return pixels, None, 255


def png_bit_depth(path):
    """Bits a sample of a PNG, read from its IHDR chunk, which follows the 8-byte signature."""
    with open(path, "rb") as file:
        header = file.read(26)
    return header[24] if len(header) == 26 and header[12:16] == b"IHDR" else None


def sixteen_bit_colour(path):
    """Samples of a 16-bit RGB, RGBA or grayscale+alpha PNG, all 16 bits of them: Pillow keeps
    only the high byte of these, OpenCV keeps all. Imported here, as nothing else of the reader
    needs OpenCV."""
    import cv2

    pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 3:
        raise OSError(f"OpenCV cannot decode {path}")
    alpha = pixels[..., 3] if pixels.shape[2] == 4 else None
    return pixels[..., 2::-1], alpha, 65535  # OpenCV's BGR(A) order, turned into RGB


def on_white(colour, alpha, full):
    """uint8 RGB from samples in 0..full: each pixel laid on white by its alpha, and rescaled."""
    if alpha is None and full == 255:
        rgb = colour
    else:
        opacity = 1.0 if alpha is None else alpha[..., None].astype(np.float32) / full
        rgb = np.rint((colour.astype(np.float32) / full * opacity + 1 - opacity) * 255)
    rgb = rgb.astype(np.uint8, copy=False)
    return np.ascontiguousarray(np.broadcast_to(rgb, colour.shape[:2] + (3,)))


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
