"""Data validated up front and strictly: RLE against the image size, duplicate ids, every image
file checked before training or evaluation, file names kept inside their folder (COCO
`file_name`, LabelMe `imagePath`, CSV `ImageId`), text of any encoding read or refused in words.
Each test asserts the error class, that the message names the file / id, and that the input
files are left as they were."""
from __future__ import annotations

import codecs
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn.data import CocoDataset, DataError, convert_main, labelme_to_coco, rle_csv_to_coco

from .conftest import ann, write_coco

H, W = 20, 30


def blank(h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w, 3), 90, dtype=np.uint8)


def square(aid: int, image_id: int, **extra) -> dict:
    return ann(aid, image_id, [[5, 5, 15, 5, 15, 15, 5, 15]], [5, 5, 10, 10], **extra)


def rle_ann(aid: int, image_id: int, counts) -> dict:
    return ann(aid, image_id, {"size": [H, W], "counts": counts}, [0, 0, 5, 5])


def build(path, images_dir, **kwargs):
    before = path.read_bytes()
    try:
        return CocoDataset(path, images_dir, **kwargs)
    finally:
        assert path.read_bytes() == before  # the annotation file is never touched


# ---------------------------------------------------------------------- RLE

@pytest.mark.parametrize("counts, problem", [
    ("01", "compressed RLE runs add up to 1 pixels, but the 20x30 image has 600"),
    ("0a", "truncated: the last run is unfinished"),
    ("0~", "character '~' at position 1 is not an RLE digit"),
    ("é", "non-ASCII characters"),
    ([0, 5, 5], "uncompressed RLE runs add up to 10 pixels, but the 20x30 image has 600"),
    ([600, -1, 1], "uncompressed RLE counts must be non-negative integers"),
    (17, "RLE 'counts' must be a list"),
])
def test_rle_that_does_not_cover_the_image_is_refused(tmp_path, counts, problem):
    path = write_coco(tmp_path, [(4, "d.png", blank())], [rle_ann(31, 4, counts)])
    with pytest.raises(DataError) as info:
        build(path, tmp_path / "images")
    message = str(info.value)
    assert "annotations.json" in message and "annotation id 31 (image id 4, 'd.png')" in message
    assert problem in message


def test_truncated_rle_never_reaches_pycocotools(tmp_path):
    # what the check prevents: pycocotools decodes "01" into a 20x30 mask of uninitialised memory
    valid = mask_utils.encode(np.asfortranarray(np.ones((H, W), np.uint8)))["counts"].decode()
    path = write_coco(tmp_path, [(4, "d.png", blank())], [rle_ann(1, 4, valid), rle_ann(2, 4, "01")])
    ds = build(path, tmp_path / "images", skip_bad=True)
    assert [w for w, _ in ds.skipped] == ["annotation id 2 (image id 4, 'd.png')"]
    _, target = ds[0]
    assert target["masks"].shape == (1, H, W) and int(target["masks"].max()) == 1


def test_a_negative_compressed_run_is_refused(tmp_path):
    # "0" (0 zeros), "5" (5 ones), "5" (5 zeros), then a delta of -16 from the run two before
    path = write_coco(tmp_path, [(4, "d.png", blank())], [rle_ann(7, 4, "055@")])
    with pytest.raises(DataError, match=r"annotation id 7 .*run 3 has the negative length -11"):
        build(path, tmp_path / "images")


# ---------------------------------------------------------------------- duplicate ids

@pytest.mark.parametrize("skip_bad", [False, True])
def test_duplicate_annotation_ids_are_refused(tmp_path, skip_bad):
    path = write_coco(tmp_path, [(1, "a.png", blank()), (2, "b.png", blank())],
                      [square(5, 1), square(5, 2), square(6, 2), square(6, 1), square(6, 2)])
    with pytest.raises(DataError) as info:
        build(path, tmp_path / "images", skip_bad=skip_bad)  # skip_bad cannot guess which one is meant
    assert "annotations.json: duplicate annotation ids 5 (2 times), 6 (3 times)" in str(info.value)


