"""Latency of the explorer (issue 18): many requests against a running `vaekit explore` server.

    python benchmarks/explore_latency.py RUN [RUN ...] [--requests 1000]

For each run it starts `vaekit explore RUN --port 0` (its own process, as a user would) and sends, over
one keep-alive connection as a browser does, `--requests` requests of each kind a page sends while the
user moves: a decode of a random latent point z ~ N(0, I) (for a model with classes, a random class), a
decode of a random place on the map (a drag), and a slider step. Times are wall-clock per request, seen
by the client: the JSON round trip, the model's decode and traversal, and the PNG. The bar: p95 < 100 ms.
A decoder's cost does not depend on how long it was trained, so a 1-epoch Fashion-MNIST run times
the same as a converged one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def post(connection: http.client.HTTPConnection, path: str, body: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    doc = json.loads(response.read())
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise SystemExit(f"{path}: HTTP {response.status}: {doc}")
    return elapsed, doc


def measure(run: Path, requests: int, seed: int = 0) -> dict[str, list[float]]:
    server = subprocess.Popen([sys.executable, "-m", "vaekit", "explore", str(run), "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if " at http://" not in line:
            raise SystemExit(f"{run}: the explorer did not start")
        host, port = line.split(" at http://")[1].split("/")[0].rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", "/api/info")
        info = json.loads(connection.getresponse().read())
        rng = random.Random(seed)
        points = info["map"]["points"]
        us, vs = [p[0] for p in points], [p[1] for p in points]

        def labelled(body: dict) -> dict:
            if info["num_classes"]:
                body["label"] = rng.randrange(info["num_classes"])
            return body

        for _ in range(20):  # warm-up: first calls allocate
            post(connection, "/api/decode", labelled({"z": [0.0] * info["latent_dim"]}))
        times: dict[str, list[float]] = {"decode z": [], "decode map point": [], "slider step": []}
        z = [0.0] * info["latent_dim"]
        for _ in range(requests):
            z = [rng.gauss(0, 1) for _ in range(info["latent_dim"])]
            times["decode z"].append(post(connection, "/api/decode", labelled({"z": z}))[0])
            point = [rng.uniform(min(us), max(us)), rng.uniform(min(vs), max(vs))]
            times["decode map point"].append(post(connection, "/api/decode", labelled({"point": point}))[0])
            axis = rng.choice(info["axes"])["axis"]
            body = labelled({"z": z, "axis": axis, "step": rng.randrange(info["steps"])})
            times["slider step"].append(post(connection, "/api/slide", body)[0])
        connection.close()
        return times
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--requests", type=int, default=1000, help="requests of each kind per run (default: 1000)")
    args = parser.parse_args()
    print(f"{'run':28s} {'request':18s} {'n':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'mean ms':>8s}")
    worst = 0.0
    for run in args.runs:
        config = json.loads((run / "config.json").read_text())
        name = f"{run.name} ({config['data']['dataset']}, {config['model']['model']})"
        for kind, values in measure(run, args.requests).items():
            p95 = percentile(values, 95)
            worst = max(worst, p95)
            print(f"{name:28s} {kind:18s} {len(values):6d} {percentile(values, 50):8.2f} {p95:8.2f} "
                  f"{max(values):8.2f} {statistics.fmean(values):8.2f}")
    print(f"bar: p95 < 100 ms: {'yes' if worst < 100 else 'NO'} (worst p95 {worst:.2f} ms)")


if __name__ == "__main__":
    main()
