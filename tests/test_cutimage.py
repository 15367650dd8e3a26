"""Pretreatment/CutImage.py on the shared illustrations and negatives, and the whole data path:
crawl from the local booru server, crop, read with Reader.py, one training step."""
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from booru_server import BooruServer
from conftest import ROOT, SHARED_DATA, run_script
from Pretreatment import Crawler, CutImage

CASCADE = SHARED_DATA / "cascade" / "lbpcascade_animeface.xml"
ILLUSTRATIONS = SHARED_DATA / "illustrations"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=(
    f"{SHARED_DATA} is absent: the cascade and illustrations only exist beside the project's "
    "own checkout"))


def cut(src, dst, *flags):
    args = CutImage.parse_args(["--src", str(src), "--dst", str(dst), "--cascade", str(CASCADE),
                                *flags])
    return CutImage.cut_images(args)


def sources_md_counts():
    """{file name: lbp faces} from the illustrations table of ../shared/data/SOURCES.md."""
    counts = {}
    for line in (SHARED_DATA / "SOURCES.md").read_text().splitlines():
        found = re.match(r"\| `illustrations/([^`]+)` \|[^|]*\|[^|]*\| (\d+) \|", line)
        if found:
            counts[found.group(1)] = int(found.group(2))
    return counts


def manifest_faces(dst):
    """{source path under --src: faces} from the manifest."""
    return {record["file"]: record["faces"] for record in
            map(json.loads, (dst / "manifest.jsonl").read_text().splitlines())}


def crops_of(dst, source):
    return sorted(dst.glob(f"{source}-*.jpg"))


def crops_on_disk(dst):
    return sorted(path.relative_to(dst).as_posix() for path in dst.rglob("*.jpg"))


