"""Downloads against a local HTTP server: verification, corruption, retries and resumption."""

from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import os
import re
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from vaekit import download as dl
from vaekit.config import DataConfig
from vaekit.data import load_dataset
from vaekit.errors import VaekitError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass


class RangeHandler(QuietHandler):
    """Honours `Range: bytes=N-` with 206 Partial Content; records the ranges asked for."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers["Range"] else 0
        self.server.requests.append((path.name, start))
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


class FlakyHandler(QuietHandler):
    """The first request for each file gets half the promised bytes, then the connection drops."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        self.server.requests[path.name] += 1
        if self.server.requests[path.name] > 1:
            return super().do_GET()
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Fake IDX .gz files under tmp_path/www, with SOURCES['mnist'] expecting their hashes."""
    www = tmp_path / "www"
    www.mkdir()
    rng = np.random.default_rng(0)
    shapes = {"images": (12, 4, 4), "labels": (12,)}
    sums = {}
    for name in FILES:
        array = rng.integers(0, 10, shapes["images" if "images" in name else "labels"], dtype=np.uint8)
        header = np.array([0x800 + array.ndim, *array.shape], ">u4").tobytes()
        (www / name).write_bytes(gzip.compress(header + array.tobytes()))
        sums[name] = hashlib.sha256((www / name).read_bytes()).hexdigest()
    monkeypatch.setitem(dl.SOURCES, "mnist", {"urls": ("http://unused.invalid/",), "sha256": sums})
    monkeypatch.setattr(dl, "BACKOFF_S", 0.0)
    return www


def serve(www: Path, handler: type = QuietHandler):
    """Start a server on 127.0.0.1 (a free port) in a thread; return (server, base URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(www)))
    server.requests = Counter() if handler is FlakyHandler else []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture
def server_for(served):
    started = []

    def start(handler=QuietHandler):
        started.append(serve(served, handler))
        return started[-1][0], started[-1][2]

    yield start
    for server, thread, _ in started:
        server.shutdown()
        server.server_close()
        thread.join()


def test_good_download_verifies_and_loads(served, server_for, tmp_path):
    _, url = server_for()
    dest = dl.download("mnist", tmp_path / "data", base_url=url, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # no .part left behind
    for name in FILES:
        assert (dest / name).read_bytes() == (served / name).read_bytes()
    data = load_dataset(DataConfig(dataset="mnist", data_dir=str(dest), val_fraction=0.25))
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 12)

    # Present and correct: skipped (a dead server would fail otherwise).
    before = {name: (dest / name).stat().st_mtime_ns for name in FILES}
    dl.download("mnist", dest, base_url="http://127.0.0.1:9/", retries=0, progress=False)
    assert {name: (dest / name).stat().st_mtime_ns for name in FILES} == before


def test_default_destination_is_the_cache(served, server_for, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "cache"))
    _, url = server_for()
    assert dl.download("mnist", base_url=url, progress=False) == tmp_path / "cache" / "mnist"
    assert len(load_dataset(DataConfig(dataset="mnist", val_fraction=0.25)).test) == 12


def test_corrupt_file_is_rejected_and_removed(served, server_for, tmp_path):
    (served / FILES[1]).write_bytes(b"not the file we expect")
    _, url = server_for()
    dest = tmp_path / "data"
    with pytest.raises(VaekitError, match=rf"{FILES[1]} from .*SHA-256 [0-9a-f]{{64}}, expected [0-9a-f]{{64}}"):
        dl.download("mnist", dest, base_url=url, progress=False)
    assert not (dest / FILES[1]).exists() and not (dest / f"{FILES[1]}.part").exists()


def test_dropped_connection_is_retried(served, server_for, tmp_path):
    server, url = server_for(FlakyHandler)
    dest = dl.download("mnist", tmp_path / "data", base_url=url, progress=False)
    assert all(server.requests[name] == 2 for name in FILES)
    for name in FILES:
        assert (dest / name).read_bytes() == (served / name).read_bytes()


def test_network_failure_after_retries(served, server_for, tmp_path):
    server, url = server_for(FlakyHandler)
    with pytest.raises(VaekitError, match=r"could not download train-images-idx3-ubyte.gz after 1 attempt"):
        dl.download("mnist", tmp_path / "data", base_url=url, retries=0, progress=False)
    _, url = server_for()
    with pytest.raises(VaekitError, match=r"after 3 attempt.*HTTP 404"):
        dl.download("mnist", tmp_path / "data", base_url=url + "missing/", retries=2, progress=False)


