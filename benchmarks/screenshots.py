"""Screenshots of the report and the explorer (issue 18), to look at what they show.

    python benchmarks/screenshots.py --out /tmp/shots                    # trains a digits VAE, CVAE and M2 first
    python benchmarks/screenshots.py --out /tmp/shots runs/digits runs/cvae   # or shoots these runs

For each run: RUN-report.png (the whole report, after `vaekit evaluate` with small K has added its
numbers, when the run has none), RUN-explore.png (the explorer after clicking a test image,
dragging the point and interpolating) and, for a model with classes, RUN-explore-class.png (another class
picked). Uses the system Chromium through Playwright, as the browser tests do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

DIGITS_RUNS = {  # short runs: enough to look at, a minute on one core
    "vae": ["--epochs", "30"],
    "cvae": ["--model", "cvae", "--epochs", "60"],
    "m2": ["--model", "m2", "--labels-per-class", "10", "--epochs", "60"],
}


def vaekit(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "vaekit", *argv], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def shoot(browser, run: Path, out: Path) -> list[Path]:
    from vaekit.explore import load_explorer, make_server, url_of

    name, shots = run.name, []
    if not (run / "evaluation.json").is_file():
        vaekit("evaluate", str(run), "--iw-samples", "50", "--samples-per-class", "100")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto((run / "report.html").as_uri())
    page.screenshot(path=out / f"{name}-report.png", full_page=True)
    shots.append(out / f"{name}-report.png")

    server = make_server(load_explorer(run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page.goto(url_of(server))
    page.wait_for_function("document.getElementById('reconstruction').naturalWidth > 0")
    page.locator("#gallery img").nth(5).click()
    page.wait_for_timeout(400)
    page.locator("#interpolate").click()
    page.wait_for_function("document.getElementById('strip').naturalWidth > 0")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.35 * box["height"])
    page.wait_for_timeout(400)
    # hover a test image's dot: its thumbnail; then zoom in on the map with the wheel
    page.evaluate("window.scrollTo(0, 0)")  # clicking the interpolate button scrolled the map away
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate("toCanvas(state.info.map.points[3])")
    scale = box["width"] / page.evaluate("document.getElementById('map').width")
    page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=4)
    page.wait_for_function("getComputedStyle(document.getElementById('tip')).display === 'block'")
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(300)
    page.screenshot(path=out / f"{name}-explore-hover.png")
    shots.append(out / f"{name}-explore-hover.png")
    page.screenshot(path=out / f"{name}-explore.png", full_page=True)
    shots.append(out / f"{name}-explore.png")
    if page.locator("#classrow").is_visible():
        page.locator("#klass").select_option("8")
        page.wait_for_timeout(400)
        page.screenshot(path=out / f"{name}-explore-class.png", full_page=True)
        shots.append(out / f"{name}-explore-class.png")
    server.shutdown()
    server.server_close()
    page.close()
    if errors:
        print(f"{name}: console errors: {errors}", file=sys.stderr)
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default: train a digits VAE, CVAE and M2)")
    parser.add_argument("--out", type=Path, default=Path("shots"), help="folder for the PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.runs
    if not runs:
        where = Path(tempfile.mkdtemp(prefix="vaekit-shots-"))
        for name, flags in DIGITS_RUNS.items():
            vaekit("train", "--dataset", "digits", *flags, "--out", str(where / name))
        runs = [where / name for name in DIGITS_RUNS]

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        sys.exit("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        for run in runs:
            for shot in shoot(browser, run, args.out):
                print(shot)
        browser.close()


if __name__ == "__main__":
    main()
