"""decode_image against hostile files, and the decoded-image store (build, reuse, invalidation, errors)."""
from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facetl.data.images
import facetl.data.store
from facetl.data.images import UnreadableImage, decode_image
from facetl.data.store import files_key, open_image_store

RED, BLUE, WHITE, GREEN = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 255, 0)


def halves(first, second, size=(32, 16), mode="RGB") -> Image.Image:
    """An image whose left half is `first` and right half `second`."""
    width, height = size
    image = Image.new(mode, size, first)
    image.paste(second, (width // 2, 0, width, height))
    return image


def close(pixel, colour, tolerance=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(colour)) <= tolerance))


# ---------------------------------------------------------------- decode_image


def test_plain_jpeg_gives_square_rgb_and_the_file_hash(tmp_path, make_image):
    path = make_image(tmp_path / "a.jpg", (40, 24))
    array, digest = decode_image(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    assert digest == hashlib.sha1(path.read_bytes()).hexdigest()


def test_truncated_jpeg_is_unreadable(tmp_path, make_image):
    data = make_image(tmp_path / "a.jpg", 64).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="truncated"):
        decode_image(tmp_path / "cut.jpg", 16)


def test_zero_byte_file_is_unreadable(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UnreadableImage, match="empty"):
        decode_image(tmp_path / "empty.jpg", 16)


def test_text_file_named_jpg_is_unreadable(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a JPEG\n" * 20)
    with pytest.raises(UnreadableImage, match="cannot decode"):
        decode_image(tmp_path / "notes.jpg", 16)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImage):
        decode_image(tmp_path / "gone.jpg", 16)


def test_png_alpha_is_composited_on_white(tmp_path):
    image = halves((255, 0, 0, 0), (0, 255, 0, 255), mode="RGBA")  # transparent red | opaque green
    image.save(tmp_path / "a.png")
    array, _ = decode_image(tmp_path / "a.png", 16)
    assert array.shape == (16, 16, 3)
    assert close(array[8, 2], WHITE, 2) and close(array[8, 13], GREEN, 2)


