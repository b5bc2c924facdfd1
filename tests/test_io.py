"""maskrcnn.io: load_image over every image mode and bad input; expand_sources; atomic writes;
Kaggle run-length codes."""
from __future__ import annotations

import io as pyio
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.io import (
    DataError,
    ImageLoadError,
    atomic_open,
    atomic_write,
    decode_kaggle_rle,
    encode_kaggle_rle,
    expand_sources,
    image_sizes,
    load_image,
    write_json_atomic,
)

from testing_utils import LITERAL_MASK, LITERAL_RLE


def _check(t: torch.Tensor, h: int, w: int) -> None:
    assert t.dtype == torch.float32 and t.shape == (3, h, w)
    assert float(t.min()) >= 0 and float(t.max()) <= 1


# ------------------------------------------------------------------------------ modes


def test_rgb_png_exact(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    t = load_image(tmp_path / "rgb.png")
    _check(t, 5, 7)
    torch.testing.assert_close(t, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_grayscale_repeated_over_channels(tmp_path):
    arr = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    Image.fromarray(arr, mode="L").save(tmp_path / "gray.png")
    t = load_image(str(tmp_path / "gray.png"))
    _check(t, 2, 2)
    expected = torch.tensor([[0.0, 0.2], [0.8, 1.0]])
    for c in range(3):
        torch.testing.assert_close(t[c], expected)


def test_bilevel_mode_1(tmp_path):
    Image.fromarray(np.array([[True, False]])).convert("1").save(tmp_path / "bw.png")
    t = load_image(tmp_path / "bw.png")
    torch.testing.assert_close(t[:, 0], torch.tensor([[1.0, 0.0]] * 3))


def test_rgba_alpha_dropped(tmp_path):
    arr = np.array([[[255, 0, 0, 0], [0, 128, 255, 255]]], dtype=np.uint8)  # first pixel fully transparent
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "rgba.png")
    t = load_image(tmp_path / "rgba.png")
    _check(t, 1, 2)
    # alpha is dropped, not composited: the transparent red pixel stays red
    torch.testing.assert_close(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(t[:, 0, 1], torch.tensor([0.0, 128 / 255, 1.0]))


def test_la_alpha_dropped(tmp_path):
    Image.fromarray(np.array([[[100, 0]]], dtype=np.uint8), mode="LA").save(tmp_path / "la.png")
    torch.testing.assert_close(load_image(tmp_path / "la.png")[:, 0, 0], torch.full((3,), 100 / 255))


@pytest.mark.parametrize("transparency", [False, True])
def test_palette(tmp_path, transparency):
    im = Image.new("P", (3, 2))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 12))
    im.putdata([0, 1, 2, 3, 1, 0])
    kwargs = {"transparency": 0} if transparency else {}
    im.save(tmp_path / "pal.png", **kwargs)
    t = load_image(tmp_path / "pal.png")
    _check(t, 2, 3)
    torch.testing.assert_close(t[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(t[:, 0, 2], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(t[:, 1, 0], torch.tensor([10, 20, 30]) / 255)
    torch.testing.assert_close(t[:, 0, 0], torch.zeros(3))  # transparent index: its palette color


def test_sixteen_bit_grayscale(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as im:
        assert im.mode in ("I;16", "I")
    t = load_image(tmp_path / "16.png")
    _check(t, 1, 3)
    torch.testing.assert_close(t[0, 0], torch.tensor([0.0, 32768 / 65535, 1.0]))
    torch.testing.assert_close(t[0], t[2])


def test_float_and_int32_modes(tmp_path):
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    torch.testing.assert_close(load_image(tmp_path / "f.tif")[1, 0], torch.tensor([0.0, 0.25, 1.0]))
    Image.fromarray(np.array([[0.0, 255.0]], dtype=np.float32), mode="F").save(tmp_path / "f255.tif")
    with pytest.raises(ImageLoadError, match=r"f255\.tif.*\[0, 1\]"):
        load_image(tmp_path / "f255.tif")
    # int32 "I" is read on the 16-bit scale, clipped
    i32 = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32), mode="I")
    torch.testing.assert_close(load_image(i32)[2, 0], torch.tensor([0.0, 1.0, 1.0]))
    big_endian = np.array([[0, 65535]], dtype=">u2")
    torch.testing.assert_close(load_image(big_endian)[0, 0], torch.tensor([0.0, 1.0]))


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    t = load_image(tmp_path / "cmyk.jpg")
    _check(t, 3, 4)
    assert t[0].mean() > 0.9 and t[1].mean() < 0.1  # C=0, M=Y=255 is red


def test_exif_orientation_6_rotates(tmp_path):
    # stored 3 wide x 2 high, red at stored (x=0, y=0); orientation 6 means "rotate 90 degrees
    # clockwise to display", so the displayed image is 2 wide x 3 high with red top-right.
    arr = np.zeros((2, 3, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.png", exif=exif)
    t = load_image(tmp_path / "rot.png")
    _check(t, 3, 2)
    torch.testing.assert_close(t[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    assert float(t.sum()) == 1.0
    # exif=False keeps the stored pixels (what a dataset annotated on them needs)
    stored = load_image(tmp_path / "rot.png", exif=False)
    _check(stored, 2, 3)
    torch.testing.assert_close(stored[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    with Image.open(tmp_path / "rot.png") as im:
        torch.testing.assert_close(load_image(im), t)
    assert image_sizes(tmp_path / "rot.png") == ((2, 3), (3, 2))  # (stored, displayed) (H, W)


def test_pil_numpy_tensor_sources():
    arr = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    expected = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(load_image(Image.fromarray(arr)), expected)
    torch.testing.assert_close(load_image(arr), expected)
    torch.testing.assert_close(load_image(np.dstack([arr, np.zeros((2, 2), np.uint8)])), expected)
    torch.testing.assert_close(load_image(torch.from_numpy(arr).permute(2, 0, 1)), expected)
    torch.testing.assert_close(load_image(expected.double()), expected)
    gray = load_image(np.array([[0, 65535]], dtype=np.uint16))
    torch.testing.assert_close(gray, torch.tensor([[[0.0, 1.0]]] * 3))
    torch.testing.assert_close(load_image(torch.tensor([[0.5]])), torch.full((3, 1, 1), 0.5))


def test_bad_arrays_refused():
    with pytest.raises(ImageLoadError, match=r"in \[0, 1\].*255"):
        load_image(np.full((2, 2, 3), 200.0))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ImageLoadError, match="permute"):
        load_image(torch.zeros((5, 6, 3), dtype=torch.uint8))
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ImageLoadError, match="dtype"):
        load_image(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        load_image(42)


# ------------------------------------------------------------------------------ bad files


def test_truncated_png_names_file(tmp_path):
    buf = pyio.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="truncated") as err:
        load_image(path)
    assert str(path) in str(err.value) and err.value.source == str(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(ImageLoadError, match="not an image") as err:
        load_image(path)
    assert "notes.jpg" in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_pixel_limit_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    buf = pyio.BytesIO()
    Image.new("RGB", (100, 50)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[:60])  # header only: the limit must fire before any decoding
    with pytest.raises(ImageLoadError) as err:
        load_image(path, max_pixels=1000)
    msg = str(err.value)
    assert "100x50" in msg and "5000" in msg and "1000" in msg and "big.png" in msg
    with pytest.raises(ImageLoadError, match="100x50"):
        load_image(np.zeros((50, 100, 3), np.uint8), max_pixels=1000)


def test_pillow_bomb_check_reported(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ImageLoadError, match="bomb") as err:
        load_image(tmp_path / "bomb.png", max_pixels=None)
    assert "bomb.png" in str(err.value)


def test_too_large_is_its_own_error_type_and_file_objects_open(tmp_path, monkeypatch):
    """ImageTooLargeError (a server's 413) for the pixel limit and Pillow's bomb check, plain
    ImageLoadError (400) otherwise; open_image reads an in-memory upload as it reads a file."""
    from maskrcnn.io import ImageTooLargeError, open_image

    buf = pyio.BytesIO()
    Image.new("RGB", (100, 50), (10, 20, 30)).save(buf, "PNG")
    data = buf.getvalue()
    with pytest.raises(ImageTooLargeError, match="100x50 = 5000 pixels"):
        open_image(pyio.BytesIO(data[:60]), max_pixels=1000, name="upload.png")
    assert np.array(open_image(pyio.BytesIO(data), name="upload.png"))[0, 0].tolist() == [10, 20, 30]
    with pytest.raises(ImageLoadError, match="^upload.png: cannot read image") as err:
        open_image(pyio.BytesIO(data[:80]), name="upload.png")
    assert not isinstance(err.value, ImageTooLargeError)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ImageTooLargeError, match="bomb"):
        open_image(pyio.BytesIO(data), max_pixels=None, name="upload.png")


def test_zero_size_refused():
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(Image.new("RGB", (0, 3)))


def test_error_is_a_value_error_and_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ImageLoadError("a.png", "broken")))
    assert isinstance(err, ValueError) and str(err) == "a.png: broken" and err.problem == "broken"
    assert isinstance(err, DataError)  # the datasets' `except DataError` sees bad images too


# ------------------------------------------------------------------------------ sources


def test_expand_sources(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ["b.png", "a.jpg", "c.TIFF", "notes.txt", ".hidden.png"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "d.png").write_bytes(b"x")
    odd = tmp_path / "odd.dat"
    odd.write_bytes(b"x")

    assert expand_sources([folder]) == [folder / "a.jpg", folder / "b.png", folder / "c.TIFF"]
    assert expand_sources([str(folder / "*.png")]) == [folder / "b.png"]
    assert expand_sources([str(folder / "**" / "*.png")]) == [folder / "b.png", folder / "sub" / "d.png"]
    # explicit files are kept whatever their extension; duplicates are dropped, order kept
    assert expand_sources([odd, folder, str(folder / "a.jpg")]) == [
        odd, folder / "a.jpg", folder / "b.png", folder / "c.TIFF"]
    assert expand_sources(str(odd)) == [odd]


def test_expand_sources_names_what_matched_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        expand_sources([tmp_path / "nope.png", str(tmp_path / "*.jpg"), tmp_path / "empty"])
    msg = str(err.value)
    assert "nope.png" in msg and "*.jpg" in msg and "empty" in msg


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_open_writes_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out" / "result.json"
    with atomic_open(path, "w") as f:
        f.write("first")
    assert path.read_text() == "first"
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not mkstemp's 0600

    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("half of the second")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "first"  # the old file survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temp left

    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "new.txt", "wb") as f:
            f.write(b"partial")
            raise RuntimeError
    assert not (tmp_path / "new.txt").exists()
    with pytest.raises(ValueError):
        with atomic_open(path, "a"):
            pass


def test_atomic_write_with_path_writer(tmp_path):
    path = tmp_path / "img.png"
    atomic_write(path, lambda p: Image.new("RGB", (3, 2)).save(p))  # format inferred from suffix
    with Image.open(path) as im:
        assert im.size == (3, 2)

    def failing(p):
        p.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "other.png", failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "data.json"
    assert write_json_atomic({"a": [1, 2], "name": "café"}, path) == path
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2], "name": "café"}
    write_json_atomic([1], path, indent=1)
    assert path.read_text() == "[\n 1\n]"
    with pytest.raises(TypeError):
        write_json_atomic({"bad": object()}, path)  # fails half-way through json.dump
    assert path.read_text() == "[\n 1\n]"  # the old file survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.json"]  # no temp left


# ------------------------------------------------------------------------------ Kaggle RLE


def _kaggle_random_mask(rng, h=36, w=48):
    """A box plus scattered single pixels (many short runs), uint8 0/1."""
    m = np.zeros((h, w), dtype=np.uint8)
    y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
    m[y:y + rng.integers(3, 10), x:x + rng.integers(3, 10)] = 1
    m[rng.random((h, w)) > 0.97] = 1
    return m


def test_kaggle_rle_known_examples():
    # Kaggle's documented example: "1 3 10 5" = pixels 1,2,3 and 10..14, numbered down columns
    mask = decode_kaggle_rle("1 3 10 5", (4, 4))
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[0:3, 0] = 1       # pixels 1-3: column 0, rows 0-2
    expected[1:4, 2] = 1       # pixels 10-12: column 2, rows 1-3
    expected[0:2, 3] = 1       # pixels 13-14: column 3, rows 0-1
    assert mask.dtype == bool and np.array_equal(mask, expected)
    assert encode_kaggle_rle(expected) == "1 3 10 5"

    assert encode_kaggle_rle(LITERAL_MASK) == LITERAL_RLE
    np.testing.assert_array_equal(decode_kaggle_rle(LITERAL_RLE, (4, 4)), LITERAL_MASK)
    assert encode_kaggle_rle(torch.from_numpy(LITERAL_MASK)) == LITERAL_RLE
    assert encode_kaggle_rle(np.zeros((3, 3), bool)) == ""
    assert encode_kaggle_rle(np.ones((2, 3), bool)) == "1 6"
    assert not decode_kaggle_rle("", (2, 2)).any() and not decode_kaggle_rle(float("nan"), (2, 2)).any()


def test_kaggle_rle_round_trip():
    rng = np.random.default_rng(0)
    cases = [np.zeros((5, 7), np.uint8), np.ones((5, 7), np.uint8)]
    cases += [_kaggle_random_mask(rng) for _ in range(20)]
    cases += list(rng.random((10, 15, 8)) < rng.random((10, 1, 1)))  # bool, assorted densities
    for mask in cases:
        np.testing.assert_array_equal(decode_kaggle_rle(encode_kaggle_rle(mask), mask.shape), mask.astype(bool))
    assert encode_kaggle_rle(np.ones((2, 3))) == "1 6" and encode_kaggle_rle(np.zeros((2, 3))) == ""


@pytest.mark.parametrize(
    "bad, shape",
    [("1 2 3", (3, 3)), ("1 x", (3, 3)), ("10 10", (3, 3)), ("0 2", (3, 3)),
     ("1 2 3", (4, 4)), ("0 2", (4, 4)), ("3 0", (4, 4)), ("a b", (4, 4)), ("15 3", (4, 4))],
)
def test_kaggle_rle_malformed(bad, shape):
    with pytest.raises(DataError):  # a ValueError too, which the CSV reader catches
        decode_kaggle_rle(bad, shape)


# ---------------------------------------------------------------------------------------------
# Write checks and errors in words, text of any encoding, paths kept inside their folder


def test_check_writable_creates_and_probes_without_leaving_anything(tmp_path):
    from maskrcnn.io import check_writable

    assert check_writable(tmp_path / "a" / "b", folder=True).is_dir()
    check_writable(tmp_path / "c" / "out.csv")
    assert (tmp_path / "c").is_dir() and not list((tmp_path / "c").iterdir())
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("case, message", [
    ("file_as_folder", "x.csv: cannot write: {tmp}/blocker is a file, not a folder"),
    ("folder_as_file", "blocker_dir: cannot write: is a folder, not a file"),
    ("out_is_a_file", "blocker: cannot write: is a file, not a folder"),
])
def test_check_writable_says_what_is_in_the_way(tmp_path, case, message):
    from maskrcnn.io import check_writable

    (tmp_path / "blocker").write_text("keep")
    (tmp_path / "blocker_dir").mkdir()
    target = {"file_as_folder": (tmp_path / "blocker" / "x.csv", False),
              "folder_as_file": (tmp_path / "blocker_dir", False),
              "out_is_a_file": (tmp_path / "blocker", True)}[case]
    with pytest.raises(OSError) as info:
        check_writable(target[0], folder=target[1])
    assert message.format(tmp=tmp_path) in str(info.value)
    assert (tmp_path / "blocker").read_text() == "keep"


def test_a_full_disk_inside_a_writer_becomes_an_oserror_naming_the_file(tmp_path):
    import errno

    (tmp_path / "out.bin").write_bytes(b"previous")

    def writer(tmp):
        tmp.write_bytes(b"part")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "out.bin", writer)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).endswith(f"{tmp_path / 'out.bin'}: cannot write: disk full (no space left on the device)")
    assert (tmp_path / "out.bin").read_bytes() == b"previous"  # nothing written before is lost
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_other_writer_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "x", lambda tmp: 1 / 0)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_read_text_reads_unicode_files(tmp_path, encoding):
    from maskrcnn.io import read_text

    (tmp_path / "t.txt").write_bytes("ImageId,näme\n".encode(encoding))
    assert read_text(tmp_path / "t.txt") == "ImageId,näme\n"


