"""The explorer's server (issue 18), spoken to over HTTP: answers, refusals (HTTP 400 with a message, the
server serving on), many clients at once, and the `vaekit explore` command's start and Ctrl-C stop.
The page in a real browser is tested in test_browser.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from vaekit.explore import load_explorer, make_server, url_of


@contextlib.contextmanager
def serving(run):
    """An explorer of run on a free port, serving in a thread: yields (url, server), then stops it."""
    server = make_server(load_explorer(run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield url_of(server), server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def vae_url(digits_run):
    with serving(digits_run) as (url, _):
        yield url


@pytest.fixture(scope="module")
def cvae_url(cvae_run):
    with serving(cvae_run) as (url, _):
        yield url


def call(url: str, path: str, body=None) -> tuple[int, dict]:
    """(status, JSON answer) of GET (body None) or POST (a dict, or raw bytes sent as they are)."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path.lstrip("/"), data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_info_and_decode(vae_url):
    status, info = call(vae_url, "/api/info")
    assert status == 200 and info["num_classes"] == 0 and info["latent_dim"] == 16
    assert len(info["axes"]) == 16 and sorted(a["axis"] for a in info["axes"]) == list(range(16))
    kl = [a["kl"] for a in info["axes"]]
    assert kl == sorted(kl, reverse=True)  # sliders ordered by KL
    assert len(info["map"]["points"]) == len(info["map"]["labels"]) > 100
    status, view = call(vae_url, "/api/decode", {"z": [0.0] * 16})
    assert status == 200 and view["image"].startswith("data:image/png;base64,")
    assert len(view["point"]) == 2 and view["positions"] == [info["steps"] // 2] * 16  # z = 0: every slider mid-way
    status, other = call(vae_url, "/api/decode", {"point": [1.5, -1.0]})
    assert status == 200 and other["image"] != view["image"]
    assert other["point"] == pytest.approx([1.5, -1.0], abs=1e-4)  # the map point goes back to where it came from


def test_sliders_walk_the_traversal_of_the_current_point(vae_url):
    _, info = call(vae_url, "/api/info")
    axis = info["axes"][0]["axis"]
    status, view = call(vae_url, "/api/slide", {"z": [0.0] * 16, "axis": axis, "step": 0})
    assert status == 200 and view["positions"][axis] == 0
    assert [p for a, p in enumerate(view["positions"]) if a != axis] == [info["steps"] // 2] * 15
    assert view["z"][axis] < -1.9  # the 2.5 % quantile of N(0, 1)


def test_a_test_image_and_interpolation(vae_url):
    status, doc = call(vae_url, "/api/image", {"index": 3})
    assert status == 200 and doc["index"] == 3
    assert doc["original"].startswith("data:image/png") and doc["reconstruction"].startswith("data:image/png")
    status, doc = call(vae_url, "/api/interpolate", {"from": 0, "to": 5, "steps": 6})
    assert status == 200 and doc["image"].startswith("data:image/png") and doc["steps"] == 6


@pytest.mark.parametrize("path, body, message", [
    ("/api/decode", b"not json", "not JSON"),
    ("/api/decode", b"[1, 2]", "JSON object"),
    ("/api/decode", {"z": [0.0] * 3}, "list of 16 numbers"),
    ("/api/decode", {"z": "0, 0"}, "list of 16 numbers"),
    ("/api/decode", b'{"z": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', "finite"),
    ("/api/decode", {"z": [1e300] + [0.0] * 15}, "finite"),
    ("/api/decode", {"z": ["a"] + [0.0] * 15}, "numbers only"),
    ("/api/decode", {"z": [0.0] * 16, "label": 3}, "draws no classes"),
    ("/api/decode", {}, "either z"),
    ("/api/decode", {"point": [1.0]}, "2 numbers"),
    ("/api/slide", {"z": [0.0] * 16, "axis": 16, "step": 0}, "axis must be"),
    ("/api/slide", {"z": [0.0] * 16, "axis": 0, "step": 41}, "step must be"),
    ("/api/image", {"index": 10**6}, "index must be"),
    ("/api/interpolate", {"from": 0, "to": 1, "steps": 1000}, "steps must be"),
])
def test_bad_requests_get_a_message_and_the_server_serves_on(vae_url, path, body, message):
    status, doc = call(vae_url, path, body)
    assert status == 400 and message in doc["error"], doc
    status, doc = call(vae_url, "/api/decode", {"z": [0.0] * 16})
    assert status == 200


def test_unknown_pages_and_huge_bodies(vae_url):
    assert call(vae_url, "/api/nothing")[0] == 404
    assert call(vae_url, "/api/nothing", {})[0] == 404
    status, doc = call(vae_url, "/api/decode", b" " * (2 << 20))
    assert status == 413 and "larger" in doc["error"]
    assert call(vae_url, "/api/decode", {"z": [0.0] * 16})[0] == 200


def test_classes(cvae_url):
    _, info = call(cvae_url, "/api/info")
    assert info["num_classes"] == 10
    z = [0.0] * info["latent_dim"]
    images = {call(cvae_url, "/api/decode", {"z": z, "label": c})[1]["image"] for c in (1, 7)}
    assert len(images) == 2  # the class changes the image
    for body, message in (({"z": z}, "give a label"), ({"z": z, "label": 10}, "0..9"),
                          ({"z": z, "label": -1}, "0..9"), ({"z": z, "label": True}, "0..9")):
        status, doc = call(cvae_url, "/api/decode", body)
        assert status == 400 and message in doc["error"], doc
    status, doc = call(cvae_url, "/api/image", {"index": 0})
    assert status == 200 and doc["label"] == info["map"]["labels"][0]  # a test image comes with its own class


def test_many_clients_at_once(vae_url):
    def decode(i: int) -> int:
        return call(vae_url, "/api/decode", {"point": [i / 10, -i / 20]})[0]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(decode, range(64))) == [200] * 64


def test_explore_command_starts_on_localhost_and_stops_on_ctrl_c(digits_run):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "vaekit", "explore", str(digits_run), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]
        assert call(url, "/api/info")[0] == 200
        with urllib.request.urlopen(url, timeout=30) as response:
            assert b"<canvas" in response.read()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill() if process.poll() is None else None
    assert process.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err