@pytest.fixture(scope="module")
def illustration_crops(tmp_path_factory):
    """The shared illustrations cropped at --min-size 24, the setting SOURCES.md counted with,
    in this process (the pool is exercised on the negatives and the mixed sources)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    dst = tmp_path_factory.mktemp("faces")
    counts = cut(ILLUSTRATIONS, dst, "--min-size", "24", "--workers", "1")
    return dst, counts


@pytest.fixture
def mixed_sources(tmp_path):
    """One illustration as JPEG, grayscale PNG and RGBA PNG, a corrupt JPEG and a text file."""
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    image = Image.open(ILLUSTRATIONS / "pdmera_test.jpg")
    image.save(src / "colour.jpg", quality=95)
    image.convert("L").save(src / "nested" / "gray.png")
    rgba = image.convert("RGBA")
    alpha = np.full((image.height, image.width), 255, np.uint8)
    alpha[:40, :40] = 0  # a transparent corner, away from the faces
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(src / "nested" / "rgba.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 100)
    (src / "notes.txt").write_text("not an image")
    return src


@pytest.mark.slow
@needs_shared
def test_faces_per_illustration_match_sources_md(illustration_crops):
    dst, counts = illustration_crops
    expected = sources_md_counts()
    assert len(expected) == 13
    assert manifest_faces(dst) == expected
    assert {name: len(crops_of(dst, name)) for name in expected} == expected
    assert counts["read"] == 13 and counts["faces"] == sum(expected.values()) == 64
    assert counts["no face"] == 1 and counts["not an image"] == counts["unreadable"] == 0


@needs_shared
def test_every_crop_is_a_96x96_rgb_jpeg(illustration_crops):
    dst, _ = illustration_crops
    crops = sorted(dst.rglob("*.jpg"))
    assert len(crops) == 64
    for path in crops:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (96, 96))


@needs_shared
def test_negatives_give_no_face(tmp_path):
    counts = cut(SHARED_DATA / "negatives", tmp_path, "--min-size", "24", "--workers", "2")
    assert counts["read"] == 7 and counts["no face"] == 7 and counts["faces"] == 0
    assert not list(tmp_path.rglob("*.jpg"))


@needs_shared
def test_grayscale_and_rgba_sources_work_and_a_corrupt_one_is_skipped(mixed_sources, tmp_path,
                                                                      capsys):
    dst = tmp_path / "faces"
    counts = cut(mixed_sources, dst, "--min-size", "24", "--workers", "2")
    assert (counts["read"], counts["faces"], counts["not an image"], counts["unreadable"]) == (3, 6, 1, 0)
    out = capsys.readouterr().out
    assert f"Skipped {mixed_sources / 'broken.jpg'}: it does not decode as an image." in out
    assert manifest_faces(dst) == {"colour.jpg": 2, "nested/gray.png": 2, "nested/rgba.png": 2}
    for path in dst.rglob("*.jpg"):
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("RGB", (96, 96))


@needs_shared
def test_a_second_run_crops_only_new_sources(mixed_sources, tmp_path):
    dst = tmp_path / "faces"
    cut(mixed_sources, dst, "--min-size", "24", "--workers", "1")
    Image.open(ILLUSTRATIONS / "waifu2x_miku_CC_BY-NC.jpg").save(mixed_sources / "new.jpg")
    again = cut(mixed_sources, dst, "--min-size", "24", "--workers", "1")
    assert again["done before"] == 3
    assert (again["read"], again["faces"], again["not an image"]) == (1, 1, 1)
    assert len(list(dst.rglob("*.jpg"))) == 7


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_cascade(monkeypatch, tmp_path):
    """No cascade file, and its download refused: any attempt to fetch one fails at once."""
    monkeypatch.setattr(CutImage, "DEFAULT_CASCADE", tmp_path / "cascade" / "lbpcascade_animeface.xml")
    monkeypatch.setattr(CutImage, "CASCADE_URL", f"http://127.0.0.1:{closed_port()}/x.xml")


@pytest.mark.parametrize("where", ["the same folder", "a folder inside it", "a link to it",
                                   "a folder inside it through a link"])
def test_a_dst_whose_crops_would_be_read_as_sources_is_refused_before_anything_is_created(
        tmp_path, monkeypatch, capsys, where):
    src = tmp_path / "raw"
    (src / "site").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "site" / "a.jpg")
    (tmp_path / "link").symlink_to(src)
    dst = {"the same folder": src, "a folder inside it": src / "faces",
           "a link to it": tmp_path / "link", "a folder inside it through a link": tmp_path / "link" / "faces"}[where]
    offline_cascade(monkeypatch, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code = CutImage.main(["--src", str(src), "--dst", str(dst)])
    assert code == 2
    if where in ("the same folder", "a link to it"):
        expected = (f"--dst {dst} is the --src folder itself, where the crops would be read as "
                    "sources; choose another --dst, such as DataSet/faces.")
    else:
        expected = (f"--dst {dst} is inside --src {src}, which is searched recursively, so the "
                    "crops would be read as sources; choose a --dst outside --src.")
    assert capsys.readouterr().err == f"error: {expected}\n"
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no manifest, no cascade


@pytest.fixture
def same_names(tmp_path):
    """a/pic.jpg (2 faces), b/pic.jpg (1 face) and b/pic.png (2 faces): one file name thrice."""
    src = tmp_path / "src"
    for folder in ("a", "b"):
        (src / folder).mkdir(parents=True)
    shutil.copy(ILLUSTRATIONS / "pdmera_test.jpg", src / "a" / "pic.jpg")
    shutil.copy(ILLUSTRATIONS / "waifu2x_miku_CC_BY-NC.jpg", src / "b" / "pic.jpg")
    Image.open(ILLUSTRATIONS / "pdmera_test.jpg").save(src / "b" / "pic.png")
    return src


@needs_shared
def test_sources_sharing_a_file_name_keep_all_their_faces_and_the_summary_counts_the_files(
        same_names, tmp_path):
    dst = tmp_path / "faces"
    counts = cut(same_names, dst, "--min-size", "24", "--workers", "1")
    assert crops_on_disk(dst) == ["a/pic.jpg-0.jpg", "a/pic.jpg-1.jpg", "b/pic.jpg-0.jpg",
                                  "b/pic.png-0.jpg", "b/pic.png-1.jpg"]
    assert "Faces written:   5" in CutImage.format_summary(counts, seconds=1.0)
    assert manifest_faces(dst) == {"a/pic.jpg": 2, "b/pic.jpg": 1, "b/pic.png": 2}


@needs_shared
def test_a_source_added_under_a_file_name_already_cropped_is_cropped_too(same_names, tmp_path):
    dst = tmp_path / "faces"
    later = tmp_path / "later.jpg"
    (same_names / "b" / "pic.jpg").rename(later)
    cut(same_names, dst, "--min-size", "24", "--workers", "1")
    later.rename(same_names / "b" / "pic.jpg")
    again = cut(same_names, dst, "--min-size", "24", "--workers", "1")
    assert (again["read"], again["faces"], again["done before"]) == (1, 1, 2)
    assert crops_of(dst, "b/pic.jpg") == [dst / "b" / "pic.jpg-0.jpg"]


@needs_shared
def test_an_older_manifest_keeps_its_sources_done_but_crops_again_those_whose_faces_collided(
        same_names, tmp_path, capsys):
    """A manifest as versions that named crops <stem>-<i>.jpg left it: a/pic.jpg and b/pic.jpg
    wrote over each other's pic-0.jpg, b/pic.png was skipped as done, solo.jpg is fine."""
    src, dst = same_names.resolve(), tmp_path / "faces"
    shutil.copy(ILLUSTRATIONS / "waifu2x_miku_CC_BY-NC.jpg", src / "solo.jpg")
    dst.mkdir()
    older = [("pic", "a/pic.jpg", 2), ("pic", "b/pic.jpg", 1), ("solo", "solo.jpg", 1)]
    (dst / "manifest.jsonl").write_text("".join(
        json.dumps({"stem": stem, "source": str(src / name), "faces": faces}) + "\n"
        for stem, name, faces in older))
    for name in ("pic-0.jpg", "pic-1.jpg", "solo-0.jpg"):
        Image.new("RGB", (96, 96)).save(dst / name)
    counts = cut(same_names, dst, "--min-size", "24", "--workers", "1")
    assert (counts["read"], counts["faces"], counts["done before"]) == (3, 5, 1)
    assert crops_on_disk(dst) == ["a/pic.jpg-0.jpg", "a/pic.jpg-1.jpg", "b/pic.jpg-0.jpg",
                                  "b/pic.png-0.jpg", "b/pic.png-1.jpg", "solo-0.jpg"]
    assert "Cropping a/pic.jpg, b/pic.jpg again" in capsys.readouterr().out
    assert cut(same_names, dst, "--workers", "1")["done before"] == 4


