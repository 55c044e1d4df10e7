"""`cyconv serve`'s page in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright for
Python through its executable: no browser download) draws a 7 with mouse strokes on the page of a served
LeNet-5 and reads 7 from it; another drops a picture on a colour model's page.

Skipped with a message where Chromium, Playwright or the serve extra is missing, unless
CYCONV_TEST_BROWSER=1 (as in CI, which installs them), which makes that a failure.
"""

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cyconv.data import make_shapes
from cyconv.train import CHECKPOINT_NAME
from cli_helpers import run_captured

REQUIRED = os.environ.get("CYCONV_TEST_BROWSER", "") not in ("", "0")
CHROMIUM = os.environ.get("CYCONV_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing():
    try:
        import playwright.sync_api  # noqa: F401
        import fastapi, uvicorn, httpx  # noqa: F401, E401
    except ImportError as e:
        return f"{e.name} is not installed (pip install '.[serve,test]' playwright)"
    if CHROMIUM is None:
        return "no Chromium found (apt-get install chromium, or set CYCONV_CHROMIUM)"
    return None


if _missing():
    if REQUIRED:
        pytest.fail(f"CYCONV_TEST_BROWSER=1 but {_missing()}", pytrace=False)
    pytest.skip(_missing(), allow_module_level=True)

from test_serve import start_server  # noqa: E402 (needs the serve extra)


@pytest.fixture(scope="module")
def lenet_checkpoint(mnist_dir, tmp_path_factory):
    """`cyconv train` of LeNet-5 on 8,000 MNIST images for one epoch: ~96% test accuracy, in ~10 s."""
    out = tmp_path_factory.mktemp("lenet")
    status, _, stderr = run_captured("train", "--model", "lenet5", "--epochs", "1", "--limit", "8000", "--data",
                                     mnist_dir, "--out", out, "--no-progress")
    assert status == 0, stderr
    return out / CHECKPOINT_NAME


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def served(request):
    """`cyconv serve` of the checkpoint the test names (indirect), stopped afterwards."""
    process, url = start_server(request.getfixturevalue(request.param))
    yield url
    process.terminate()
    process.communicate(timeout=30)
    assert process.returncode == 0


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url + "/")
    return page


def strokes(page, box, lines):
    """Mouse strokes over `box` (the canvas's bounding box): each a list of (x, y) in 0..1 of the box."""
    for line in lines:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in line]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=12)
        page.mouse.up()


@pytest.mark.parametrize("served", ["lenet_checkpoint"], indirect=True)
def test_drawing_a_seven_reads_seven(browser, served):
    page = open_page(browser, served)
    pad = page.locator("#pad")
    pad.wait_for(state="visible")
    box = pad.bounding_box()
    assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= 1000 and box["y"] + box["height"] <= 800
    assert page.locator("#status").inner_text() == "Draw a digit" and page.locator("#drop").is_hidden()
    # A 7 as a person draws it: the bar, then the stem down and to the left, as two strokes.
    strokes(page, box, [[(0.25, 0.22), (0.75, 0.2)], [(0.75, 0.2), (0.6, 0.5), (0.45, 0.82)]])
    page.wait_for_function("document.getElementById('answer').textContent === '7'", timeout=15000)
    assert page.locator("#bars .name").count() == 10
    assert page.locator("#bars .top.name").inner_text() == "7"
    share = float(page.locator("#bars .top.value").inner_text().rstrip("%"))
    assert share > 50
    assert page.locator("#seen").evaluate("img => img.naturalWidth") == 28
    page.click("#clear")
    assert page.locator("#answer").inner_text() == "" and page.locator("#status").inner_text() == "Draw a digit"
    page.close()


@pytest.fixture(scope="module")
def folder_checkpoint(tmp_path_factory):
    root = make_shapes(24, size=16, seed=1).save(tmp_path_factory.mktemp("data") / "shapes")
    out = tmp_path_factory.mktemp("folder")
    status, _, stderr = run_captured("train", "--data-dir", root, "--out", out, "--image-size", 16, "--epochs", 1,
                                     "--batch-size", 8, "--no-progress", "--threads", 1)
    assert status == 0, stderr
    return out / CHECKPOINT_NAME


@pytest.mark.parametrize("served", ["folder_checkpoint"], indirect=True)
def test_dropping_a_photo_on_a_colour_model(browser, served):
    page = open_page(browser, served)
    drop = page.locator("#drop")
    drop.wait_for(state="visible")
    assert page.locator("#pad").is_hidden()
    picture = np.zeros((120, 160, 3), np.uint8)
    picture[30:90, 50:110] = (230, 200, 40)  # a yellow square on black
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    # A file dropped from the desktop: a drop event whose DataTransfer holds it.
    transfer = page.evaluate_handle("""bytes => {
        const t = new DataTransfer();
        t.items.add(new File([new Uint8Array(bytes)], "square.png", { type: "image/png" }));
        return t;
    }""", list(buffer.getvalue()))
    drop.dispatch_event("dragover", {"dataTransfer": transfer})
    drop.dispatch_event("drop", {"dataTransfer": transfer})
    page.wait_for_function("document.getElementById('answer').textContent !== ''", timeout=15000)
    names = page.locator("#bars .name").all_inner_texts()
    assert names == ["circle", "cross", "square", "triangle"]
    assert page.locator("#answer").inner_text() in names
    shares = [float(v.rstrip("%")) for v in page.locator("#bars .value").all_inner_texts()]
    assert abs(sum(shares) - 100) < 0.5
    seen = page.locator("#seen")
    assert seen.is_visible() and seen.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [16, 16]
    assert page.locator("#drop img").count() == 1  # the photo itself, shown where it was dropped
    page.close()
