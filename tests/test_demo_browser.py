"""The demo page in a real headless Chromium: upload a video / an image, check the rendered timeline chart
(pixels of the screenshot) and the per-class bars against the JSON the service returned.

Needs Debian's chromium (scripts/install-browser.sh) and the `playwright` Python package (driving that
chromium; Playwright's own browser download is never used). Without them the tests skip, saying why.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from serving_helpers import (LABELS, ServiceProcess, encode_video, make_checkpoint, store_model, synthetic_face_frames,
                             synthetic_face_image)

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
CHROMIUM = os.environ.get("S4D_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# app.js: the scored face's box colour, PALETTE and the chart margins (CSS px)
SCORED = "#3457d5"
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0fb5c9", "#f032e6"]
MARGIN_TOP, MARGIN_BOTTOM, MARGIN_LEFT, MARGIN_RIGHT = 10, 28, 44, 12

pytestmark = pytest.mark.timeout(300)


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (run scripts/install-browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    profile = tempfile.mkdtemp(prefix="s4d-chromium-", dir=tmp_path_factory.mktemp("chromium"))
    with sync_api.sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                           args=CHROMIUM_FLAGS, viewport={"width": 1100, "height": 900})
        except Exception as e:  # noqa: BLE001 - a browser that cannot start here is a skip, not a failure
            pytest.skip(f"chromium at {CHROMIUM} did not start: {str(e).splitlines()[0]}")
        page = context.new_page()
        messages: list[str] = []
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        page.messages = messages
        yield page
        context.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    home = folder / "bentoml"
    tag = store_model(make_checkpoint(folder / "model.pt"), home, "s4d-champion",
                      {"metrics": {"test": {"uar": 0.4}}, "data_version": "demo"})
    with ServiceProcess("serving.service:S4DService", home, folder / "serve.log") as service:
        service.tag = tag
        yield service


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    """The real single-face clip where ../shared/media exists, else a video of rendered synthetic faces."""
    if (MEDIA / "single_face.mp4").is_file():
        return MEDIA / "single_face.mp4"
    folder = tmp_path_factory.mktemp("video")
    return encode_video(folder / "faces.mp4", synthetic_face_frames(3.0, fps=25.0, size=256), fps=25.0)


def upload(page, server, path: Path, route: str) -> dict:
    page.goto(f"{server.url}/demo")
    page.wait_for_function("document.getElementById('model').textContent.includes('s4d-champion')", timeout=30_000)
    with page.expect_response(lambda r: r.url.endswith(route), timeout=120_000) as answer:
        page.set_input_files("#file", str(path))
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
    return answer.value.json()


def check_scored_box(page, element: str, box: list[float], width: int, height: int, tmp_path) -> None:
    """The overlay shows the scored face's box where the answer puts it: SCORED-coloured pixels along
    the box's left and bottom edges, mapped from picture pixels to the displayed (letterboxed) element."""
    import cv2

    page.wait_for_function("document.getElementById('overlay').dataset.boxes !== undefined", timeout=30_000)
    png = page.locator("#overlay").screenshot(path=str(tmp_path / "overlay.png"))
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    el_w, el_h = page.evaluate(f"[document.querySelector('{element}').clientWidth, "
                               f"document.querySelector('{element}').clientHeight]")
    sy, sx = image.shape[0] / el_h, image.shape[1] / el_w  # device pixels per CSS pixel
    scale = min(el_w / width, el_h / height)
    ox, oy = (el_w - width * scale) / 2, (el_h - height * scale) / 2
    x1, y1, x2, y2 = (ox + box[0] * scale, oy + box[1] * scale, ox + box[2] * scale, oy + box[3] * scale)
    blue = np.abs(image.astype(int) - _rgb(SCORED)).max(axis=2) <= 40
    left = blue[int(sy * (y1 + 0.3 * (y2 - y1))):int(sy * (y1 + 0.7 * (y2 - y1))),
                max(0, int(sx * x1) - 3):int(sx * x1) + 4].any(axis=1)
    bottom = blue[max(0, int(sy * y2) - 3):int(sy * y2) + 4,
                  int(sx * (x1 + 0.3 * (x2 - x1))):int(sx * (x1 + 0.7 * (x2 - x1)))].any(axis=0)
    assert left.size and left.mean() > 0.9, f"no scored box edge at x={x1:.0f}"
    assert bottom.size and bottom.mean() > 0.9, f"no scored box edge at y={y2:.0f}"


def test_busy_state_while_waiting(browser_page, server, face_video):
    page = browser_page
    page.goto(f"{server.url}/demo")
    page.wait_for_function("document.getElementById('model').textContent.includes('s4d-champion')", timeout=30_000)
    page.set_input_files("#file", str(face_video))
    page.wait_for_function("document.body.dataset.state === 'busy'", timeout=10_000)
    assert page.locator(".spinner").is_visible() and page.locator("#file").is_disabled()
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
    assert not page.locator(".spinner").is_visible() and page.locator("#file").is_enabled()


