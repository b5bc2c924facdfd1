"""`maskrcnn predict`: every output format, a corrupt file in the input, limits and bad weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrcnn.cli import main as cli_main
from maskrcnn.inference.outputs import read_rle_csv, rle_to_mask
from maskrcnn.inference.predict import main, output_names


@pytest.fixture(scope="module")
def run(tiny_weights, image_dir, tmp_path_factory):
    """One CLI run over the image folder (3 colour PNGs, 1 grayscale, 1 corrupt)."""
    out = tmp_path_factory.mktemp("predict")
    argv = ["predict", str(image_dir), "--weights", str(tiny_weights), "--out", str(out / "run"),
            "--csv", str(out / "run" / "submission.csv"), "--label-maps", "--score-threshold", "0.4",
            "--batch-size", "2", "-q"]
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli_main(argv)
    return code, stderr.getvalue(), out / "run"


@pytest.fixture(scope="module")
def expected(tiny_predictor, image_dir):
    """The Python API's results for the readable images, keyed by file stem."""
    paths = sorted(p for p in image_dir.iterdir() if p.name != "broken.png")
    results = tiny_predictor.predict(paths, score_threshold=0.4, batch_size=2)
    return {p.stem: r for p, r in zip(paths, results)}


def test_exit_code_and_the_bad_file_is_named(run):
    code, stderr, out = run
    assert code == 1, "some images failed"
    assert "broken.png" in stderr and "not an image file" in stderr
    assert "1 image(s) failed" in stderr
    for name in ("img0.png", "img1.png", "img2.png", "gray.png"):
        assert f"{name}:" not in stderr


def test_results_json_decodes_to_the_masks(run, expected):
    _, _, out = run
    results = json.loads((out / "results.json").read_text())
    images = {img["id"]: Path(img["file_name"]).stem for img in json.loads((out / "images.json").read_text())}
    assert sorted(images.values()) == sorted(expected)
    by_image: dict[str, list] = {}
    for entry in results:
        by_image.setdefault(images[entry["image_id"]], []).append(entry)
    assert sum(len(r) for r in expected.values()) == len(results) > 0
    for stem, result in expected.items():
        entries = by_image.get(stem, [])
        assert [e["category_id"] for e in entries] == result.labels.tolist()
        np.testing.assert_allclose([e["score"] for e in entries], result.scores.numpy(), atol=1e-5)
        for entry, mask in zip(entries, result.masks):
            decoded = rle_to_mask(entry["segmentation"])
            assert decoded.shape == mask.shape
            assert (decoded != mask.numpy()).mean() < 1e-3  # float noise between batchings
            assert entry["area"] == int(decoded.sum())


def test_overlays_have_the_input_size(run, image_dir):
    _, _, out = run
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["gray.png", "img0.png", "img1.png", "img2.png"]
    for name in overlays:
        overlay = Image.open(out / "overlays" / name)
        assert overlay.size == Image.open(image_dir / name).size and overlay.mode == "RGB"


def test_label_maps_agree_with_the_results(run, expected):
    _, _, out = run
    for stem, result in expected.items():
        lm = np.asarray(Image.open(out / "label_maps" / f"{stem}.png"))
        assert lm.shape == result.image_size
        assert (lm != result.label_map.numpy()).mean() < 1e-3


def test_csv_round_trips(run, expected):
    _, _, out = run
    shapes = {stem: r.image_size for stem, r in expected.items()}
    masks = read_rle_csv(out / "submission.csv", shapes)
    assert sorted(masks) == sorted(expected)
    for stem, result in expected.items():
        decoded = masks[stem]
        # one non-overlapping mask per instance that kept pixels in the label map
        lm = result.label_map.numpy()
        want = [lm == i + 1 for i in range(len(result)) if (lm == i + 1).any()]
        assert decoded.shape[0] == len(want)
        if want:
            assert decoded.sum(axis=0).max() <= 1, "CSV masks must not overlap"
            assert np.mean(decoded != np.stack(want)) < 1e-3


def test_no_temporary_files_left(run):
    _, _, out = run
    assert not [p for p in out.rglob(".*")]


def test_images_above_the_pixel_limit_are_refused(tiny_weights, image_dir, tmp_path, capsys):
    code = main([str(image_dir / "img0.png"), str(image_dir / "img1.png"), "-w", str(tiny_weights),
                 "-o", str(tmp_path), "--max-pixels", "1000", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "img0.png: image is 128x96 = 12288 pixels, above the limit of 1000 pixels" in err
    assert json.loads((tmp_path / "results.json").read_text()) == []


def test_glob_and_no_overlays(tiny_weights, image_dir, tmp_path, capsys):
    code = main([str(image_dir / "img[01].png"), "-w", str(tiny_weights), "-o", str(tmp_path),
                 "--no-overlays", "-q"])
    assert code == 0
    assert not (tmp_path / "overlays").exists()
    ids = json.loads((tmp_path / "images.json").read_text())
    assert [Path(i["file_name"]).name for i in ids] == ["img0.png", "img1.png"]


def test_bad_weights_and_missing_input(tmp_path, image_dir, capsys):
    assert main([str(image_dir), "-w", str(tmp_path / "none.safetensors"), "-o", str(tmp_path)]) == 2
    assert "cannot load --weights" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing_here"), "-w", "x", "-o", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_coco_ann_ids(tiny_weights, image_dir, tmp_path):
    ann = {"images": [{"id": 41, "file_name": "img0.png", "height": 96, "width": 128}],
           "annotations": [],
           "categories": [{"id": 7, "name": "circle"}, {"id": 8, "name": "square"}, {"id": 9, "name": "triangle"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    code = main([str(image_dir / "img0.png"), "-w", str(tiny_weights), "-o", str(tmp_path / "o"),
                 "--coco-ann", str(tmp_path / "ann.json"), "--score-threshold", "0.3", "-q", "--no-overlays"])
    assert code == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results and {r["image_id"] for r in results} == {41}
    assert {r["category_id"] for r in results} <= {7, 8, 9}


def test_output_names_are_unique():
    paths = [Path("a/x.jpg"), Path("b/x.jpg"), Path("a/x.png"), Path("c/x.png")]
    assert output_names(paths) == ["x", "x_jpg", "x_png", "x_2"]


def test_every_image_mode_is_converted(tiny_weights, tmp_path):
    from inference_helpers import make_image

    src = tmp_path / "modes"
    src.mkdir()
    rgb = Image.fromarray(make_image(5))  # 128 wide, 96 high
    rgb.convert("RGBA").save(src / "rgba.png")
    rgb.convert("P").save(src / "palette.png")
    Image.fromarray(make_image(6)[..., 0].astype(np.uint16) * 257).save(src / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rgb.save(src / "rotated.jpg", exif=exif)
    assert Image.open(src / "sixteen.png").mode.startswith("I")
    code = main([str(src), "-w", str(tiny_weights), "-o", str(tmp_path / "o"), "-q", "--batch-size", "4"])
    assert code == 0
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "o" / "overlays").iterdir()}
    assert sizes == {"rgba.png": (128, 96), "palette.png": (128, 96), "sixteen.png": (128, 96),
                     "rotated.png": (96, 128)}  # the overlay follows the displayed orientation
