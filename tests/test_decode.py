"""Files.decode_image through its two users, Reader.decode_face (what is trained on) and
CutImage.read_image (what faces are cropped from): every kind of image file, as a viewer shows
it."""
import struct
import zlib

import numpy as np
import pytest
from PIL import ExifTags, Image

from Pretreatment import CutImage
from Reader import decode_face


def four(values, dtype=np.uint8):
    """96x96 samples: values[0] top left, [1] top right, [2] bottom left, [3] bottom right."""
    values = np.asarray(values, dtype)
    image = np.empty((96, 96) + values.shape[1:], dtype)
    image[:48, :48], image[:48, 48:], image[48:, :48], image[48:, 48:] = values
    return image


def seen(rgb):
    """The colours of the four quadrants of a decoded [96, 96, 3] picture."""
    return [rgb[row, column].tolist() for row, column in ((24, 24), (24, 72), (72, 24), (72, 72))]


def save(pixels, **options):
    """A writer of pixels (whose dtype and shape choose Pillow's mode) to a PNG."""
    return lambda path: Image.fromarray(pixels).save(path, **options)


def palette(transparency=None):
    """A writer of a 4-colour palette PNG, each quadrant one entry: red, green, blue, dark."""
    def write(path):
        image = Image.fromarray(four([0, 1, 2, 3]))
        image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])  # L becomes P
        image.save(path, **({} if transparency is None else {"transparency": transparency}))
    return write


def sixteen_bit_png(samples, colour_type):
    """A writer of a 16-bit PNG (Pillow writes 16 bits of gray only): signature, IHDR, one IDAT
    of unfiltered big-endian rows, IEND. colour_type: 2 RGB, 4 gray+alpha, 6 RGBA."""
    def chunk(kind, data):
        checksum = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    def write(path):
        height, width = samples.shape[:2]
        rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)
        header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                         + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return write


WHITE = [255, 255, 255]
KINDS = {  # kind: (writer, the four quadrants as a viewer shows them)
    "8-bit grayscale": (save(four([0, 60, 200, 255])),
                        [[0] * 3, [60] * 3, [200] * 3, [255] * 3]),
    # 16-bit v shows as round(v * 255 / 65535): 1000 -> 4 and 60000 -> 233, where the high
    # byte would give 3 and 234.
    "16-bit grayscale": (save(four([1000, 60000, 32896, 65535], np.uint16)),
                         [[4] * 3, [233] * 3, [128] * 3, [255] * 3]),
    # (gray, alpha) on white: gray * alpha / 255 + 255 - alpha.
    "8-bit grayscale+alpha": (save(four([(0, 0), (0, 255), (100, 51), (200, 128)])),
                              [WHITE, [0] * 3, [224] * 3, [227] * 3]),
    "16-bit grayscale+alpha": (sixteen_bit_png(four([(0, 0), (1000, 65535), (60000, 65535),
                                                     (32896, 32896)], np.uint16), 4),
                               [WHITE, [4] * 3, [233] * 3, [191] * 3]),
    "palette": (palette(), [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]),
    # tRNS gives each entry an alpha: green opaque, blue half transparent, the fourth invisible.
    "palette with transparency": (palette(transparency=bytes([255, 255, 128, 0])),
                                  [[255, 0, 0], [0, 255, 0], [127, 127, 255], WHITE]),
    "8-bit RGB": (save(four([(255, 0, 0), (0, 255, 0), (10, 20, 30), (200, 100, 50)])),
                  [[255, 0, 0], [0, 255, 0], [10, 20, 30], [200, 100, 50]]),
    "16-bit RGB": (sixteen_bit_png(four([(1000, 60000, 32896), (65535, 0, 0), (0, 65535, 257 * 77),
                                         (60000, 1000, 65535)], np.uint16), 2),
                   [[4, 233, 128], [255, 0, 0], [0, 255, 77], [233, 4, 255]]),
    # A transparent pixel is white whatever colour it holds, black included.
    "8-bit RGBA": (save(four([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 0), (10, 200, 40, 100)])),
                   [WHITE, [255, 0, 0], WHITE, [159, 233, 171]]),
    "16-bit RGBA": (sixteen_bit_png(four([(0, 0, 0, 0), (1000, 60000, 32896, 65535),
                                          (65535, 0, 0, 32896), (0, 0, 0, 65535)], np.uint16), 6),
                    [WHITE, [4, 233, 128], [255, 127, 127], [0, 0, 0]]),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_image_decodes_as_a_viewer_shows_it_in_the_reader_and_the_cropper(tmp_path,
                                                                                       kind):
    write, expected = KINDS[kind]
    path = tmp_path / "picture.png"
    write(path)
    assert seen(decode_face(path)) == expected
    bgr = CutImage.read_image(path)
    assert bgr.shape == (96, 96, 3)
    assert seen(bgr[..., ::-1]) == expected


def test_a_jpeg_is_turned_upright_by_its_exif_orientation_in_the_reader_and_the_cropper(tmp_path):
    stored = np.zeros((96, 96, 3), np.uint8)
    stored[:48] = (255, 0, 0)  # red top half, as the camera stored it
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned 90 degrees clockwise: the top goes right
    path = tmp_path / "turned.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    for rgb in (decode_face(path), CutImage.read_image(path)[..., ::-1]):
        left, right = rgb[:, :40].mean(axis=(0, 1)), rgb[:, 56:].mean(axis=(0, 1))
        assert np.abs(left - [0, 0, 0]).max() < 8 and np.abs(right - [255, 0, 0]).max() < 8