def test_video_upload_draws_the_timeline(browser_page, server, face_video, tmp_path):
    import cv2

    page = browser_page
    start = len(page.messages)
    result = upload(page, server, face_video, "/predict_video")
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")
    assert result["kind"] == "video" and result["labels"] == LABELS
    assert page.inner_text("#label") == result["label"]
    assert server.tag in page.inner_text("#model")

    # per-class bars: one per class, widths as the answer's probabilities
    bars = page.locator("#bars .row")
    assert bars.count() == len(LABELS)
    for i, name in enumerate(LABELS):
        width = page.locator(f"#bars .row[data-label='{name}'] .fill").evaluate("e => e.style.width")
        assert float(width.rstrip("%")) == pytest.approx(100 * result["probabilities"][name], abs=0.06)

    # the chart: a screenshot of the canvas, checked pixel by pixel against the timeline in the answer
    timeline = result["timeline"]
    assert page.locator("#chart").get_attribute("data-rendered") == str(len(timeline))
    png = page.locator("#chart").screenshot(path=str(tmp_path / "chart.png"))
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    plot_h, plot_w = height - MARGIN_TOP - MARGIN_BOTTOM, width - MARGIN_LEFT - MARGIN_RIGHT
    duration = max(result["video"]["duration"], timeline[-1]["t_end"])

    def near(color: str, tolerance: int = 40) -> np.ndarray:
        return np.abs(image.astype(int) - _rgb(color)).max(axis=2) <= tolerance

    # every class line that is drawn shows its colour; the last-drawn class is never covered by another
    # line, so its colour must sit at the height of its probability over every segment with a face
    colours_seen = sum(int(near(c).sum() >= 20) for c in PALETTE[:len(LABELS)])
    assert colours_seen >= 3, f"only {colours_seen} class colours in the chart"
    last = LABELS[-1]
    mask = near(PALETTE[len(LABELS) - 1])
    for segment in timeline:
        if not segment["face"]:
            continue
        y = MARGIN_TOP + (1 - segment["probabilities"][last]) * plot_h
        x0 = MARGIN_LEFT + segment["t_start"] / duration * plot_w
        x1 = MARGIN_LEFT + segment["t_end"] / duration * plot_w
        columns = mask[int(y) - 3:int(y) + 4, int(x0) + 3:int(x1) - 3].any(axis=0)
        assert columns.size and columns.mean() > 0.8, f"the {last} line is not at y={y:.0f} over {segment}"
    # nothing of a class colour outside the plot area (the lines are clipped to their data)
    outside = mask.copy()
    outside[MARGIN_TOP - 2:MARGIN_TOP + plot_h + 3, MARGIN_LEFT - 2:MARGIN_LEFT + plot_w + 3] = False
    assert outside.sum() == 0
    errors = [m for m in page.messages[start:] if m.startswith(("error", "pageerror"))]
    assert not errors, errors
    # the tracked face's box over the video at its first frame (the player starts at t = 0)
    first = min(result["faces"], key=lambda f: f["t"])
    if first["box"] is not None:
        check_scored_box(page, "#player", first["box"], result["video"]["width"], result["video"]["height"],
                         tmp_path)


def test_image_upload_shows_bars_only(browser_page, server, tmp_path):
    import cv2

    page = browser_page
    path = tmp_path / "face.png"
    if (MEDIA / "0-f15-hao-ph.jpg").is_file():
        path = MEDIA / "0-f15-hao-ph.jpg"
    else:
        cv2.imwrite(str(path), synthetic_face_image(size=256)[:, :, ::-1])
    result = upload(page, server, path, "/predict_image")
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#status")
    assert result["kind"] == "image" and page.inner_text("#label") == result["label"]
    assert page.locator("#bars .row").count() == len(LABELS)
    assert page.locator("#timeline-card").is_hidden() and page.locator("#still").is_visible()
    assert page.locator("#overlay").get_attribute("data-boxes") == str(result["face"]["faces_found"])
    check_scored_box(page, "#still", result["face"]["box"], result["image"]["width"], result["image"]["height"],
                     tmp_path)


def test_group_photo_marks_the_scored_face(browser_page, server, tmp_path):
    """Several faces: each gets a box, the scored one (the largest) is the marked one."""
    if not (MEDIA / "multi_face.jpg").is_file():
        pytest.skip(f"no {MEDIA / 'multi_face.jpg'}")
    page = browser_page
    result = upload(page, server, MEDIA / "multi_face.jpg", "/predict_image")
    face = result["face"]
    assert face["faces_found"] >= 2 and len(face["boxes"]) == face["faces_found"]
    assert page.locator("#overlay").get_attribute("data-boxes") == str(face["faces_found"])
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in face["boxes"]]
    assert face["box"] == face["boxes"][int(np.argmax(areas))]
    check_scored_box(page, "#still", face["box"], result["image"]["width"], result["image"]["height"], tmp_path)


def test_bad_upload_shows_the_named_error(browser_page, server, tmp_path):
    page = browser_page
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"not a video at all\n" * 100)
    result = upload(page, server, path, "/predict_video")
    assert result["code"] == "not_media"
    assert page.evaluate("document.body.dataset.state") == "error"
    status = page.inner_text("#status")
    assert "not_media" in status and "not a recognised" in status
    assert page.locator("#result").is_hidden()