def test_duplicate_image_ids_are_refused(tmp_path):
    path = write_coco(tmp_path, [(3, "a.png", blank()), (3, "b.png", blank())], [square(1, 3)])
    with pytest.raises(DataError, match=r"annotations\.json: duplicate image ids 3 \(2 times\)"):
        build(path, tmp_path / "images", skip_bad=True)


def test_duplicate_category_ids_are_refused(tmp_path):
    path = write_coco(tmp_path, [(3, "a.png", blank())], [square(1, 3)],
                      categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(DataError, match=r"annotations\.json: duplicate category ids 1 \(2 times\)"):
        build(path, tmp_path / "images")


# ---------------------------------------------------------------------- image files, up front

def test_every_missing_or_broken_image_is_found_before_loading(tmp_path):
    images = [(i, f"{i}.png", blank()) for i in range(1, 6)]
    path = write_coco(tmp_path, images, [square(i, i) for i in range(1, 6)])
    (tmp_path / "images" / "2.png").unlink()
    (tmp_path / "images" / "4.png").write_bytes(b"not a png")
    Image.fromarray(blank(H + 1, W)).save(tmp_path / "images" / "5.png")
    with pytest.raises(DataError) as info:
        build(path, tmp_path / "images")
    message = str(info.value)
    assert "3 bad images" in message
    assert "image id 2 ('2.png')" in message and "image file not found" in message
    assert "image id 4 ('4.png')" in message and "not an image file" in message
    assert "image id 5 ('5.png')" in message and "file is 30x21 (WxH) but annotations.json says 30x20" in message
    ds = build(path, tmp_path / "images", skip_bad=True)  # --skip-bad drops them instead
    assert ds.image_ids == [1, 3] and len(ds.skipped) == 3


def test_the_file_check_shows_progress(tmp_path, capsys):
    path = write_coco(tmp_path, [(1, "a.png", blank())], [square(1, 1)])
    build(path, tmp_path / "images", progress=True)
    assert "checking annotations.json's images" in capsys.readouterr().err


@pytest.mark.parametrize("annotations", ["absent", "empty"])
def test_a_file_without_annotations_is_warned_about(tmp_path, annotations):
    path = write_coco(tmp_path, [(1, "a.png", blank())], [])
    if annotations == "absent":
        data = json.loads(path.read_text())
        del data["annotations"]
        path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"annotations\.json has no (annotations|'annotations' list)"):
        ds = build(path, tmp_path / "images")
    assert len(ds) == 1