def test_margin_widens_the_box_evenly_as_far_as_the_image_allows():
    image = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3)
    inside = CutImage.square_crop(image, (40, 30, 20, 20), margin=0.5)
    assert inside.shape[:2] == (40, 40)
    assert (inside == image[20:60, 30:70]).all()
    near_edge = CutImage.square_crop(image, (4, 30, 20, 20), margin=0.5)  # 4 px to the left edge
    assert near_edge.shape[:2] == (28, 28)
    assert (near_edge == image[26:54, 0:28]).all()
    assert (CutImage.square_crop(image, (4, 30, 20, 20), margin=0.0) == image[30:50, 4:24]).all()


def test_offline_cascade_download_ends_in_one_error_sentence_and_exit_status_2(tmp_path, monkeypatch,
                                                                              capsys):
    url = f"http://127.0.0.1:{closed_port()}/lbpcascade_animeface.xml"
    monkeypatch.setattr(CutImage, "DEFAULT_CASCADE", tmp_path / "lbpcascade_animeface.xml")
    monkeypatch.setattr(CutImage, "CASCADE_URL", url)
    (tmp_path / "src").mkdir()
    code = CutImage.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "faces")])
    assert code == 2
    assert capsys.readouterr().err == (f"error: could not download the face cascade from {url} (no "
                                       "connection); download that file by hand and pass it with "
                                       "--cascade PATH.\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


@needs_shared
@pytest.mark.parametrize("served, good", [(CASCADE, True),
                                          (CASCADE.with_name("lbpcascade_frontalface_opencv.xml"), False)],
                         ids=["the known file", "another file"])
def test_the_downloaded_cascade_is_kept_only_with_the_known_sha256(tmp_path, monkeypatch, capsys,
                                                                   served, good):
    dest = tmp_path / "model" / "lbpcascade_animeface.xml"
    dest.parent.mkdir()
    (tmp_path / "src").mkdir()
    with BooruServer(SHARED_DATA) as server:
        server.bodies["/lbpcascade_animeface.xml"] = served.read_bytes()
        monkeypatch.setattr(CutImage, "DEFAULT_CASCADE", dest)
        monkeypatch.setattr(CutImage, "CASCADE_URL", f"{server.url}/lbpcascade_animeface.xml")
        code = CutImage.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "faces")])
    if good:
        assert code == 0 and dest.read_bytes() == CASCADE.read_bytes()
    else:
        assert code == 2 and capsys.readouterr().err.startswith("error: the cascade downloaded from")
        assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("kind", ["text", "empty", "jpeg", "xml"])
