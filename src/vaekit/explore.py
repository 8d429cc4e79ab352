"""`vaekit explore RUN`: a local web app to walk a model's latent space, served by the standard library.

The page (explore.html, no build step, nothing fetched from elsewhere) draws the 2-D map of the test
codes (latent_map.py) and asks the server, in JSON, for the images of latent points:

    GET  /api/info         the model's shape, the class names, the map, the axes ordered by KL (with the
                           value of each slider step: z units, or a category)
    POST /api/gallery      {"page", "label" (a class, -1: unknown; optional)} -> a page of test images
    POST /api/thumbnail    {"index"} -> one test image (the map's hover thumbnails)
    POST /api/decode       {"z": [D numbers]} or {"point": [u, v]} (a place on the map), "label" for a
                           model with classes -> the view of that point
    POST /api/slide        {"z", "axis", "step", "label"}: z moved to point `step` of model.traversal(z)'s
                           row `axis` -> its view (sliders compose: each walks from the current z)
    POST /api/image        {"index", "label"}: a test image, its reconstruction and the view of its code
    POST /api/interpolate  {"from", "to", "label", "steps"}: the decoded line between two test images' codes

A view is {"z", "image" (a PNG data URI), "point" (z on the map), "positions" (per axis, the step of
traversal(z) nearest z: where each slider stands)}. Every request is checked; a bad one (not JSON, a z
of the wrong length or not finite, a class the model lacks) gets HTTP 400 and {"error": "..."}, which
the page shows, and the server goes on serving. The model is used only through its contract
(models/base.py), under a lock, in eval mode.

A hostile client or web page gets no more: requests whose Host is not the server's own address or a
loopback name (DNS rebinding) get 403; a connection silent for SOCKET_TIMEOUT seconds (a Content-Length
larger than the body) is closed, at most MAX_CONNECTIONS are served at once, bodies are bounded by
MAX_BODY, and NaN, numbers too large for a float and JSON nested too deeply are 400s like any bad request.
"""

from __future__ import annotations

import html
import ipaddress
import json
import math
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import grids, runs
from .checkpoint import class_names
from .data import test_targets
from .devices import resolve_device
from .errors import VaekitError
from .grids import axis_kl
from .latent_map import LatentMap, latent_map
from .models.base import axis_size, class_labels, names_of
from .report import data_uri

MAP_IMAGES, GALLERY, STEPS = 2000, 48, 41  # slider steps: N(0, 1) quantiles 2.5 % .. 97.5 % in 40 even steps
MAX_BODY, MAX_ABS = 1 << 20, 1e4  # bytes of a request; the largest |z_d| or map coordinate accepted
SOCKET_TIMEOUT, MAX_CONNECTIONS = 30.0, 64  # seconds a connection may stay silent; connections served at once
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # Host values always served (as Jupyter does)


class RequestError(Exception):
    """A request the explorer refuses (HTTP 400); the message says why."""