def test_explore_mistakes_are_one_line(digits_run, tmp_path, capsys):
    from vaekit.cli import main

    assert main(["explore", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    with serving(digits_run) as (_, server):  # a port that is taken
        assert main(["explore", str(digits_run), "--port", str(server.server_address[1])]) == 2
        err = capsys.readouterr().err
        assert "cannot serve on 127.0.0.1" in err and len(err.strip().splitlines()) == 1, err


# ---- issue 31: an explorer nearer the projector


def test_gallery_pages_thumbnails_and_slider_values(vae_url):
    _, info = call(vae_url, "/api/info")
    assert info["images"] == 359 and info["per_page"] == 48 and len(info["gallery"]) == 48
    status, page = call(vae_url, "/api/gallery", {"page": 7})  # beyond the first 48
    assert status == 200 and page["pages"] == 8 and [g["index"] for g in page["images"]] == list(range(336, 359))
    status, sevens = call(vae_url, "/api/gallery", {"label": 7})
    assert status == 200 and sevens["total"] == info["map"]["labels"].count(7)
    assert all(g["label"] == 7 for g in sevens["images"])
    assert call(vae_url, "/api/gallery", {"page": 8})[0] == 400
    status, thumb = call(vae_url, "/api/thumbnail", {"index": 300})
    assert status == 200 and thumb["image"].startswith("data:image/png") and thumb["index"] == 300
    # slider steps in z units: 41 quantiles of N(0, 1), 2.5 % to 97.5 %
    assert info["steps"] == 41 and info["axis_name"] == "dimension"
    values = [float(v) for v in info["axes"][0]["values"]]
    assert len(values) == 41 and values[0] == pytest.approx(-1.96, abs=0.01) and values[20] == 0.0
    assert values == sorted(values)


def test_a_tsne_map_decodes_the_nearest_test_code(digits_run):
    explorer = load_explorer(digits_run, method="tsne")
    info = explorer.info()
    assert info["map"]["method"] == "tsne"
    view = explorer.decode({"point": info["map"]["points"][12]})
    assert view["nearest"] == 12 and view["point"] == pytest.approx(info["map"]["points"][12], abs=1e-3)


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    import vaekit

    return vaekit.train(tmp_path_factory.mktemp("runs") / "m2", dataset="digits", model="m2", labels_per_class=5,
                        epochs=1, width=4, hidden=16, latent_dim=2, progress=False)


def test_a_model_that_classifies_shows_its_own_guess(m2_run):
    import torch

    explorer = load_explorer(m2_run)
    assert explorer.info()["classifies"]
    for index in range(20):
        doc = explorer.image({"index": index})
        with torch.no_grad():
            guess = int(explorer.model.predict_proba(explorer.x[index : index + 1]).argmax())
        assert doc["label"] == guess  # q(y|x), not the true label
        assert doc["true_label"] == int(explorer.y[index])
        assert len(doc["class_probabilities"]) == 10 and sum(doc["class_probabilities"]) == pytest.approx(1, abs=1e-3)