def test_a_cascade_file_that_is_no_cascade_ends_in_one_sentence_and_exit_status_2(tmp_path, capfd,
                                                                                  kind):
    cascade = tmp_path / "cascade.xml"
    texts = {"text": "not a cascade\n", "empty": "",
             "xml": '<?xml version="1.0"?>\n<opencv_storage></opencv_storage>\n'}
    if kind == "jpeg":
        Image.new("RGB", (8, 8)).save(cascade, "JPEG")
    else:
        cascade.write_text(texts[kind])
    (tmp_path / "src").mkdir()
    code = CutImage.main(["--src", str(tmp_path / "src"), "--dst", str(tmp_path / "faces"),
                          "--cascade", str(cascade)])
    assert code == 2
    assert capfd.readouterr().err == (f"error: OpenCV cannot load {cascade} as a cascade: pass the "
                                      "path of lbpcascade_animeface.xml with --cascade.\n")


def test_a_missing_source_folder_ends_in_one_error_sentence_and_exit_status_2(tmp_path):
    result = run_script("Pretreatment/CutImage.py", "--src", tmp_path / "nowhere", "--dst",
                        tmp_path / "faces", check=False)
    assert result.returncode == 2
    assert result.stderr == (f"error: there is no folder {tmp_path / 'nowhere'}: download images "
                             "first with Pretreatment/Crawler.py, or point --src at a folder of "
                             "images.\n")
    assert not (tmp_path / "faces").exists()