class Explorer:
    """What the server answers from: the model, the test images and their map (fixed once built)."""

    def __init__(self, model, x: torch.Tensor, y: torch.Tensor | None, steps: int = STEPS,
                 shown: torch.Tensor | None = None, name: str = "", class_names: list[str] | None = None,
                 method: str = "auto"):
        """x: (N, C, H, W) the test images as the model sees them (binarized), y: (N,) their labels (-1: unknown);
        shown: the same images as people see them (grey levels; default x); name: the page's title;
        class_names: the name of each class (default its number); method: the map (latent_map.py)."""
        self.model, self.name = model.eval(), name
        self.x, self.y = x[:MAP_IMAGES], None if y is None else y[:MAP_IMAGES]
        self.shown = self.x if shown is None else shown[:MAP_IMAGES].to(x.device)
        self.lock = threading.Lock()  # one model call at a time: requests come from many threads
        self.device = x.device
        self.class_names = class_names or [str(c) for c in range(model.num_classes)]
        with torch.no_grad():
            codes = model.encode(self.x, self.y)
            self.codes = codes
            self.dim = codes.shape[1]
            self.plane: LatentMap = latent_map(codes.cpu().numpy(), method)
            walk = model.traversal(codes[0], steps)
            self.num_axes, self.steps = walk.shape[0], walk.shape[1]  # a categorical variable: its K categories
            kl = axis_kl(model, self.x, self.y, self.num_axes)
        self.kl = kl
        self.order = [int(a) for a in (np.argsort(-kl, kind="stable") if kl is not None else range(self.num_axes))]
        self.values = step_values(walk, codes[0], axis_size(model))

    # ---- checking requests

    def z_of(self, body: dict) -> torch.Tensor:
        z = body.get("z")
        if not isinstance(z, list) or len(z) != self.dim:
            got = f"{len(z)} numbers" if isinstance(z, list) else type(z).__name__
            raise RequestError(f"z must be a list of {self.dim} numbers (the latent dimension), got {got}")
        return torch.tensor(finite_numbers(z, "z"), dtype=torch.float32, device=self.device)

    def label_of(self, body: dict) -> int | None:
        label = body.get("label")
        if not self.model.num_classes:
            if label is not None:
                raise RequestError("this model draws no classes: leave out the label")
            return None
        if label is None:
            raise RequestError(f"this model draws a class per image: give a label in 0..{self.model.num_classes - 1}")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < self.model.num_classes:
            raise RequestError(f"label must be a class of this model, 0..{self.model.num_classes - 1}, got {label!r}")
        return label

    def index_of(self, body: dict, key: str) -> int:
        i = body.get(key)
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.x):
            raise RequestError(f"{key} must be the number of a test image, 0..{len(self.x) - 1}, got {i!r}")
        return i

    def int_in(self, body: dict, key: str, low: int, high: int, default: int | None = None) -> int:
        v = body.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise RequestError(f"{key} must be a whole number in {low}..{high}, got {v!r}")
        return v

    # ---- answers

    def _labels(self, label: int | None, n: int) -> torch.Tensor | None:
        return class_labels(label, n, self.model.num_classes, self.device) if label is not None else None

    def place(self, z: torch.Tensor) -> list[float]:
        """Where z is drawn on the map: its projection onto the plane; on a t-SNE map (which places only the
        test codes) the place of the nearest test code."""
        if self.plane.method == "tsne":
            nearest = int((self.codes - z).square().sum(-1).argmin())
            return [round(float(v), 5) for v in self.plane.points[nearest]]
        return [round(float(v), 5) for v in self.plane.to_map(z.cpu().double().numpy()[None])[0]]

    def view(self, z: torch.Tensor, label: int | None) -> dict:
        """The decoded image of z, its place on the map and the slider positions."""
        with self.lock, torch.no_grad():
            image = self.model.decode(z[None], self._labels(label, 1))[0]
            walk = self.model.traversal(z, self.steps)  # (A, S, D)
        positions = (walk - z).square().sum(-1).argmin(-1).tolist()
        return {"z": [round(float(v), 5) for v in z], "image": png_uri(image), "point": self.place(z),
                "positions": positions, "label": label}

    def info(self) -> dict:
        labels = None if self.y is None else self.y.tolist()
        return {
            "num_classes": self.model.num_classes, "class_names": self.class_names, "latent_dim": self.dim,
            "steps": self.steps, "image_shape": list(self.x.shape[1:]), "images": len(self.x), "per_page": GALLERY,
            "axis_name": names_of(self.model)["axis"], "classifies": hasattr(self.model, "predict_proba"),
            "axes": [{"axis": a, "kl": None if self.kl is None else round(float(self.kl[a]), 4),
                      "values": self.values[a]} for a in self.order],
            "map": {"points": np.round(self.plane.points, 4).tolist(), "labels": labels, "method": self.plane.method,
                    "xlabel": self.plane.xlabel, "ylabel": self.plane.ylabel},
            "gallery": self._page(0, None)["images"],
        }

    def _page(self, page: int, label: int | None) -> dict:
        chosen = range(len(self.x)) if label is None or self.y is None else (self.y == label).nonzero()[:, 0].tolist()
        pages = max(1, -(-len(chosen) // GALLERY))
        if not 0 <= page < pages:
            raise RequestError(f"page must be a whole number in 0..{pages - 1}, got {page!r}")
        shown = chosen[page * GALLERY : (page + 1) * GALLERY]
        return {"page": page, "pages": pages, "total": len(chosen),
                "images": [{"index": int(i), "image": png_uri(self.shown[i]),
                            "label": None if self.y is None else int(self.y[i])} for i in shown]}

    def gallery(self, body: dict) -> dict:
        """A page of GALLERY test images, of one class (label; -1: the unknown ones) or of all."""
        label = body.get("label")
        if label is not None:  # the test images' own labels (a model without classes may have them too)
            if self.y is None:
                raise RequestError("the test images have no labels: leave out the label")
            label = self.int_in(body, "label", min(int(self.y.min()), 0), int(self.y.max()))
        return self._page(self.int_in(body, "page", 0, 10**9, default=0), label)

    def thumbnail(self, body: dict) -> dict:
        i = self.index_of(body, "index")
        return {"index": i, "image": png_uri(self.shown[i]), "label": None if self.y is None else int(self.y[i])}

    def decode(self, body: dict) -> dict:
        label = self.label_of(body)
        if ("z" in body) == ("point" in body):
            raise RequestError("give either z (a latent point) or point (a place on the map), not both or neither")
        if "z" in body:
            return self.view(self.z_of(body), label)
        point = body["point"]
        if not isinstance(point, list) or len(point) != 2:
            raise RequestError("point must be a list of 2 numbers (a place on the map)")
        p = np.array(finite_numbers(point, "point"))
        if self.plane.method == "tsne":  # t-SNE has no way back: the code of the nearest test image
            nearest = int(np.square(self.plane.points - p).sum(-1).argmin())
            return {**self.view(self.codes[nearest], label), "nearest": nearest}
        z = self.plane.to_latent(p[None])[0]
        return self.view(torch.tensor(z, dtype=torch.float32, device=self.device), label)

    def slide(self, body: dict) -> dict:
        z, label = self.z_of(body), self.label_of(body)
        axis = self.int_in(body, "axis", 0, self.num_axes - 1)
        step = self.int_in(body, "step", 0, self.steps - 1)
        with self.lock, torch.no_grad():
            moved = self.model.traversal(z, self.steps)[axis, step]
        return self.view(moved, label)

    def image(self, body: dict) -> dict:
        """A test image: its code, reconstruction and view. A model that classifies (predict_proba: q(y|x))
        reads the image with its own class guess, the label shown; one that is given classes, with the known one."""
        i = self.index_of(body, "index")
        known = None if self.y is None else int(self.y[i])
        x = self.x[i : i + 1]
        probs = None
        if self.model.num_classes and hasattr(self.model, "predict_proba"):
            with self.lock, torch.no_grad():
                probs = self.model.predict_proba(x)[0]
            label, y = int(probs.argmax()), None  # the model's own q(y|x), not the true label
        else:
            label = known if self.model.num_classes and known is not None and known >= 0 else self.label_of(body)
            y = None if self.y is None else self.y[i : i + 1]
        with self.lock, torch.no_grad():
            z = self.model.encode(x, y)[0]
            recon = self.model.reconstruct(x, y)[0]
        doc = {**self.view(z, label), "index": i, "original": png_uri(self.shown[i]), "reconstruction": png_uri(recon),
               "true_label": known}
        if probs is not None:
            doc["class_probabilities"] = [round(float(p), 4) for p in probs]
        return doc

    def interpolate(self, body: dict) -> dict:
        a, b = self.index_of(body, "from"), self.index_of(body, "to")
        label, steps = self.label_of(body), self.int_in(body, "steps", 2, 32, default=10)
        ends = torch.tensor([a, b], device=self.device)
        with self.lock, torch.no_grad():
            za, zb = self.model.encode(self.x[ends], None if self.y is None else self.y[ends])
            t = torch.linspace(0, 1, steps, device=self.device, dtype=za.dtype)[:, None]
            images = self.model.decode(za + t * (zb - za), self._labels(label, steps))
        row = torch.cat([self.shown[a : a + 1], images, self.shown[b : b + 1]])
        return {"image": data_uri(grids.png_bytes(grids.image_grid(row, nrow=len(row), min_cell=1))),
                "from": a, "to": b, "steps": steps}


def step_values(walk: torch.Tensor, z: torch.Tensor, size: int) -> list[list[str]]:
    """Per latent axis, what each step of its traversal sets the axis to: a value in z units (a Gaussian
    dimension) or a category (a categorical variable of `size` dimensions)."""
    moved = (walk - z).abs().sum(1).argmax(-1)  # per axis, a coordinate its walk changes
    values = []
    for a in range(walk.shape[0]):
        start = int(moved[a]) - int(moved[a]) % size
        block = walk[a, :, start : start + size]  # (S, size)
        values.append([f"{float(v):+.2f}" for v in block[:, 0]] if size == 1
                      else [f"category {int(k) + 1}" for k in block.argmax(-1)])
    return values


def finite_numbers(values: list, name: str) -> list[float]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise RequestError(f"{name} must hold numbers only")
    # abs() first: an int too large for a float (10**400) makes math.isfinite() overflow
    if not all(abs(v) <= MAX_ABS and math.isfinite(v) for v in values):
        raise RequestError(f"{name} must hold finite numbers of size at most {MAX_ABS:g}")
    return [float(v) for v in values]


def parse_request(raw: bytes) -> dict:
    """The JSON object of a request body; anything else (not JSON, NaN, nested too deeply) is a RequestError."""
    def constant(name: str) -> float:
        raise RequestError(f"the request holds {name}: numbers must be finite")

    try:
        body = json.loads(raw, parse_constant=constant)
    except RecursionError:  # thousands of [ or {: the decoder's recursion limit
        raise RequestError("the request is nested too deeply to be a request of this page") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request is not JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request must be a JSON object, got {type(body).__name__}")
    return body


def png_uri(image: torch.Tensor) -> str:
    """A PNG data URI of one image (C, H, W) in [0, 1], at its own size (the page scales it up)."""
    return data_uri(grids.png_bytes(grids.image_grid(image[None], nrow=1, pad=0, min_cell=1)))


def page() -> bytes:
    return resources.files("vaekit").joinpath("explore.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    explorer: Explorer  # set on the subclass make_server builds
    protocol_version = "HTTP/1.1"  # keep-alive: a drag sends many requests
    disable_nagle_algorithm = True  # else headers and body, written apart, wait ~40 ms for the client's delayed ACK
    routes = {"/api/decode": Explorer.decode, "/api/slide": Explorer.slide, "/api/image": Explorer.image,
              "/api/interpolate": Explorer.interpolate, "/api/gallery": Explorer.gallery,
              "/api/thumbnail": Explorer.thumbnail}
    timeout = SOCKET_TIMEOUT  # a client that stops sending (a Content-Length larger than its body) frees the thread
    hosts: frozenset[str] = frozenset(LOCAL_HOSTS)  # the Host values served (make_server adds the bound address)

    def _host_allowed(self) -> bool:
        """Only requests addressed to this server by its own address or a loopback name: a web page that
        rebinds its own domain name to 127.0.0.1 (DNS rebinding) sends that name as Host and is refused."""
        name = host_name(self.headers.get("Host", ""))
        if name in self.hosts:
            return True
        if self.server.server_address[0] in ("0.0.0.0", "::"):  # every interface: an address, never a name
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    def _refuse_host(self) -> None:
        self.close_connection = True
        self._json(403, {"error": f"refused: Host {self.headers.get('Host', '')[:100]!r} is not this server's "
                                  "address; open the address `vaekit explore` printed"})

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request would flood the terminal
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict) -> None:
        self._send(status, json.dumps(doc).encode())

    def do_GET(self) -> None:
        if not self._host_allowed():
            return self._refuse_host()
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            title = html.escape(self.explorer.name).encode()
            self._send(200, page().replace(b"{{TITLE}}", title), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(200, self.explorer.info())
        else:
            self._json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:
        if not self._host_allowed():
            return self._refuse_host()
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self._json(411, {"error": "the request needs a Content-Length"})
        if length > MAX_BODY or length < 0:
            self.close_connection = True
            if 0 < length <= 64 * MAX_BODY:  # read it first, so the client hears the answer (not a broken pipe)
                while length > 0 and (chunk := self.rfile.read(min(length, 1 << 16))):
                    length -= len(chunk)
            return self._json(413, {"error": f"the request body is larger than {MAX_BODY} bytes"})
        raw = self.rfile.read(length)
        route = self.routes.get(path)
        if route is None:
            return self._json(404, {"error": f"no such request: POST {path}"})
        try:
            self._json(200, route(self.explorer, parse_request(raw)))
        except (RequestError, VaekitError) as e:
            self._json(400, {"error": str(e)})
        except Exception as e:  # a bug: say so on the page and in the terminal, and keep serving
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})


def host_name(host: str) -> str:
    """The name or address of a Host header, without its port or IPv6 brackets, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stop does not wait for open keep-alive connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        """A thread per connection, up to MAX_CONNECTIONS at once; beyond that a connection is closed at once."""
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # a browser tab closed mid-answer
            return
        super().handle_error(request, client_address)


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A server bound to host:port (0: a free port; see server.server_address), not yet serving."""
    handler = type("ExplorerHandler", (Handler,), {"explorer": explorer})
    try:
        server = Server((host, port), handler)
        handler.hosts = frozenset({*LOCAL_HOSTS, host_name(host), host_name(str(server.server_address[0]))})
        return server
    except OSError as e:
        raise VaekitError(f"cannot serve on {host}:{port}: {e.strerror or e} (choose another --port or --host)") from None
    except OverflowError:
        raise VaekitError(f"--port must be in 0..65535, got {port}") from None


def load_explorer(run: str | Path, device: str = "cpu", method: str = "auto") -> Explorer:
    """The explorer of a run folder: its best model and its own test images (binarized as in training);
    method: the map (auto, pca or tsne)."""
    model = runs.load_model(Path(run), resolve_device(device))
    split, data_cfg, mode = runs.evaluation_data(run)
    test = test_targets(split, data_cfg.split_seed, mode, next(iter(model.parameters())).device)
    return Explorer(model, test.x, test.y, shown=split.to_float(), name=Path(run).resolve().name,
                    class_names=class_names(Path(run), model.num_classes), method=method)


def url_of(server: Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


__all__ = ["Explorer", "RequestError", "make_server", "load_explorer", "url_of"]
