"""The drawing page in a real headless Chromium: draw a digit, predict, step through the reading.

Skips unless /usr/bin/chromium (or ``RNNLAB_CHROMIUM``) and Playwright are installed; with
``RNNLAB_REQUIRE_BROWSER=1`` (set by ``.ci/run``) a missing browser fails instead. ``RNNLAB_SCREENSHOT=docs/serve.png``
saves a screenshot; ``RNNLAB_SERVE_RUN=runs/...`` uses that run instead of the tiny test run
(the committed screenshot uses a properly trained LSTM).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["_fixtures_runs"]

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CHROMIUM = Path(os.environ.get("RNNLAB_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# A "3" in pad coordinates (the pad is 280x280): two bows, drawn as one stroke.
THREE = [(92, 78), (112, 56), (146, 48), (180, 58), (196, 84), (188, 112), (162, 132), (136, 140),
         (166, 146), (194, 166), (204, 196), (192, 226), (160, 242), (124, 242), (92, 226)]


def _missing(reason: str) -> None:
    if os.environ.get("RNNLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; RNNLAB_REQUIRE_BROWSER=1 asks for the browser test to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found (apt-get install -y chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        _missing("playwright is not installed (pip install -r requirements-dev.txt)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, serving):
    from rnnlab.serve.app import create_app

    run = os.environ.get("RNNLAB_SERVE_RUN") or request.getfixturevalue("trained_run")
    with serving(create_app(run)) as url:
        yield url


def smooth(points: list[tuple[int, int]], per_segment: int = 8) -> list[tuple[float, float]]:
    """A Catmull-Rom curve through ``points``, so the stroke looks hand-drawn rather than polygonal."""
    padded = [points[0], *points, points[-1]]
    out = []
    for i in range(1, len(padded) - 2):
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = padded[i - 1:i + 3]
        for k in range(per_segment):
            t = k / per_segment
            a, b, c, d = -0.5 * t**3 + t**2 - 0.5 * t, 1.5 * t**3 - 2.5 * t**2 + 1, -1.5 * t**3 + 2 * t**2 + 0.5 * t, \
                0.5 * t**3 - 0.5 * t**2
            out.append((a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3))
    return [*out, padded[-1]]


def draw(page, points: list[tuple[int, int]]) -> None:
    """One stroke with real mouse events (down, moves, up) through ``points`` in pad coordinates."""
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / 280, box["height"] / 280
    path = smooth(points)
    page.mouse.move(box["x"] + path[0][0] * sx, box["y"] + path[0][1] * sy)
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
    page.mouse.up()


def test_draw_predict_and_step_through(browser, served: str) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 860}, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(served + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('LSTM')")

    page.click("#predict")  # nothing drawn yet: a friendly message, no request
    assert "Draw a digit first" in page.inner_text("#error")

    draw(page, THREE)
    page.click("#predict")
    page.wait_for_function("/^[0-9]$/.test(document.getElementById('result-class').textContent)")
    assert page.locator("#error").is_hidden()
    predicted = int(page.inner_text("#result-class"))
    assert f"a {predicted}" in page.inner_text("#result-text")
    assert page.locator("#bars .bar").count() == 10

    # Per-row probabilities: the slider covers the 28 rows and moving it changes the display.
    slider = page.locator("#step-slider")
    assert slider.is_enabled() and slider.get_attribute("max") == "28"
    assert "28 of 28 rows" in page.inner_text("#step-label")
    slider.fill("9")
    assert "9 of 28 rows" in page.inner_text("#step-label")
    page.click("#play")  # the animation starts from the current step and ends on the last row
    page.wait_for_function("document.getElementById('step-label').textContent.includes('28 of 28 rows')",
                           timeout=10_000)

    if os.environ.get("RNNLAB_SCREENSHOT"):
        slider.fill("17")  # mid-reading, so the highlighted row and the evolving bars show
        page.wait_for_timeout(400)  # let the bars' transition finish
        out = Path(os.environ["RNNLAB_SCREENSHOT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
    assert not errors, errors
    page.close()


def test_upload_button(browser, served: str, tmp_path: Path) -> None:
    from PIL import Image, ImageDraw

    # Dark ink on light paper, larger than MNIST: the server inverts, crops and scales it.
    image = Image.new("RGB", (300, 240), (245, 242, 235))
    ImageDraw.Draw(image).line([(150, 30), (150, 210)], fill=(20, 20, 30), width=22)
    path = tmp_path / "one.png"
    image.save(path)
    page = browser.new_page(viewport={"width": 1100, "height": 860})
    page.goto(served + "/")
    page.set_input_files("#upload", str(path))
    page.wait_for_function("/^[0-9]$/.test(document.getElementById('result-class').textContent)")
    assert "inverted" in page.inner_text("#result-sub")
    page.close()


def test_pixel_view_model_steps_over_784_pixels(browser, untrained_run, serving) -> None:
    from rnnlab.serve.app import create_app

    run = untrained_run(["data.view=pixels", "model.hidden=8"])
    with serving(create_app(run)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 860})
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('784 pixels')")
        draw(page, THREE)
        page.click("#predict")
        page.wait_for_function("/^[0-9]$/.test(document.getElementById('result-class').textContent)")
        slider = page.locator("#step-slider")
        assert slider.get_attribute("max") == "784"
        slider.fill("100")  # pixel 100 lies in row 4
        assert "100 of 784 pixels (row 4)" in page.inner_text("#step-label")
        page.close()
