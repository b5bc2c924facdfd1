"""Predictor.predict takes what the CLI takes (folders, globs, videos, animated images, arrays)
and streams; `maskrcnn predict clip.mp4` writes per-frame results and an annotated video."""
from __future__ import annotations

import contextlib
import io
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.inference import ImageLoadError
from maskrcnn.inference.predict import main
from maskrcnn.inference.sources import InputItem, expand_inputs
from maskrcnn.io.video import VideoUnavailable, write_video

from inference_helpers import make_image

FRAMES = 3


def _same(a, b):
    """Same detections; float tolerance, as batch neighbours change the convolutions' rounding."""
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def _moving_frames():
    """Frames of a short clip: a bright blob crossing the noise image, so results change."""
    base = make_image(7)
    frames = []
    for k in range(FRAMES):
        f = base.copy()
        f[30:60, 10 + 30 * k:40 + 30 * k] = (230, 200, 40)
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    pytest.importorskip("av")
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", _moving_frames(), fps=10)


@pytest.fixture(scope="module")
def gif(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("gif") / "anim.gif", _moving_frames(), durations=[80] * FRAMES)


def _decoded(path):
    """The clip's frames decoded by PyAV directly, as the reference."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_folder_and_glob_give_the_files_they_name(tiny_predictor, image_dir):
    files = sorted(p for p in image_dir.glob("img*.png"))
    explicit = tiny_predictor.predict(files, score_threshold=0.3)
    by_glob = tiny_predictor.predict(str(image_dir / "img*.png"), score_threshold=0.3)
    assert [r.source for r in by_glob] == [str(p) for p in files]
    for a, b in zip(explicit, by_glob):
        _same(a, b)
    with pytest.raises(ImageLoadError, match="broken.png"):  # the folder includes the corrupt file
        tiny_predictor.predict(image_dir)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        tiny_predictor.predict(str(image_dir / "nothing-here"))


def test_stream_yields_one_result_per_image_as_it_goes(tiny_predictor, image_dir, monkeypatch):
    loads = []
    original = InputItem.load
    monkeypatch.setattr(InputItem, "load", lambda self, m: loads.append(self.label) or original(self, m))
    arrays = [make_image(i) for i in range(3)]
    stream = tiny_predictor.stream([image_dir / "img0.png", *arrays], score_threshold=0.3, batch_size=2)
    assert isinstance(stream, types.GeneratorType) and loads == []  # nothing read before asked
    first = next(stream)
    assert len(loads) == 2  # one batch read, not the whole input
    rest = list(stream)
    assert len(loads) == 4 and len(rest) == 3
    assert first.source == str(image_dir / "img0.png") and rest[0].source is None
    listed = tiny_predictor.predict(arrays, score_threshold=0.3)
    for a, b in zip(rest, listed):
        _same(a, b)
    also = tiny_predictor.predict(arrays, score_threshold=0.3, stream=True)
    assert not isinstance(also, list) and len(list(also)) == 3


def test_video_gives_every_frame(tiny_predictor, clip):
    results = list(tiny_predictor.stream(clip, score_threshold=0.3))
    assert [r.frame for r in results] == list(range(FRAMES))
    assert {r.source for r in results} == {str(clip)}
    reference = tiny_predictor.predict(_decoded(clip), score_threshold=0.3)
    for a, b in zip(results, reference):
        _same(a, b)
    assert len({len(r) for r in results} | {tuple(r.boxes.flatten().tolist()) for r in results}) > 1
    assert repr(results[2]).endswith("frame=2)")


def test_animated_gif_gives_every_frame(tiny_predictor, gif, tmp_path):
    results = tiny_predictor.predict(gif, score_threshold=0.3)
    assert [r.frame for r in results] == list(range(FRAMES))
    with Image.open(gif) as im:
        frames = []
        for k in range(FRAMES):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")))
    for a, b in zip(results, tiny_predictor.predict(frames, score_threshold=0.3)):
        _same(a, b)
    written = results[2].save(tmp_path)
    assert [p.name for p in written] == ["anim_000002.png", "anim_000002.json", "anim_000002_labels.png"]
    # a one-frame GIF is a plain image
    Image.fromarray(make_image(1)).save(tmp_path / "still.gif")
    [still] = expand_inputs(tmp_path / "still.gif")
    assert still.frame is None and still.reader is None


def test_without_pyav_a_video_is_refused_with_a_hint(tiny_predictor, tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(VideoUnavailable, match=r"clip.mp4: .*maskrcnn\[video\]"):
        tiny_predictor.predict(tmp_path / "clip.mp4")


def test_a_broken_video_is_named(tiny_predictor, tmp_path):
    pytest.importorskip("av")
    (tmp_path / "broken.mp4").write_bytes(b"this is no video at all" * 10)
    with pytest.raises(ImageLoadError, match="broken.mp4: cannot read video"):
        tiny_predictor.predict(tmp_path / "broken.mp4")


def _cli(argv):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stderr.getvalue()


def test_cli_writes_per_frame_results_and_an_annotated_video(tiny_weights, tiny_predictor, clip, gif, tmp_path):
    import av

    out = tmp_path / "out"
    code, stderr = _cli([str(clip), str(gif), "--weights", str(tiny_weights), "--out", str(out),
                         "--score-threshold", "0.3", "-q"])
    assert code == 0, stderr
    images = json.loads((out / "images.json").read_text())
    assert [(i["file_name"], i["frame"]) for i in images] == \
        [(str(clip), k) for k in range(FRAMES)] + [(str(gif), k) for k in range(FRAMES)]
    results = json.loads((out / "results.json").read_text())
    reference = tiny_predictor.predict(_decoded(clip), score_threshold=0.3)
    for k, ref in enumerate(reference):
        frame_results = [r for r in results if r["image_id"] == images[k]["id"]]
        assert len(frame_results) == len(ref)
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == sorted([f"clip_{k:06d}.png" for k in range(FRAMES)] + [f"anim_{k:06d}.png" for k in range(FRAMES)])
    # the annotated video: every frame, the source's size and frame rate, showing the overlays
    with av.open(str(out / "videos" / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(10)
        video = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(video) == FRAMES and video[0].shape == (96, 128, 3)
    overlay = np.asarray(Image.open(out / "overlays" / "clip_000000.png")).astype(int)
    plain = _decoded(clip)[0].astype(int)
    assert np.abs(overlay - plain).mean() > 10  # the overlay shows detections
    # lossy, but the overlay's picture: far nearer to it than to the plain frame
    assert np.abs(video[0].astype(int) - overlay).mean() < 0.4 * np.abs(video[0].astype(int) - plain).mean()
    with Image.open(out / "videos" / "anim.gif") as im:
        assert im.n_frames == FRAMES and im.info["duration"] == 80
    assert "annotated video(s)" in stderr


def test_cli_legend_widens_still_overlays_only(tiny_weights, image_dir, gif, tmp_path):
    code, stderr = _cli([str(image_dir / "img0.png"), str(gif), "--weights", str(tiny_weights),
                         "--out", str(tmp_path / "o"), "--legend", "-q"])
    assert code == 0, stderr
    assert Image.open(tmp_path / "o" / "overlays" / "img0.png").width > 128
    assert Image.open(tmp_path / "o" / "overlays" / "anim_000000.png").size == (128, 96)


def test_folders_pick_up_videos_and_animations(clip, tmp_path):
    import shutil

    shutil.copy(clip, tmp_path / "b_clip.mp4")
    Image.fromarray(make_image(0)).save(tmp_path / "a.png")
    write_video(tmp_path / "c.webp", _moving_frames(), fps=5)
    (tmp_path / "notes.txt").write_text("not an input")
    items = expand_inputs(tmp_path)
    assert [(i.path.name, i.frame) for i in items] == \
        [("a.png", None)] + [("b_clip.mp4", k) for k in range(FRAMES)] + [("c.webp", k) for k in range(FRAMES)]
    assert items[1].label == f"{tmp_path / 'b_clip.mp4'}#0" and items[-1].reader.fps == pytest.approx(5)
    last = items[-1].load(None).mul(255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(last, _moving_frames()[-1])  # written losslessly


def test_cli_without_pyav_stops_before_loading_the_model(tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    code, stderr = _cli([str(tmp_path / "clip.mp4"), "--weights", str(tmp_path / "missing.safetensors"),
                         "--out", str(tmp_path / "o")])
    assert code == 2 and 'pip install "maskrcnn[video]"' in stderr and "missing.safetensors" not in stderr