def test_palette_png_with_transparency(tmp_path):
    image = Image.new("P", (32, 16), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red (transparent), 1 blue
    image.paste(1, (16, 0, 32, 16))
    image.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    array, _ = decode_image(tmp_path / "p.png", 16)
    assert close(array[8, 2], WHITE, 2) and close(array[8, 13], BLUE, 2)


def test_palette_png_without_transparency(tmp_path):
    image = Image.new("P", (16, 16), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.save(tmp_path / "p.png")
    array, _ = decode_image(tmp_path / "p.png", 8)
    assert close(array.reshape(-1, 3).mean(0), BLUE, 2)


def test_16_bit_png_keeps_its_contrast(tmp_path):
    ramp = np.tile(np.linspace(1000, 40000, 64), (32, 1)).astype(np.uint16)  # all above 255
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    array, _ = decode_image(tmp_path / "deep.png", 16)
    assert array.shape == (16, 16, 3)
    assert not (array == 255).all(), "16-bit image came out all white"
    assert array[:, :4].mean() < 60 and array[:, -4:].mean() > 200  # dark left, bright right
    assert (array[..., 0] == array[..., 1]).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    halves((0, 255, 255, 0), (255, 255, 0, 0), mode="CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    array, _ = decode_image(tmp_path / "c.jpg", 16)
    assert array.shape == (16, 16, 3)
    assert close(array[8, 2], RED) and close(array[8, 13], BLUE)


@pytest.mark.parametrize("orientation, top_left, bottom_right", [
    (1, RED, BLUE),   # no rotation: red left, blue right
    (6, RED, BLUE),   # rotate 90 clockwise: red on top, blue below
    (8, BLUE, RED),   # rotate 90 counter-clockwise: blue on top, red below
])
def test_exif_orientation_is_applied(tmp_path, orientation, top_left, bottom_right):
    image = halves(RED, BLUE, size=(128, 64))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    array, _ = decode_image(tmp_path / "r.jpg", 16)
    assert close(array[1, 1], top_left) and close(array[14, 14], bottom_right)
    if orientation == 1:
        assert close(array[14, 1], RED) and close(array[1, 14], BLUE)
    else:  # the halves now run top / bottom, not left / right
        assert close(array[1, 14], top_left) and close(array[14, 1], bottom_right)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_greyscale_becomes_three_equal_channels(tmp_path, make_image, fmt):
    path = make_image(tmp_path / f"g.{fmt.lower()}", 20, mode="L", fmt=fmt)
    array, _ = decode_image(path, 12)
    assert array.shape == (12, 12, 3)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert array.std() > 10


def test_huge_image_is_refused_before_decoding(tmp_path, make_image, monkeypatch):
    path = make_image(tmp_path / "big.png", (40, 30), fmt="PNG")
    decode_image(path, 8)
    monkeypatch.setattr(facetl.data.images, "MAX_PIXELS", 1000)
    with pytest.raises(UnreadableImage, match=r"too large \(40x30"):
        decode_image(path, 8)


def test_a_huge_file_is_judged_by_its_header_before_it_is_read(tmp_path):
    """A 300 MiB file (sparse on disk) that starts like a 40000x40000 PNG is refused after a few kilobytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    header = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (40000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0]))
              + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(300 * 2**20)
    tracemalloc.start()
    with pytest.raises(UnreadableImage, match="too large"):
        decode_image(path, 8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB read for a file refused by its header"


# ---------------------------------------------------------------- image store


@pytest.fixture
def files(tmp_path, make_image) -> list[Path]:
    folder = tmp_path / "faces"
    good = [make_image(folder / f"{i}.jpg", 24, seed=i) for i in range(6)]
    (folder / "broken.jpg").write_bytes(good[0].read_bytes()[:300])
    (folder / "empty.jpg").write_bytes(b"")
    return good[:3] + [folder / "broken.jpg"] + good[3:] + [folder / "empty.jpg"]


def test_store_builds_and_holds_decoded_images(files, tmp_path):
    cache = tmp_path / "cache"
    store = open_image_store(files, 16, cache, workers=1, progress=False)
    assert store.images.shape == (8, 16, 16, 3) and store.size == 16
    assert (cache / "images" / store.key / "meta.json").is_file()
    for i in (0, 2, 4, 6):
        expected, digest = decode_image(files[i], 16)
        np.testing.assert_array_equal(store.images[i], expected)
        assert store.hashes[i] == digest
    assert not list((cache / "images").glob("*.building-*"))


def test_store_lists_unreadable_files(files, tmp_path):
    store = open_image_store(files, 16, tmp_path / "cache", workers=1, progress=False)
    assert set(store.errors) == {3, 7}
    assert "truncated" in store.errors[3].lower() and "empty" in store.errors[7]
    assert store.readable().tolist() == [True, True, True, False, True, True, True, False]
    assert store.hashes[3] == "" and store.hashes[7] == ""


def test_store_is_reused_for_the_same_files(files, tmp_path, monkeypatch):
    first = open_image_store(files, 16, tmp_path / "cache", workers=1, progress=False)

    def no_build(*args, **kwargs):
        raise AssertionError("the store was rebuilt")

    monkeypatch.setattr(facetl.data.store, "_build", no_build)
    again = open_image_store(list(files), 16, tmp_path / "cache", workers=1, progress=False)
    assert again.key == first.key and again.errors == first.errors and again.hashes == first.hashes
    np.testing.assert_array_equal(again.images, first.images)


def test_a_new_size_or_file_list_gets_a_new_store(files, tmp_path):
    a = open_image_store(files, 16, tmp_path / "cache", workers=1, progress=False)
    assert open_image_store(files, 8, tmp_path / "cache", workers=1, progress=False).key != a.key
    assert open_image_store(files[:-1], 16, tmp_path / "cache", workers=1, progress=False).key != a.key


def test_touched_file_gets_a_new_key(files):
    before = files_key(files, "size=16")
    stat = files[1].stat()
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert files_key(files, "size=16") != before


def test_changed_file_gives_a_new_store_with_the_new_pixels(files, tmp_path, make_image):
    old = open_image_store(files, 16, tmp_path / "cache", workers=1, progress=False)
    stat = files[0].stat()
    Image.new("RGB", (24, 24), GREEN).save(files[0])
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    new = open_image_store(files, 16, tmp_path / "cache", workers=1, progress=False)
    assert new.key != old.key
    assert close(new.images[0].reshape(-1, 3).mean(0), GREEN, 3)
    assert new.hashes[0] != old.hashes[0] and new.hashes[1:] == old.hashes[1:]


def test_half_written_store_is_ignored(files, tmp_path):
    cache = tmp_path / "cache"
    key = files_key(files, "size=16")
    stale = cache / "images" / f"{key}.building-abc123"
    stale.mkdir(parents=True)
    (stale / "meta.json").write_text(json.dumps({"count": 8, "size": 16, "hashes": ["x"] * 8, "errors": {}}))
    (stale / "images.u8").write_bytes(b"\x00" * 100)
    store = open_image_store(files, 16, cache, workers=1, progress=False)
    assert store.key == key and store.hashes[0] != "x" and set(store.errors) == {3, 7}
    np.testing.assert_array_equal(store.images[0], decode_image(files[0], 16)[0])


def test_parallel_build_matches_serial_build(files, tmp_path):
    serial = open_image_store(files, 16, tmp_path / "a", workers=1, progress=False)
    parallel = open_image_store(files, 16, tmp_path / "b", workers=2, progress=False)
    assert parallel.hashes == serial.hashes and parallel.errors == serial.errors
    np.testing.assert_array_equal(parallel.images, serial.images)


def test_store_without_cache_dir_is_private(files, isolated_cache):
    store = open_image_store(files, 16, None, workers=1, progress=False)
    assert store.images.shape == (8, 16, 16, 3) and set(store.errors) == {3, 7}
    assert not (isolated_cache / "images").exists()