def test_annotated_files_give_no_warning(tmp_path):
    path = write_coco(tmp_path, [(1, "a.png", blank())], [square(1, 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(path, tmp_path / "images")


# ---------------------------------------------------------------------- file names stay inside

@pytest.mark.parametrize("file_name, problem", [
    ("../secret.png", "points outside"),
    ("sub/../../secret.png", "points outside"),
    ("..\\secret.png", "points outside"),
    ("ABSOLUTE", "is an absolute path"),
])
def test_file_names_outside_the_image_folder_are_refused(tmp_path, file_name, problem):
    Image.fromarray(blank()).save(tmp_path / "secret.png")
    if file_name == "ABSOLUTE":
        file_name = str(tmp_path / "secret.png")
    path = write_coco(tmp_path, [(1, "a.png", blank())], [square(1, 1), square(2, 2)])
    data = json.loads(path.read_text())
    data["images"].append({"id": 2, "file_name": file_name, "height": H, "width": W})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        build(path, tmp_path / "images")
    message = str(info.value)
    assert f"image id 2 ({file_name!r})" in message and problem in message
    assert "allow_outside_image_dir=True" in message
    ds = build(path, tmp_path / "images", allow_outside_image_dir=True)  # the explicit option
    assert ds.image_ids == [1, 2] and ds[1][0].shape == (3, H, W)


# ---------------------------------------------------------------------- text encodings

def test_annotation_file_in_a_legacy_encoding_is_refused_in_words(tmp_path):
    path = write_coco(tmp_path, [(1, "a.png", blank())], [square(1, 1)],
                      categories=[{"id": 1, "name": "café"}])
    path.write_bytes(path.read_text().replace("\\u00e9", "é").encode("cp1252"))
    with pytest.raises(DataError, match=r"annotations\.json: annotation file is not UTF-8, UTF-16 or UTF-32 "
                                        r"JSON \(byte 0xe9 at offset \d+\); re-save it as UTF-8"):
        build(path, tmp_path / "images")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_annotation_file_in_unicode_encodings_is_read(tmp_path, encoding):
    path = write_coco(tmp_path, [(1, "a.png", blank())], [square(1, 1)], categories=[{"id": 1, "name": "café"}])
    path.write_bytes(json.dumps(json.loads(path.read_text()), ensure_ascii=False).encode(encoding))
    assert build(path, tmp_path / "images").class_names == ["café"]


# ---------------------------------------------------------------------- LabelMe

def labelme(folder, name, image_path, points=None, encoding="utf-8", label="cat"):
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"shapes": [{"label": label, "points": points or [[2, 2], [12, 2], [7, 12]],
                       "shape_type": "polygon", "group_id": None}],
           "imagePath": image_path, "imageHeight": H, "imageWidth": W}
    path = folder / f"{name}.json"
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode(encoding))
    return path


@pytest.mark.parametrize("image_path, problem", [
    ("../outside.png", "points outside"),
    ("ABSOLUTE", "is an absolute path"),
])
def test_labelme_image_path_outside_the_folder_is_refused(tmp_path, image_path, problem):
    Image.fromarray(blank()).save(tmp_path / "outside.png")
    if image_path == "ABSOLUTE":
        image_path = str(tmp_path / "outside.png")
    src = tmp_path / "lm"
    jf = labelme(src, "x", image_path)
    with pytest.raises(DataError) as info:
        labelme_to_coco(src, tmp_path / "out.json")
    message = str(info.value)
    assert str(jf) in message and f"imagePath {image_path!r} {problem}" in message
    assert "--allow-outside-paths" in message and not (tmp_path / "out.json").exists()
    result = labelme_to_coco(src, tmp_path / "out.json", allow_outside=True)
    file_name = json.loads(result.out_json.read_text())["images"][0]["file_name"]
    assert file_name == str(tmp_path / "outside.png")  # absolute, never a '..' name
    ds = CocoDataset(result.out_json, src, allow_outside_image_dir=True)
    assert len(ds) == 1


def test_labelme_image_path_through_dotdot_inside_the_folder_is_fine(tmp_path):
    src = tmp_path / "lm"
    (src / "images").mkdir(parents=True)
    Image.fromarray(blank()).save(src / "images" / "x.png")
    labelme(src / "labels", "x", "..\\images\\x.png")  # as LabelMe on Windows writes it
    result = labelme_to_coco(src, tmp_path / "out.json")
    assert json.loads(result.out_json.read_text())["images"][0]["file_name"] == "images/x.png"


@pytest.mark.parametrize("points", ["abc", [[1, 2], "x"], [[1, "nan"], [2, 3], [4, 5]]])
def test_labelme_bad_points_are_an_error_not_a_silent_drop(tmp_path, points):
    src = tmp_path / "lm"
    Image.fromarray(blank()).save((src.mkdir() or src) / "x.png")
    jf = labelme(src, "x", "x.png", points=points)
    with pytest.raises(DataError, match=r"x\.json: shape 0 \('cat'\): bad points .*expected a list of \[x, y\]") as info:
        labelme_to_coco(src, tmp_path / "out.json")
    assert str(jf) in str(info.value)
    result = labelme_to_coco(src, tmp_path / "out.json", skip_bad=True)
    assert result.num_annotations == 0 and len(result.skipped) == 1


def test_labelme_in_a_legacy_encoding_is_refused_then_read_when_named(tmp_path):
    src = tmp_path / "lm"
    Image.fromarray(blank()).save((src.mkdir() or src) / "x.png")
    jf = labelme(src, "x", "x.png", encoding="cp1252", label="café")
    with pytest.raises(DataError) as info:
        labelme_to_coco(src, tmp_path / "out.json")
    assert str(info.value).startswith(f"{jf}: LabelMe file is not valid utf-8 text (byte 0xe9 at offset")
    assert "re-save it as UTF-8, or name its encoding" in str(info.value)
    assert labelme_to_coco(src, tmp_path / "out.json", encoding="cp1252").class_names == ["café"]


def test_labelme_in_utf16_with_a_byte_order_mark_is_read(tmp_path):
    src = tmp_path / "lm"
    Image.fromarray(blank()).save((src.mkdir() or src) / "x.png")
    labelme(src, "x", "x.png", encoding="utf-16", label="chat noir")
    assert labelme_to_coco(src, tmp_path / "out.json").class_names == ["chat noir"]


# ---------------------------------------------------------------------- Kaggle CSV

def test_csv_image_id_outside_the_folder_is_refused(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(blank()).save(images / "a.png")
    Image.fromarray(blank()).save(tmp_path / "secret.png")
    csv_file = tmp_path / "train.csv"
    csv_file.write_text(f"ImageId,EncodedPixels\na,1 3\n../secret,1 3\n{tmp_path / 'secret.png'},1 3\n")
    with pytest.raises(DataError, match=r"train\.csv:3 \(ImageId '\.\./secret'\): ImageId '\.\./secret' points outside"):
        rle_csv_to_coco(csv_file, images, tmp_path / "out.json")
    result = rle_csv_to_coco(csv_file, images, tmp_path / "out.json", skip_bad=True)
    assert result.num_images == 1 and [w.split(": ")[0] for w, _ in result.skipped] == \
        [f"{csv_file}:3 (ImageId '../secret')", f"{csv_file}:4 (ImageId '{tmp_path / 'secret.png'}')"]
    assert "absolute path" in result.skipped[1][1]
    # the explicit option follows them
    code = convert_main(["rle-csv", str(csv_file), "--images", str(images), "--out", str(tmp_path / "o.json"),
                         "--allow-outside-paths"])
    assert code == 0 and json.loads((tmp_path / "o.json").read_text())["images"][1]["file_name"] == \
        str(tmp_path / "secret.png")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "cp1252"])
def test_csv_of_any_encoding_is_read_or_refused_in_words(tmp_path, encoding, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(blank()).save(images / "né.png")
    csv_file = tmp_path / "train.csv"
    csv_file.write_bytes("ImageId,EncodedPixels\nné,1 3\n".encode(encoding))
    argv = ["rle-csv", str(csv_file), "--images", str(images), "--out", str(tmp_path / "o.json")]
    if encoding != "cp1252":
        assert convert_main(argv) == 0
    else:
        assert convert_main(argv) == 1
        err = capsys.readouterr().err
        assert f"{csv_file}: CSV file is not valid utf-8 text (byte 0xe9 at offset 23)" in err
        assert not (tmp_path / "o.json").exists()
        assert convert_main(argv + ["--encoding", "cp1252"]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["images"][0]["file_name"] == "né.png"


def test_unknown_encoding_is_named(tmp_path):
    csv_file = tmp_path / "train.csv"
    csv_file.write_bytes(codecs.BOM_UTF8 + b"ImageId,EncodedPixels\n")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"train\.csv: unknown text encoding 'klingon'"):
        rle_csv_to_coco(csv_file, tmp_path / "images", tmp_path / "o.json", encoding="klingon")
