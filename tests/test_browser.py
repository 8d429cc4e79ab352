"""The report and the explorer in a real browser (issue 18): the system Chromium, driven by Playwright.

Without a browser these tests skip, saying why; in CI (CI=true) a missing browser is a failure."""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest

import vaekit
import vaekit.report
from vaekit.cli import main
from vaekit.evaluate import evaluate as evaluate_model
from vaekit.explore import load_explorer, make_server, url_of

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the browser tests (.ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install -e '.[dev]')")
    executable = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if executable is None:
        missing(f"no browser found (none of {', '.join(BROWSERS)} on PATH; apt-get install chromium)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    """A page at url, and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1250, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page, errors


IMAGES_LOADED = "[...document.images].filter(i => !i.hidden).every(i => i.complete && i.naturalWidth > 0)"


# ---- the report


@pytest.fixture(scope="module")
def m2_run(browser, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "m2"
    return vaekit.train(out, dataset="digits", model="m2", labels_per_class=5, epochs=2, width=8, hidden=32,
                        latent_dim=4, progress=False)


@pytest.mark.parametrize("name", ["digits_run", "cvae_run", "m2_run"])
def test_report_in_the_browser(browser, name, request, tmp_path, capsys):
    run = shutil.copytree(request.getfixturevalue(name), tmp_path / "run")
    (run / "evaluation.json").unlink(missing_ok=True)  # the runs are shared between tests: start from none
    if name == "digits_run":
        assert main(["evaluate", str(run), "--iw-samples", "3", "--json"]) == 0
        capsys.readouterr()
    else:  # the test numbers without metrics(), whose judge of samples trains a classifier (minutes on 2 cores)
        model = vaekit.load(run)
        split, _, mode = vaekit.api.evaluation_data(run)
        test = vaekit.data.test_targets(split, 0, mode, "cpu")
        result = {**evaluate_model(model, test.x, test.y, iw_samples=3), "dataset": "digits"}
        vaekit.checkpoint.save_evaluation(run, result)
        vaekit.report.write_report(run)
    page, errors = open_page(browser, (run / "report.html").as_uri())
    assert page.evaluate(IMAGES_LOADED)
    assert page.evaluate("document.images.length") >= 8
    cells = page.evaluate("""[...document.querySelectorAll('td[data-value]')].map(
        td => [td.dataset.source, td.dataset.key, Number(td.dataset.value), td.textContent])""")
    evaluation = json.loads((run / "evaluation.json").read_text())["digits"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(metrics, key=lambda m: m["val_neg_elbo"])
    checked = 0
    for source, key, value, text in cells:
        expected = evaluation[key] if source == "evaluation:digits" else best[f"{source}_{key}"]
        assert value == expected, (source, key)
        assert float(text.split(" ± ")[0]) == pytest.approx(expected, abs=1e-3, rel=1e-4), (source, key, text)
        checked += 1
    keys = {key for source, key, *_ in cells if source == "evaluation:digits"}
    assert {"neg_elbo", "recon", "kl", "nll"} <= keys
    if name == "m2_run":  # the model's own number, reported by its bounds()
        assert "label_error" in keys
    assert checked >= 10
    assert errors == []
    page.close()


# ---- the explorer


@pytest.fixture(scope="module")
def explorer_url(browser, digits_run):  # the browser first: without one, skip before training anything
    server = make_server(load_explorer(digits_run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield url_of(server)
    server.shutdown()
    server.server_close()


def started(page) -> None:
    """Wait for the page to load its info and show test image 0."""
    page.wait_for_function("document.getElementById('reconstruction').naturalWidth > 0")


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    for t in (0.25, 0.5, 0.75, 1.0):
        page.mouse.move(box["x"] + (start[0] + t * (end[0] - start[0])) * box["width"],
                        box["y"] + (start[1] + t * (end[1] - start[1])) * box["height"])
    page.mouse.up()


def decoded_changes(page, before: str) -> str:
    page.wait_for_function("src => document.getElementById('decoded').src !== src", arg=before)
    page.wait_for_function(IMAGES_LOADED)
    return page.locator("#decoded").get_attribute("src")


def test_explorer_moves_the_point_and_the_image_follows(browser, explorer_url):
    page, errors = open_page(browser, explorer_url)
    started(page)
    image = page.locator("#decoded").get_attribute("src")
    drag(page, (0.5, 0.5), (0.15, 0.2))
    image = decoded_changes(page, image)
    drag(page, (0.15, 0.2), (0.85, 0.8))
    decoded_changes(page, image)
    z = json.loads(page.locator("#zfield").input_value())
    assert len(z) == 16
    # a slider walks its axis from the current point
    image = page.locator("#decoded").get_attribute("src")
    page.locator("#sliders input").first.fill("0")
    decoded_changes(page, image)
    assert json.loads(page.locator("#zfield").input_value()) != z
    assert page.locator("#error").is_hidden()
    assert errors == []
    page.close()


def test_explorer_shows_a_clicked_test_image(browser, explorer_url):
    page, errors = open_page(browser, explorer_url)
    started(page)
    first = page.locator("#reconstruction").get_attribute("src")
    page.locator("#gallery img").nth(7).click()
    page.wait_for_function("src => document.getElementById('reconstruction').src !== src", arg=first)
    assert "test image 7" in page.locator("#selected").inner_text()
    assert page.evaluate("document.getElementById('reconstruction').naturalWidth") > 0
    # the map's ring is at the image's code: the point the server gave for it
    point = page.evaluate("state.point")
    status = page.evaluate("""async () => (await (await fetch('/api/image', {method: 'POST',
        body: JSON.stringify({index: 7})})).json()).point""")
    assert point == status
    page.locator("#interpolate").click()
    page.wait_for_function("document.getElementById('strip').naturalWidth > 0")
    assert "A: test image 0, B: test image 7" in page.locator("#ends").inner_text()
    assert errors == []
    page.close()


def test_explorer_shows_a_bad_request_and_serves_on(browser, explorer_url):
    page, errors = open_page(browser, explorer_url)
    started(page)
    page.locator("#zfield").fill("[1, 2, 3]")
    page.locator("#zgo").click()
    page.wait_for_selector("#error", state="visible")
    assert "list of 16 numbers" in page.locator("#error").inner_text()
    page.locator("#zfield").fill("not even JSON")
    page.locator("#zgo").click()
    page.wait_for_function("document.getElementById('error').textContent.includes('got str')")
    image = page.locator("#decoded").get_attribute("src")
    drag(page, (0.5, 0.5), (0.3, 0.7))
    decoded_changes(page, image)
    assert page.locator("#error").is_hidden()
    # the browser logs the refused requests (HTTP 400) itself; nothing else went wrong
    assert all("400" in e for e in errors), errors
    page.close()


def test_two_browsers_are_served_at_once(browser, explorer_url):
    contexts = [browser.new_context() for _ in range(2)]
    pages = [c.new_page() for c in contexts]
    for page in pages:
        page.goto(explorer_url)
    for page in pages:
        started(page)
    images = [p.locator("#decoded").get_attribute("src") for p in pages]
    for page, end in zip(pages, ((0.1, 0.1), (0.9, 0.9))):  # both drag, then both must follow
        drag(page, (0.5, 0.5), end)
    after = [decoded_changes(p, i) for p, i in zip(pages, images)]
    assert after[0] != after[1]
    for context in contexts:
        context.close()


def test_explorer_class_picker(browser, request):
    cvae_run = request.getfixturevalue("cvae_run")
    server = make_server(load_explorer(cvae_run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page, errors = open_page(browser, url_of(server))
        started(page)
        image = page.locator("#decoded").get_attribute("src")
        label = page.locator("#klass").input_value()
        page.locator("#klass").select_option("3" if label != "3" else "4")
        decoded_changes(page, image)
        assert errors == []
        page.close()
    finally:
        server.shutdown()
        server.server_close()


# ---- issue 31: a banner for a run that failed quietly; the explorer nearer the projector


def test_the_report_of_a_collapsed_run_opens_with_a_warning(browser, tmp_path):
    run = vaekit.train(tmp_path / "collapsed", dataset="digits", epochs=2, width=4, hidden=16, latent_dim=2, beta=50.0,
                       progress=False)
    page, errors = open_page(browser, (run / "report.html").as_uri())
    banner = page.locator("#warnings")
    assert banner.is_visible() and "posterior collapse" in banner.inner_text() and "--kl-warmup" in banner.inner_text()
    config = page.locator("h2", has_text="Config").bounding_box()
    assert banner.bounding_box()["y"] < config["y"]  # at the top of the page
    assert errors == []
    page.close()


def test_explorer_hover_zoom_pan_and_pages(browser, explorer_url):
    page, errors = open_page(browser, explorer_url)
    started(page)
    # hover a test image's dot: a thumbnail of it
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate("toCanvas(state.info.map.points[4])")
    scale = box["width"] / page.evaluate("document.getElementById('map').width")
    page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=3)
    page.wait_for_function("getComputedStyle(document.getElementById('tip')).display === 'block'")
    page.wait_for_function("document.getElementById('tipimg').naturalWidth > 0")
    assert page.locator("#tiptext").inner_text().startswith("test image ")
    assert page.evaluate("POINT_RADIUS") * 2 > 3  # dots larger than 3 px
    # the wheel zooms in around the pointer; Shift-drag pans; reset goes back
    before = page.evaluate("view.x1 - view.x0")
    page.mouse.wheel(0, -400)
    page.wait_for_function("w => view.x1 - view.x0 < w", arg=before)
    left = page.evaluate("view.x0")
    page.keyboard.down("Shift")
    drag(page, (0.5, 0.5), (0.7, 0.5))
    page.keyboard.up("Shift")
    assert page.evaluate("view.x0") < left
    page.locator("#resetview").click()
    assert page.evaluate("view.x1 - view.x0") == pytest.approx(before)
    # the sliders show the value they set, in z units
    value = page.locator("#sliders span").first.inner_text()
    assert "." in value and abs(float(value)) <= 2  # a value of z (a quantile of N(0, 1)), not a step number
    assert page.evaluate("Number(document.querySelector('#sliders input').max)") == 40
    # the gallery pages beyond the first 48 images, and finds any one by number
    page.locator("#next").click()
    page.wait_for_function("document.querySelector('#gallery img').dataset.index === '48'")
    page.locator("#goto").fill("300")
    page.locator("#gotobtn").click()
    page.wait_for_function("document.getElementById('selected').textContent.includes('test image 300')")
    page.locator("#filter").select_option("7")
    page.wait_for_function("document.getElementById('pageinfo').textContent.includes('page 1 of 1')")
    assert all("class 7" in t for t in page.evaluate("[...document.querySelectorAll('#gallery img')].map(i => i.title)"))
    assert errors == []
    page.close()


def test_explorer_error_banner_stays_in_sight_when_scrolled(browser, explorer_url):
    page, errors = open_page(browser, explorer_url)
    started(page)
    page.set_viewport_size({"width": 1250, "height": 500})
    page.locator("#zfield").fill("[1, 2]")
    page.locator("#zgo").click()
    page.wait_for_selector("#error", state="visible")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("window.scrollY > 300")
    top = page.locator("#error").bounding_box()["y"]
    assert 0 <= top < 50  # stuck to the top of the window, not scrolled away
    assert all("400" in e for e in errors), errors
    page.close()
