"""The web page in a real browser: `maskrcnn serve` on a loopback port, headless Chromium (the
Debian package, driven by Playwright for Python; no browser download) picks an image, and the
overlay and one table row per detection appear; moving the score threshold asks again; an
image dropped on the page replaces it. A
screenshot is saved as an artifact: under $MASKRCNN_TEST_ARTIFACTS if set, else pytest's tmp dir.
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from inference_helpers import make_image
from serve_helpers import encode

CHROMIUM = Path("/usr/bin/chromium")


def api_detections(url: str, image: bytes, score: float) -> list:
    request = urllib.request.Request(f"{url}/v1/predict?score_threshold={score}", data=image,
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["detections"]


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("MASKRCNN_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_page_shows_overlay_and_detections_in_chromium(tiny_server, tiny_weights, tmp_path, artifacts):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs the Debian package chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    picture = tmp_path / "shapes.png"
    picture.write_bytes(encode(make_image(0, 120, 160)))
    url, _ = tiny_server
    with sync_playwright() as playwright:
        expected = api_detections(url, picture.read_bytes(), 0.5)
        expected_high = api_detections(url, picture.read_bytes(), 0.7)
        assert len(expected) > len(expected_high) > 0
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            expect(page.locator("#model-name")).to_have_text(str(tiny_weights))
            page.set_input_files("#file", str(picture))
            rows = page.locator("#detections tbody tr")
            expect(rows).to_have_count(len(expected), timeout=30_000)
            first = rows.nth(0).locator("td")
            expect(first.nth(1)).to_have_text(expected[0]["class_name"])
            expect(first.nth(2)).to_have_text(f"{expected[0]['score']:.3f}")
            overlay = page.locator("#overlay")
            expect(overlay).to_be_visible()
            page.wait_for_function("document.getElementById('overlay').naturalWidth === 160")
            expect(page.locator("#download")).to_be_visible()
            assert page.get_attribute("#download", "href").startswith("blob:")
            page.locator("#score").fill("0.7")  # the slider: the page asks again at 0.7
            expect(rows).to_have_count(len(expected_high), timeout=30_000)
            expect(page.locator("#status")).to_contain_text(f"{len(expected_high)} detections in")
            # dropping a file on the drop zone works as picking one does
            dropped = encode(make_image(5, 96, 128))
            expected_drop = api_detections(url, dropped, 0.7)
            page.evaluate("""(bytes) => {
                const transfer = new DataTransfer();
                transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }""", list(dropped))
            page.wait_for_function("document.getElementById('overlay').naturalWidth === 128")
            expect(rows).to_have_count(len(expected_drop), timeout=30_000)
            expect(rows.nth(0).locator("td").nth(2)).to_have_text(f"{expected_drop[0]['score']:.3f}")
            shot = artifacts / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}")
            assert shot.stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()
