"""Reader.py: folder -> float32 CHW faces in [-1, 1], corrupt files skipped, reproducible batches."""
import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from Reader import (
    DataSetError,
    EpochBatchSampler,
    FaceDataset,
    make_loader,
    to_model_range,
)


def save(folder, name, pixels, mode=None):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(folder / name)
    return folder / name


def asymmetric_face():
    """Red top-left quarter, blue bottom strip: any swap or flip of the axes shows."""
    pixels = np.zeros((96, 96, 3), np.uint8)
    pixels[:48, :48] = (255, 0, 0)
    pixels[80:, :] = (0, 0, 255)
    return pixels


def test_a_face_keeps_its_orientation_as_channels_height_width(tmp_path):
    save(tmp_path, "face.png", asymmetric_face())
    face = FaceDataset(tmp_path)[0]
    assert face.shape == (3, 96, 96) and face.dtype == np.float32
    assert face[:, 10, 10].tolist() == [1.0, -1.0, -1.0]   # row 10, column 10: red
    assert face[:, 10, 80].tolist() == [-1.0, -1.0, -1.0]  # row 10, column 80: black
    assert face[:, 90, 10].tolist() == [-1.0, -1.0, 1.0]   # row 90: blue


def test_pixels_map_linearly_onto_minus_one_to_one():
    expected = [-1.0, 1.0, pytest.approx(-0.00392, abs=1e-4)]
    assert to_model_range(np.array([[[0, 255, 127]]], np.uint8)).ravel().tolist() == expected


def test_grayscale_and_rgba_become_rgb_and_other_sizes_are_resized(tmp_path):
    save(tmp_path, "gray.png", np.full((96, 96), 200, np.uint8), "L")
    rgba = np.zeros((50, 70, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 255
    save(tmp_path, "rgba.png", rgba, "RGBA")
    dataset = FaceDataset(tmp_path)
    gray, green = dataset[0], dataset[1]
    assert gray.shape == green.shape == (3, 96, 96)
    assert np.allclose(gray, 200 / 127.5 - 1)
    assert np.allclose(green[1], 1.0) and np.allclose(green[0], -1.0)


def test_folders_are_searched_recursively_for_image_extensions_only(tmp_path):
    save(tmp_path / "a" / "b", "deep.JPG", asymmetric_face())
    save(tmp_path, "top.webp", asymmetric_face())
    (tmp_path / "notes.txt").write_text("not an image")
    assert [path.name for path in FaceDataset(tmp_path).paths] == ["deep.JPG", "top.webp"]


def test_unreadable_and_truncated_files_are_skipped_with_one_warning(tmp_path):
    save(tmp_path, "good.png", asymmetric_face())
    (tmp_path / "garbage.jpg").write_bytes(b"this is no jpeg")
    whole = (save(tmp_path, "whole.jpg", asymmetric_face())).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(UserWarning, match="2 of 4 files") as caught:
        dataset = FaceDataset(tmp_path)
    assert len(caught) == 1
    assert len(dataset) == 2
    assert sorted(path.name for path in dataset.skipped) == ["garbage.jpg", "truncated.jpg"]


def test_a_missing_or_empty_folder_is_one_sentence_pointing_to_pretreatment(tmp_path):
    with pytest.raises(DataSetError, match=r"does not exist.*Pretreatment/"):
        FaceDataset(tmp_path / "nowhere")
    with pytest.raises(DataSetError, match=r"holds no images.*Pretreatment/"):
        FaceDataset(tmp_path)


def test_limit_takes_the_first_images_in_path_order(tmp_path):
    for name in ["c.png", "a.png", "b.png"]:
        save(tmp_path, name, asymmetric_face())
    assert [path.name for path in FaceDataset(tmp_path, limit=2).paths] == ["a.png", "b.png"]


def test_flip_mirrors_left_right_and_depends_only_on_seed_epoch_and_index(tmp_path):
    save(tmp_path, "face.png", asymmetric_face())
    dataset = FaceDataset(tmp_path, flip=True, seed=3)
    plain = FaceDataset(tmp_path)[0]
    seen = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        face = dataset[0]
        assert np.array_equal(face, dataset[0])
        assert np.array_equal(face, plain) or np.array_equal(face, plain[:, :, ::-1])
        seen.append(np.array_equal(face, plain))
    assert any(seen) and not all(seen)


def test_batches_shuffle_per_epoch_reproducibly_and_drop_the_last_incomplete_one():
    sampler = EpochBatchSampler(10, 3, seed=1, rank=0, world_size=1)
    sampler.set_epoch(1)
    first = list(sampler)
    assert len(first) == len(sampler) == 3 and all(len(batch) == 3 for batch in first)
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    other_seed = EpochBatchSampler(10, 3, seed=1, rank=0, world_size=1)
    assert list(EpochBatchSampler(10, 3, seed=2, rank=0, world_size=1)) != list(other_seed)


def test_resuming_mid_epoch_skips_the_batches_already_done():
    sampler = EpochBatchSampler(12, 2, seed=4, rank=0, world_size=1)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, start_batch=4)
    assert list(sampler) == whole[4:]


def test_processes_split_each_epoch_without_overlap():
    shares = []
    for rank in range(2):
        sampler = EpochBatchSampler(20, 4, seed=7, rank=rank, world_size=2)
        sampler.set_epoch(5)
        shares.append([index for batch in sampler for index in batch])
    assert len(shares[0]) == len(shares[1]) == 8
    assert not set(shares[0]) & set(shares[1])


def test_loader_yields_float_batches(tmp_path):
    for number in range(5):
        save(tmp_path, f"{number}.png", asymmetric_face())
    loader = make_loader(FaceDataset(tmp_path), batch_size=2, seed=0)
    loader.batch_sampler.set_epoch(1)
    batches = list(loader)
    assert [list(batch.shape) for batch in batches] == [[2, 3, 96, 96]] * 2
    assert str(batches[0].dtype).endswith("float32")


def test_loader_with_worker_processes_gives_the_same_batches(tmp_path):
    for number in range(6):
        save(tmp_path, f"{number}.png", np.full((96, 96, 3), number * 40, np.uint8))
    dataset = FaceDataset(tmp_path)

    def means(workers):
        loader = make_loader(dataset, batch_size=2, seed=3, num_workers=workers)
        loader.batch_sampler.set_epoch(1)
        return [float(batch.mean()) for batch in loader]

    assert means(2) == means(0)


def test_the_shared_faces_all_decode():
    folder = require_shared("faces")
    dataset = FaceDataset(folder, limit=200)
    assert len(dataset) == 200 and not dataset.skipped
    assert dataset.faces.shape == (200, 96, 96, 3)


def test_the_device_loader_cuts_the_same_batches_as_the_loader_to_the_bit(tmp_path):
    from Reader import DeviceLoader

    for number in range(7):
        save(tmp_path, f"{number}.png", np.random.default_rng(number).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    dataset = FaceDataset(tmp_path, flip=True, seed=9)
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        host, device = make_loader(dataset, batch_size=3, seed=9), DeviceLoader(dataset, batch_size=3, seed=9)
        host.batch_sampler.set_epoch(epoch)
        device.batch_sampler.set_epoch(epoch)
        pairs = list(zip(host, device, strict=True))
        assert len(pairs) == len(device) == 2
        for expected, batch in pairs:
            assert np.array_equal(expected.numpy(), batch.numpy())