def test_read_text_refuses_other_encodings_in_words(tmp_path):
    from maskrcnn.io import read_text

    (tmp_path / "t.txt").write_bytes("abc é".encode("cp1252"))
    with pytest.raises(DataError, match=r"t\.txt: notes file is not valid utf-8 text \(byte 0xe9 at offset 4\)"):
        read_text(tmp_path / "t.txt", what="notes file")
    assert read_text(tmp_path / "t.txt", encoding="cp1252") == "abc é"
    with pytest.raises(DataError, match=r"missing\.txt: text file not found"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"cannot read text file"):
        read_text(tmp_path)  # a folder


@pytest.mark.parametrize("name, inside", [
    ("a.png", True), ("sub/a.png", True), ("sub/../a.png", True), ("./a.png", True),
    ("../a.png", False), ("sub/../../a.png", False), ("/etc/passwd", False), ("..\\a.png", False),
    ("C:/data/a.png", False),
])
def test_inside_folder(tmp_path, name, inside):
    from maskrcnn.io import inside_folder

    if inside:
        path = inside_folder(name, tmp_path)
        assert os.path.commonpath([path, tmp_path]) == str(tmp_path)
    else:
        with pytest.raises(DataError, match=r"absolute path|points outside"):
            inside_folder(name, tmp_path)
        assert inside_folder(name, tmp_path, allow_outside=True)  # the explicit option