def test_a_full_disk_ends_in_one_sentence_and_any_other_os_error_in_a_traceback(tmp_path, monkeypatch, capsys):
    def cut(error):
        def raising(args):
            raise error
        return raising

    full = OSError(errno.ENOSPC, "No space left on device", "/mnt/faces/a.jpg")
    monkeypatch.setattr(CutImage, "cut_images", cut(full))
    assert CutImage.main(["--src", str(tmp_path), "--dst", str(tmp_path / "faces")]) == 2
    assert capsys.readouterr().err == ("error: /mnt/faces/a.jpg could not be written: the disk is full (No space "
                                       "left on device); free some space and run it again.\n")
    monkeypatch.setattr(CutImage, "cut_images", cut(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError, match="Input/output error"):
        CutImage.main(["--src", str(tmp_path), "--dst", str(tmp_path / "faces")])


@pytest.mark.parametrize("flag, value, wanted", [
    ("--size", "100000", "a whole number from 1 to 1024"),  # a 30 GB crop
    ("--size", "0", "a whole number from 1 to 1024"),
    ("--min-size", "99999999999999", "a whole number from 1 to 4096"),  # beyond OpenCV's C int
    ("--scale-factor", "nan", "a number from 1.01 to 2"),
    ("--scale-factor", "inf", "a number from 1.01 to 2"),
    ("--scale-factor", "1", "a number from 1.01 to 2"),
    ("--min-neighbors", "99999999999999", "a whole number from 0 to 100"),
    ("--margin", "nan", "a number from 0 to 2"),
    ("--margin", "inf", "a number from 0 to 2"),
    ("--margin", "-0.1", "a number from 0 to 2"),
    ("--workers", "0", "a whole number from 1 to 64"),
    ("--workers", "two", "a whole number from 1 to 64"),
    ("--workers", "1000000", "a whole number from 1 to 64"),  # a process for each file
])
def test_a_flag_out_of_its_range_is_refused_in_one_sentence_that_gives_the_range(capsys, flag, value,
                                                                                 wanted):
    with pytest.raises(SystemExit) as exit:
        CutImage.parse_args([flag, value])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: argument {flag}: '{value}' is not {wanted}")


def test_the_ends_of_each_flags_range_are_accepted():
    largest = CutImage.parse_args(["--size", "1024", "--min-size", "4096", "--scale-factor", "2",
                                   "--min-neighbors", "100", "--margin", "2", "--workers", "64"])
    assert (largest.size, largest.min_size, largest.scale_factor, largest.min_neighbors,
            largest.margin, largest.workers) == (1024, 4096, 2.0, 100, 2.0, 64)
    smallest = CutImage.parse_args(["--size", "1", "--min-size", "1", "--scale-factor", "1.01",
                                    "--min-neighbors", "0", "--margin", "0", "--workers", "1"])
    assert (smallest.size, smallest.min_size, smallest.scale_factor, smallest.min_neighbors,
            smallest.margin, smallest.workers) == (1, 1, 1.01, 0, 0.0, 1)


@pytest.mark.parametrize("cores, workers", [(3, 3), (1000, 64)])
def test_the_workers_are_one_per_core_by_default_but_at_most_64_as_help_says(monkeypatch, capsys, cores,
                                                                             workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert CutImage.parse_args([]).workers == workers
    with pytest.raises(SystemExit):
        CutImage.parse_args(["--help"])
    assert "--workers WORKERS processes cropping in parallel, 1 to 64;" in " ".join(capsys.readouterr().out.split())


@needs_shared
def test_a_source_whose_crops_names_would_be_too_long_is_skipped_in_one_line_and_the_rest_cropped(
        tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "faces"
    src.mkdir()
    too_long = src / ("a" * 248 + ".jpg")  # 252 characters, a legal name; its crops' are not
    nearly = src / ("b" * 236 + ".jpg")  # its crops' names fit, and their temporary files' must too
    for path in (too_long, nearly):
        shutil.copy(ILLUSTRATIONS / "pdmera_test.jpg", path)  # 2 faces
    shutil.copy(ILLUSTRATIONS / "waifu2x_miku_CC_BY-NC.jpg", src / "short.jpg")  # 1 face
    counts = cut(src, dst, "--min-size", "24", "--workers", "1")
    assert (counts["read"], counts["faces"], counts["name too long"]) == (2, 3, 1)
    assert "Name too long:   1" in CutImage.format_summary(counts, seconds=1.0)
    assert (f"Skipped {too_long.resolve()}: its name is too long for the names of its crops (File name "
            "too long); give it a shorter name, then rerun.\n") in capsys.readouterr().out
    assert manifest_faces(dst) == {nearly.name: 2, "short.jpg": 1}
    assert crops_on_disk(dst) == [f"{nearly.name}-0.jpg", f"{nearly.name}-1.jpg", "short.jpg-0.jpg"]
    assert not [path for path in dst.iterdir() if path.name.endswith(".tmp")]
    again = cut(src, dst, "--min-size", "24", "--workers", "1")  # every rerun goes past it too
    assert (again["read"], again["name too long"], again["done before"]) == (0, 1, 2)


def huge_for_pillow(tmp_path):
    """A folder that lowers Pillow's limit against decompression bombs to 5,000 pixels in every
    Python process started with it on PYTHONPATH (sitecustomize), spawned workers included; so a
    100x60 image stands in for one of 10,000x9,000."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("from PIL import Image\nImage.MAX_IMAGE_PIXELS = 5000\n")
    return {**os.environ, "PYTHONPATH": str(site)}


def huge_image_warning(path):
    return (f"warning: {path} is a very large image (6,000 pixels, over Pillow's limit of 5,000 against "
            "decompression bombs); it is decoded anyway, which takes much memory.\n")


def test_pillows_warning_of_a_huge_image_is_one_sentence_naming_each_file(tmp_path):
    """Files.warnings_as_sentences, as every script has it (Evaluate.py and Train.py through Utils)."""
    images = [tmp_path / "a.png", tmp_path / "b.png"]  # the same size: each gets its line
    for path in images:
        Image.new("RGB", (100, 60), "white").save(path)
    decode = ("import sys; import Files; Files.warnings_as_sentences(); "
              "[Files.decode_image(path) for path in sys.argv[1:]]")
    result = subprocess.run([sys.executable, "-c", decode, *images], cwd=ROOT, capture_output=True, text=True,
                            env=huge_for_pillow(tmp_path), timeout=120)
    assert result.stderr == "".join(map(huge_image_warning, images))


@needs_shared
@pytest.mark.parametrize("workers", ["1", "2"])
def test_cutimage_says_pillows_warning_of_a_huge_image_in_one_sentence_in_each_worker(tmp_path, workers):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (100, 60), "white").save(src / "huge.png")
    result = subprocess.run([sys.executable, "Pretreatment/CutImage.py", "--src", src, "--dst",
                             tmp_path / "faces", "--cascade", CASCADE, "--workers", workers],
                            cwd=ROOT, capture_output=True, text=True, env=huge_for_pillow(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert huge_image_warning(src.resolve() / "huge.png") in result.stderr
    assert "DecompressionBombWarning" not in result.stderr and "warnings.warn" not in result.stderr


@needs_shared
def test_the_command_line_crops_and_prints_a_summary(mixed_sources, tmp_path):
    result = run_script("Pretreatment/CutImage.py", "--src", mixed_sources, "--dst",
                        tmp_path / "faces", "--min-size", "24", "--cascade", CASCADE)
    assert "Faces written:   6" in result.stdout and "Not an image:    1" in result.stdout
    assert "Could not read:  0" in result.stdout


def unreadable_through_io_error(path):
    """A file every read of which fails with a real EIO: a link to /proc/self/mem, the reading
    process's own memory, whose offset 0 is an address never mapped."""
    if not Path("/proc/self/mem").is_file():
        pytest.skip("needs Linux's /proc/self/mem for a file that fails to read")
    path.symlink_to("/proc/self/mem")
    return path


def reading_denied_to_root():
    """The command prefix under which a chmod 000 file cannot be read: none for an ordinary user;
    for root, which reads any file, setpriv dropping the two capabilities that let it."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("runs as root without setpriv, so no file's permissions can deny it reading")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


@needs_shared
def test_a_file_that_may_not_be_read_is_reported_apart_from_one_that_does_not_decode(mixed_sources,
                                                                                     tmp_path):
    secret = mixed_sources / "secret.jpg"
    shutil.copy(ILLUSTRATIONS / "pdmera_test.jpg", secret)
    secret.chmod(0)
    result = subprocess.run([*reading_denied_to_root(), sys.executable, "Pretreatment/CutImage.py",
                             "--src", mixed_sources, "--dst", tmp_path / "faces", "--min-size", "24",
                             "--cascade", CASCADE, "--workers", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    src = mixed_sources.resolve()
    assert f"Skipped {src / 'secret.jpg'}: it could not be read (Permission denied)." in result.stdout
    assert f"Skipped {src / 'broken.jpg'}: it does not decode as an image." in result.stdout
    assert "Images read:     3" in result.stdout
    assert "Not an image:    1" in result.stdout and "Could not read:  1" in result.stdout


@needs_shared
def test_a_file_whose_reads_fail_with_an_io_error_is_reported_as_one_that_could_not_be_read(
        mixed_sources, tmp_path, capsys):
    unreadable_through_io_error(mixed_sources / "failing.jpg")
    counts = cut(mixed_sources, tmp_path / "faces", "--min-size", "24", "--workers", "1")
    assert (counts["read"], counts["not an image"], counts["unreadable"]) == (3, 1, 1)
    out = capsys.readouterr().out
    assert (f"Skipped {mixed_sources.resolve() / 'failing.jpg'}: it could not be read "
            "(Input/output error).") in out


@needs_shared
def test_a_run_in_which_nothing_could_be_read_exits_1_with_one_sentence(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    unreadable_through_io_error(src / "failing.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 100)
    code = CutImage.main(["--src", str(src), "--dst", str(tmp_path / "faces"), "--cascade",
                          str(CASCADE), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Images read:     0" in captured.out
    assert captured.err.splitlines()[-1] == (
        f"None of the 2 new files under {src} could be cropped (could not be read: 1, not an "
        "image: 1); fix their permissions or the disk, or remove them, then rerun.")


def processes_whose_parent_is(pid):
    """Process ids whose parent is pid, from /proc (the field after the command's closing paren)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while being listed
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def running(pid):
    """Whether pid still runs; a zombie, ended and waiting to be reaped, does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_a_source_done(dst, process, seconds):
    """Until the run has listed a source in its manifest, or ended, or `seconds` have passed."""
    manifest = dst / "manifest.jsonl"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists() and manifest.read_text().strip():
            return
        time.sleep(0.1)


@pytest.mark.slow
@needs_shared
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table in /proc")
def test_killing_the_main_process_outright_ends_its_workers_within_seconds(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "faces"
    src.mkdir()
    for i in range(60):  # more work than two processes do in seconds, so the kill lands mid-run
        (src / f"{i}.jpg").symlink_to(ILLUSTRATIONS / "xavierjiezou_test_2.jpg")
    main = subprocess.Popen([sys.executable, "Pretreatment/CutImage.py", "--src", src, "--dst", dst,
                             "--cascade", CASCADE, "--min-size", "24", "--workers", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = []
    try:
        wait_for_a_source_done(dst, main, seconds=60)
        children = processes_whose_parent_is(main.pid)  # the workers and multiprocessing's tracker
        assert main.poll() is None and len(children) >= 2, "the run was not caught mid-run"
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 15  # they end at once; the margin is for a busy machine
        while any(map(running, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if running(pid)]
    finally:
        if main.poll() is None:
            main.kill()
        for pid in filter(running, children):
            os.kill(pid, signal.SIGKILL)  # left behind by a failure: this test's own processes


@pytest.mark.slow
@needs_shared
def test_end_to_end_crawl_crop_read_and_train_one_step(tmp_path):
    if not (ROOT / "Train.py").is_file() or not (ROOT / "Reader.py").is_file():
        pytest.skip("Reader.py and Train.py are not in this checkout yet")
    from Reader import FaceDataset
    raw, faces = tmp_path / "raw", tmp_path / "faces"
    with BooruServer(SHARED_DATA) as server:
        server.moebooru_posts = server.moebooru_posts[:2]
        for post, picture in zip(server.moebooru_posts, ["pdmera_test.jpg", "waifu2x_miku_CC_BY-NC.jpg"]):
            path = re.sub(r"^https?://[^/]+", "", post["sample_url"])
            server.bodies[path] = (ILLUSTRATIONS / picture).read_bytes()  # 2 faces and 1
        assert Crawler.main(["--site", "konachan", "--base-url", server.url, "--out", str(raw),
                             "--delay", "0"]) == 0
    assert len(list((raw / "konachan").glob("*.jpg"))) == 2
    assert cut(raw, faces, "--min-size", "24", "--workers", "1")["faces"] == 3

    dataset = FaceDataset(faces)
    assert len(dataset) == 3
    face = np.asarray(dataset[0])
    assert face.shape == (3, 96, 96) and face.dtype == np.float32
    assert -1 <= face.min() < face.max() <= 1

    run_script("Train.py", "--data", faces, "--epochs", 1, "--batch-size", 2,
               "--model-dir", tmp_path / "Model", "--output", tmp_path / "Output",
               "--num-workers", 0, "--device", "cpu")
    assert (tmp_path / "Model" / "G.safetensors").is_file()