def test_resume_from_partial_file(served, server_for, tmp_path):
    server, url = server_for(RangeHandler)
    dest = tmp_path / "data"
    dest.mkdir()
    data = (served / FILES[0]).read_bytes()
    (dest / f"{FILES[0]}.part").write_bytes(data[:40])
    dl.download("mnist", dest, base_url=url, progress=False)
    assert (FILES[0], 40) in server.requests  # only the rest was asked for
    assert (dest / FILES[0]).read_bytes() == data and not (dest / f"{FILES[0]}.part").exists()


def test_restart_when_range_is_ignored(served, server_for, tmp_path):
    _, url = server_for()  # SimpleHTTPRequestHandler answers 200 with the whole file
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / f"{FILES[0]}.part").write_bytes(b"stale bytes from another file")
    dl.download("mnist", dest, base_url=url, progress=False)
    assert (dest / FILES[0]).read_bytes() == (served / FILES[0]).read_bytes()


def test_unknown_hash_is_recorded_not_checked(served, server_for, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(dl.SOURCES["mnist"]["sha256"], FILES[0], None)
    _, url = server_for()
    dest = dl.download("mnist", tmp_path / "data", base_url=url, progress=False)
    digest = hashlib.sha256((served / FILES[0]).read_bytes()).hexdigest()
    assert (dest / "SHA256SUMS").read_text() == f"{digest}  {FILES[0]}\n"
    assert "warning: no known SHA-256" in capsys.readouterr().err


@pytest.mark.parametrize(
    "base_url", ["", "  ", "ftp://127.0.0.1/mnist/", "file:///tmp/mnist/", "127.0.0.1:8000/mnist/", "http://",
                 "http://[::1/", "https:/host/mnist/"],
)
def test_base_url_must_be_an_http_url(served, tmp_path, monkeypatch, base_url):
    def no_network(*args):
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(dl, "_fetch_once", no_network)
    dest = tmp_path / "data"
    message = rf"^base_url {re.escape(repr(base_url))} is not an http\(s\) URL: give one like https://host/path/"
    with pytest.raises(VaekitError, match=message):
        dl.download("mnist", dest, base_url=base_url, progress=False)
    assert not dest.exists()


def test_no_base_url_means_the_standard_mirrors(served, server_for, tmp_path, monkeypatch):
    _, url = server_for()
    monkeypatch.setitem(dl.SOURCES["mnist"], "urls", ("http://127.0.0.1:9/", url))  # the first one is down
    dest = dl.download("mnist", tmp_path / "data", base_url=None, retries=0, progress=False)
    assert all((dest / name).read_bytes() == (served / name).read_bytes() for name in FILES)


def test_negative_retries_is_an_error(served, tmp_path):
    with pytest.raises(VaekitError, match="^retries must be 0 or more, got -1$"):
        dl.download("mnist", tmp_path / "data", base_url="http://127.0.0.1:9/", retries=-1, progress=False)


def test_unusable_destination_says_why(served, server_for, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(VaekitError, match=rf"^{tmp_path / 'file'}: cannot create the download folder \(File exists\)$"):
        dl.download("mnist", tmp_path / "file", base_url="http://127.0.0.1:9/", progress=False)

    def read_only_folder(file, mode="r", *args, **kwargs):  # the tests run as root: chmod blocks nothing
        if "w" in mode or "a" in mode:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(dl, "open", read_only_folder, raising=False)
    _, url = server_for()
    part = tmp_path / "data" / f"{FILES[0]}.part"
    with pytest.raises(VaekitError, match=rf"^{part}: cannot write \(Permission denied\)$"):
        dl.download("mnist", tmp_path / "data", base_url=url, progress=False)


def test_unknown_dataset():
    with pytest.raises(VaekitError, match="cannot download 'cifar'"):
        dl.download("cifar")


def test_fashion_mnist_hashes_match_the_debian_files():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not folder.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    for name, expected in dl.SOURCES["fashion-mnist"]["sha256"].items():
        assert dl._sha256(folder / name) == expected
