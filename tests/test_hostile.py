"""Issue 33: a hostile or careless user, a web page, a changed data file and damaged run files.

Each case was a traceback, a lost run or a silently wrong number; each is now one line (exit status 2 from
the CLI, a VaekitError from the API) or handled correctly, and loses nothing already written.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vaekit
from vaekit import VaekitError
from vaekit.cli import main

TINY = dict(dataset="digits", width=8, hidden=32, latent_dim=4, progress=False)


def one_line(code: int, err: str, pattern: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaekit: error:") and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".vaekit.lock"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return vaekit.train(tmp_path_factory.mktemp("hostile") / "run", epochs=1, **TINY)


@pytest.fixture(scope="module")
def cvae(tmp_path_factory) -> Path:
    return vaekit.train(tmp_path_factory.mktemp("hostile") / "cvae", model="cvae", epochs=1, **TINY)


@pytest.fixture
def copy_of(tmp_path):
    def make(run: Path) -> Path:
        return Path(shutil.copytree(run, tmp_path / run.name))
    return make


# ---- data loss


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "metrics.jsonl", "samples.png", "notes.txt"])
def test_no_command_writes_over_a_file_of_a_run_folder(run, copy_of, capsys, name):
    """`predict --out RUN/config.json` replaced the config with CSV; `sample --out RUN/samples.png` a picture."""
    mine = copy_of(run)
    (mine / "notes.txt").write_text("mine")
    before = snapshot(mine)
    for argv in (["predict", mine, "--out", mine / name], ["sample", mine, "--out", mine / name],
                 ["reconstruct", mine, "--out", mine / name]):
        code, err = cli(capsys, *argv)
        one_line(code, err, r"would replace a file of the run folder")
    assert snapshot(mine) == before
    assert cli(capsys, "sample", mine, "--n", "4", "--out", mine / "new.png")[0] == 0  # a new name there is fine


@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None, [True]])
def test_api_arguments_are_type_checked(run, copy_of, value):
    """`vaekit.train(..., overwrite="no")` replaced a finished run: any truthy value passed."""
    mine = copy_of(run)
    before = snapshot(mine)
    with pytest.raises(VaekitError, match=r"^overwrite = .* is not a valid value \(expected bool\)$"):
        vaekit.train(mine, overwrite=value, epochs=1, **TINY)
    assert snapshot(mine) == before


@pytest.mark.parametrize("call", [
    lambda: vaekit.load(None), lambda: vaekit.load(7), lambda: vaekit.evaluate(None), lambda: vaekit.train(None),
    lambda: vaekit.train(""), lambda: vaekit.train("a\0b"), lambda: vaekit.make_configs(model=["vae"]),
    lambda: vaekit.make_configs(model=None), lambda: vaekit.make_configs(dataset=None),
    lambda: vaekit.train("x", resume="yes"), lambda: vaekit.train("x", progress="no"),
    lambda: vaekit.load("x", device=0),
])
def test_api_calls_with_none_or_wrong_types(call):
    with pytest.raises(VaekitError) as info:
        call()
    assert "\n" not in str(info.value)


def test_evaluate_api_types(run):
    for kwargs in (dict(dataset=3), dict(data=["a"]), dict(iw_samples=2.5), dict(log="print"), dict(progress="x"),
                   dict(device="gpu"), dict(limit=True)):
        with pytest.raises(VaekitError):
            vaekit.evaluate(run, **kwargs)


def test_overwrite_refuses_a_folder_holding_another_run(run, tmp_path):
    """`train --overwrite` of a run deleted a finished run nested in a subfolder of it."""
    outer = Path(shutil.copytree(run, tmp_path / "outer"))
    shutil.copytree(run, outer / "experiments" / "inner")
    before = snapshot(outer)
    with pytest.raises(VaekitError, match=r"also holds another vaekit run: experiments/ \(a vaekit run\); nothing"):
        vaekit.train(outer, overwrite=True, epochs=1, **TINY)
    assert snapshot(outer) == before


def test_overwrite_refuses_files_a_run_did_not_write(run, tmp_path, capsys):
    mine = Path(shutil.copytree(run, tmp_path / "mine"))
    (mine / "thesis.tex").write_text("three years")
    (mine / "data").mkdir()
    before = snapshot(mine)
    code, err = cli(capsys, "train", "--dataset", "digits", "--width", "8", "--hidden", "32", "--latent-dim", "4",
                    "--epochs", "1", "--out", mine, "--overwrite")
    one_line(code, err, r"files a vaekit run does not write: data/, thesis.tex")
    assert snapshot(mine) == before
    assert not (mine / ".replaced").exists()


def test_overwrite_replaces_a_run_with_its_evaluations_per_k(run, tmp_path, capsys):
    """`vaekit evaluate` writes evaluation-K<K>.json into the run: a run's own file, which --overwrite may replace."""
    mine = Path(shutil.copytree(run, tmp_path / "evaluated"))
    code, _ = cli(capsys, "evaluate", mine, "--iw-samples", "2")
    assert code == 0
    assert (mine / "evaluation-K2.json").is_file()
    assert vaekit.train(mine, overwrite=True, epochs=1, **TINY) == mine
    assert not (mine / "evaluation-K2.json").exists()


# ---- numbers in range that overflowed later


@pytest.mark.parametrize("options, pattern", [
    (dict(seed=2**63 - 1), r"seed \(--seed\) must be <= 4294967295"),
    (dict(split_seed=2**62), r"split_seed \(--split-seed\) must be <= 4294967295"),
    (dict(split_seed=10**400), r"split_seed \(--split-seed\) = an int of \d+ bits is out of range"),
    (dict(model="categorical", groups=4096, categories=4096, hidden=65536), r"parameters: it needs about .* TB"),
    (dict(dist_timeout=1e300), r"dist_timeout .* must be <= 10000000"),
])
def test_numbers_in_range_that_overflowed_later(tmp_path, options, pattern):
    with pytest.raises(VaekitError, match=pattern):
        base = {k: v for k, v in TINY.items() if k != "latent_dim" or "groups" not in options}
        vaekit.train(tmp_path / "r", epochs=1, **{**base, **options})
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, pattern", [
    (["sample", "{run}", "--n", "1000000000000", "--out", "{tmp}/s.png"], r"n \(--n\) must be <= 4096"),
    (["sample", "{run}", "--seed", str(2**70), "--out", "{tmp}/s.png"], r"seed \(--seed\) must be <= 4294967295"),
    (["sample", "{cvae}", "--label", str(10**30), "--out", "{tmp}/s.png"], r"is not a class of this run"),
    (["reconstruct", "{run}", "--n", "100000", "--out", "{tmp}/s.png"], r"n \(--n\) must be <= 4096"),
    (["evaluate", "{run}", "--iw-samples", "1000000000", "--max-batch", "1000000000000"], r"iw_samples .* must be <="),
    (["evaluate", "{run}", "--iw-samples", str(2**20), "--max-batch", str(2**24), "--limit", "16"],
     r"a decoder pass over 16777216 \(image, sample\) pairs .* needs about .* of memory"),
    (["evaluate", "{cvae}", "--samples-per-class", str(10**12), "--limit", "2"], r"samples_per_class .* must be <="),
])
def test_cli_numbers_whose_products_cannot_fit(run, cvae, tmp_path, capsys, argv, pattern, monkeypatch):
    monkeypatch.setattr("vaekit.limits.device_memory", lambda device="cpu": 2**30)  # the same answer on any machine
    argv = [a.format(run=run, cvae=cvae, tmp=tmp_path) for a in argv]
    code, err = cli(capsys, *argv)
    one_line(code, err, pattern)
    assert not (tmp_path / "s.png").exists()


def test_sample_api_count_and_float_labels(run, cvae):
    """Float labels were truncated (2.7 became class 2); a count of 10**12 allocated terabytes."""
    with pytest.raises(VaekitError, match="at most 65536"):
        vaekit.load(run).sample(10**12)
    model = vaekit.load(cvae)
    for labels in ([2.7, 3.2], torch.tensor([1.0, 2.0]), [True, False], [10**30, 1], ["a", "b"]):
        with pytest.raises(VaekitError, match="labels must be"):
            model.sample(2, labels=labels)
    assert model.sample(2, labels=[2, 3]).shape[0] == 2


def test_a_config_json_with_huge_image_shapes(run, copy_of, capsys):
    mine = copy_of(run)
    doc = json.loads((mine / "config.json").read_text())
    for shape, pattern in (([1, 8, 10**6], r"image_shape\[2\] must be <= 4096"),
                           ([3, 4096, 4096], r"parameters: it needs about")):
        doc["model"]["image_shape"], doc["model"]["width"] = shape, 1024
        (mine / "config.json").write_text(json.dumps(doc))
        code, err = cli(capsys, "sample", mine, "--out", mine.parent / "s.png")
        one_line(code, err, pattern)


# ---- environment


@pytest.mark.parametrize("env, pattern", [
    ({"WORLD_SIZE": "two"}, r"WORLD_SIZE='two' must be a whole number"),
    ({"WORLD_SIZE": "2"}, r"WORLD_SIZE=2 is set but RANK is not: run under torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, r"RANK='5' must be a whole number in 0..1"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, r"MASTER_ADDR is not"),
])
def test_world_size_outside_torchrun(tmp_path, capsys, monkeypatch, env, pattern):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = cli(capsys, "train", "--dataset", "digits", "--epochs", "1", "--out", tmp_path / "r")
    one_line(code, err, pattern)
    assert not (tmp_path / "r").exists()


# ---- the explorer: a web page, a slow client, hostile JSON


@pytest.fixture(scope="module")
def explorer(run):
    from vaekit.explore import load_explorer, make_server

    server = make_server(load_explorer(run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def request(server, method: str, path: str, body: bytes | None = None, host: str | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        headers = {} if host is None else {"Host": host}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io", ""])
def test_explorer_refuses_a_foreign_host(explorer, host):
    """DNS rebinding: a page on evil.example, its name rebound to 127.0.0.1, read /api/info and the test images."""
    for method, path, body in (("GET", "/api/info", None), ("GET", "/", None),
                               ("POST", "/api/decode", json.dumps({"z": [0.0] * 4}).encode())):
        status, answer = request(explorer, method, path, body, host=host)
        assert status == 403 and "refused: Host" in answer["error"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST:{port}", "127.0.0.1:{port}"])
def test_explorer_serves_its_own_addresses(explorer, host):
    status, info = request(explorer, "GET", "/api/info", host=host.format(port=explorer.server_address[1]))
    assert status == 200 and info["latent_dim"] == 4


def test_explorer_survives_clients_that_never_send_their_body(explorer, monkeypatch):
    """A Content-Length larger than the body held a handler thread (and its socket) forever."""
    monkeypatch.setattr(explorer.RequestHandlerClass, "timeout", 0.5)
    stalled = []
    for _ in range(50):
        s = socket.create_connection(explorer.server_address[:2], timeout=60)
        s.sendall(b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"z\": [")
        stalled.append(s)
    for s in stalled:  # the server gives up on each (it closes the connection), instead of waiting forever
        try:
            while s.recv(65536):
                pass
        finally:
            s.close()
    status, info = request(explorer, "GET", "/api/info")
    assert status == 200 and info["latent_dim"] == 4


@pytest.mark.parametrize("body", [
    b'{"z": [1' + b"0" * 400 + b', 0, 0, 0]}',  # an int too large for a float
    b'{"z": [1e400, 0, 0, 0]}', b'{"z": [NaN, 0, 0, 0]}', b'{"z": [-Infinity, 0, 0, 0]}',
    b'{"point": [1' + b"0" * 400 + b", 0]}",
    b"[" * 100_000 + b"]" * 100_000, b'{"z": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"z": [0, 0, 0, 0], "label": 1' + b"0" * 4000 + b"}", b'{"index": 1' + b"0" * 5000 + b"}",
])
def test_explorer_hostile_json_is_a_400(explorer, capfd, body):
    path = "/api/image" if b"index" in body else "/api/decode"
    status, answer = request(explorer, "POST", path, body)
    assert status == 400 and "\n" not in answer["error"], answer
    assert "Traceback" not in capfd.readouterr().err
    assert request(explorer, "GET", "/api/info")[0] == 200


# ---- results that were silently wrong


def digits_npz(path: Path, n: int = 300, extra: int = 0) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[: n + extra] * 255 / 16).round().astype(np.uint8)
    np.savez(path, x=x, y=digits.target[: n + extra].astype(np.int64))
    return path


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("npz")
    digits_npz(folder / "d.npz")
    return vaekit.train(folder / "run", **{**TINY, "dataset": str(folder / "d.npz")}, epochs=1)


def test_a_changed_data_file_is_refused_not_silently_resplit(npz_run, tmp_path, capsys, monkeypatch):
    """Appending one image reshuffled the seeded split: evaluate reported numbers on training images."""
    data = Path(json.loads((npz_run / "config.json").read_text())["data"]["dataset"])
    assert json.loads((npz_run / "split.json").read_text())["sizes"] == {"train": 228, "val": 12, "test": 60}
    original = data.read_bytes()
    run = Path(shutil.copytree(npz_run, tmp_path / "run"))
    try:
        digits_npz(data, extra=1)
        pattern = r"the data of .* changed since it was trained: .* so its test split would hold training images"
        for argv in (["evaluate", run, "--iw-samples", "2"], ["reconstruct", run, "--out", tmp_path / "r.png"],
                     ["m1", run], ["predict", run], ["report", run], ["train", "--resume", run]):
            code, err = cli(capsys, *argv)
            one_line(code, err, pattern)
        from vaekit.explore import load_explorer

        with pytest.raises(VaekitError, match="changed since it was trained"):
            load_explorer(run)
        assert main(["evaluate", str(run), "--data", str(data), "--iw-samples", "2", "--json"]) == 0  # a whole file
    finally:
        data.write_bytes(original)
    assert main(["evaluate", str(run), "--iw-samples", "2", "--json"]) == 0


def test_runs_without_a_fingerprint_still_load(tmp_path, capsys):
    legacy = Path(shutil.copytree(Path(__file__).parent / "data" / "legacy-0.1" / "vae", tmp_path / "vae"))
    assert not (legacy / "split.json").exists()
    assert main(["evaluate", str(legacy), "--iw-samples", "2", "--limit", "10", "--json"]) == 0


def test_a_relative_dataset_path_is_stored_absolute(tmp_path, monkeypatch, capsys):
    """`--dataset d.npz` was stored as given: evaluate from another folder read another file, or none."""
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    digits_npz(tmp_path / "here" / "d.npz")
    monkeypatch.chdir(tmp_path / "here")
    assert main(["train", "--dataset", "d.npz", "--width", "8", "--hidden", "32", "--latent-dim", "4",
                 "--epochs", "1", "--out", "run"]) == 0
    stored = json.loads((tmp_path / "here" / "run" / "config.json").read_text())["data"]["dataset"]
    assert stored == str(tmp_path / "here" / "d.npz")
    monkeypatch.chdir(tmp_path / "elsewhere")
    digits_npz(tmp_path / "elsewhere" / "d.npz", extra=7)  # another file of the same name here
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "here" / "run"), "--iw-samples", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 60


def test_16_bit_images_keep_their_grey_levels(tmp_path):
    """16-bit PNGs were clipped to 8 bits: 99.7 % of the pixels became white."""
    from PIL import Image

    from vaekit.config import DataConfig
    from vaekit.data import load_dataset

    rng = np.random.default_rng(0)
    levels = rng.integers(0, 65536, (20, 8, 8)).astype(np.uint16)
    for i, image in enumerate(levels):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    data = load_dataset(DataConfig(dataset=str(tmp_path), val_fraction=0.1, test_fraction=0.1))
    parts = (data.train, data.val, data.test)
    x = torch.cat([p.x for p in parts]).float() / data.train.max_value
    expected = np.concatenate([levels[p.index.numpy()] for p in parts]) / 65535
    assert np.abs(x[:, 0].numpy() - expected).max() <= 1 / 255
    assert float((x == 1).float().mean()) < 0.01


def test_the_judge_of_one_dataset_is_not_reused_for_another(cvae, copy_of, tmp_path, capsys):
    """A judge cached for one data set was reused for another (its classes and images differ)."""
    run = copy_of(cvae)
    other = tmp_path / "other.npz"
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * 255 / 16).round().astype(np.uint8)
    np.savez(other, x=255 - x, y=(9 - digits.target).astype(np.int64))  # inverted images, relabelled classes
    said = []
    for dataset in (None, str(other), None):
        vaekit.evaluate(run, data=dataset, iw_samples=2, limit=10, samples_per_class=5, log=said.append)
        judge = json.loads((run / "classifier.json").read_text())
        assert judge["data"] == load_fingerprint(dataset or json.loads((run / "config.json").read_text())["data"]["dataset"])
    assert len([s for s in said if "training the judge" in s]) == 3


def load_fingerprint(dataset: str) -> str:
    from vaekit.config import DataConfig
    from vaekit.data import load_dataset

    return load_dataset(DataConfig(dataset=dataset)).fingerprint


# ---- run files of the wrong shape or type


def _edit_json(path: Path, change) -> None:
    path.write_text(change(path.read_text()))


def _deep(n: int = 100_000) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("name, change, argv, pattern", [
    ("metrics.jsonl", lambda t: t + "[1, 2, 3]\n", ["report", "{run}"], r"metrics.jsonl is damaged \(line 2 is a list"),
    ("metrics.jsonl", lambda t: t.replace('"epoch": 1', '"epoch": "1"'), ["train", "--resume", "{run}"],
     r"metrics.jsonl is damaged \(line 1 lacks a whole-number epoch"),
    ("metrics.jsonl", lambda t: t.replace('"lr": ', '"lr": {"a": 1}, "x": '), ["report", "{run}"], r"lr is not a number"),
    ("evaluation.json", lambda t: '{"test": {"neg_elbo": "low"}}', ["report", "{run}"], r"evaluation.json is damaged"),
    ("evaluation.json", lambda t: '{"test": {"neg_elbo": NaN, "recon": 1, "kl": 1, "nll": 1, "n_images": 1, '
     '"iw_samples": 1}}', ["report", "{run}"], r"evaluation.json is damaged"),
    ("evaluation.json", lambda t: _deep(), ["report", "{run}"], r"evaluation.json is damaged \(nested too deeply\)"),
    ("evaluation.json", lambda t: '[1]', ["report", "{run}"], r"evaluation.json is damaged"),
    ("config.json", lambda t: _deep(), ["evaluate", "{run}"], r"config.json is not a valid vaekit config: nested"),
    ("config.json", lambda t: '{"vaekit_version": "0.2.0", "data": ' + _deep(5000) + "}", ["sample", "{run}", "--out",
     "{run}/../s.png"], r"not a valid vaekit config"),
])
def test_run_files_of_the_wrong_shape(run, copy_of, capsys, name, change, argv, pattern):
    mine = copy_of(run)
    if name == "evaluation.json":
        (mine / name).write_text("{}")
    _edit_json(mine / name, change)
    code, err = cli(capsys, *[a.format(run=mine) for a in argv])
    one_line(code, err, pattern)


@pytest.mark.parametrize("field, value, pattern", [
    ("epoch", "1", r"train_state epoch is not a whole number"),
    ("batch", [0], r"train_state batch is not a whole number"),
    ("step", -3, r"train_state step is not a whole number"),
    ("best_val", "low", r"train_state best_val is not a number"),
    ("world", 0, r"train_state world is not a whole number"),
    ("bound", "neg_best", r"keeps the best weights by 'neg_best', but this model is validated by 'neg_elbo'"),
    ("bound", 3, r"train_state bound is not the name of a term"),
    ("param_groups", {"lr": 1}, r"param_groups is not a list"),
])
def test_train_state_fields_of_the_wrong_type(tmp_path, capsys, field, value, pattern):
    run = vaekit.train(tmp_path / "r", epochs=2, **TINY)
    path = run / "last.safetensors"
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        state = json.loads(f.metadata()["train_state"])
    state[field], state["epoch"] = value, 1 if field != "epoch" else value
    save_file(tensors, path, metadata={"train_state": json.dumps(state)})
    before = snapshot(run)
    code, err = cli(capsys, "train", "--resume", run, "--epochs", "3")
    one_line(code, err, pattern)
    assert snapshot(run) == before


@pytest.mark.parametrize("change, pattern", [
    (lambda t: {**t, "features": t["features"].clone().fill_(float("nan"))}, r"features hold NaN"),
    (lambda t: {**t, "features": t["features"][:, :2].contiguous()}, r"holds codes of 2 numbers but the model's have 4"),
    (lambda t: {**t, "labels": t["labels"][:-1].contiguous()}, r"wrong shapes or types"),
    (lambda t: {"features": t["features"]}, r"wrong shapes or types"),
    (lambda t: {**t, "labels": t["labels"].double()}, r"wrong shapes or types"),
])
def test_m1_features_of_the_wrong_shape(run, copy_of, capsys, change, pattern):
    mine = copy_of(run)
    assert main(["m1", str(mine), "--labels-per-class", "5"]) == 0
    save_file(change(load_file(mine / "m1.safetensors")), mine / "m1.safetensors")
    for argv in (["predict", mine], ["evaluate", mine, "--iw-samples", "2", "--limit", "20"]):
        code, err = cli(capsys, *argv)
        one_line(code, err, pattern)


def test_m1_recipe_and_judge_report_of_the_wrong_type(run, cvae, copy_of, capsys):
    mine = copy_of(run)
    assert main(["m1", str(mine), "--labels-per-class", "5"]) == 0
    (mine / "m1.json").write_text('["spreading"]')
    one_line(*cli(capsys, "predict", mine), r"m1.json is damaged")
    judged = copy_of(cvae)
    vaekit.evaluate(judged, iw_samples=2, limit=10, samples_per_class=5)
    for text in ('{"image_shape": [1, 8, 8], "num_classes": "ten", "test_accuracy": 0.9}', _deep(),
                 '{"image_shape": [1, 8, 1e9], "num_classes": 10, "test_accuracy": 0.9}'):
        (judged / "classifier.json").write_text(text)
        code, err = cli(capsys, "evaluate", judged, "--iw-samples", "2", "--limit", "10", "--samples-per-class", "5")
        one_line(code, err, r"classifier.json is damaged .*: delete it and classifier.safetensors to retrain the judge")


# ---- models and maps on degenerate data


@pytest.fixture(scope="module")
def m2(tmp_path_factory) -> Path:
    return vaekit.train(tmp_path_factory.mktemp("hostile") / "m2", model="m2", labels_per_class=5, epochs=1, **TINY)


def test_m2_on_batches_without_labelled_or_unlabelled_images(m2):
    model = vaekit.load(m2).train()
    x = torch.rand(6, 1, 8, 8).round()
    for y in (torch.full((6,), -1), torch.arange(6), None):
        terms = model(x, y)
        terms["loss"].backward()
        assert torch.isfinite(terms["loss"])


def test_m2_evaluated_on_data_without_labels(m2, tmp_path):
    np.savez(tmp_path / "nolabel.npz", x=np.random.default_rng(0).integers(0, 256, (30, 8, 8)).astype(np.uint8))
    said = []
    result = vaekit.evaluate(m2, data=str(tmp_path / "nolabel.npz"), iw_samples=2, samples_per_class=5, log=said.append)
    assert np.isfinite(result["nll"]) and "conditional_accuracy" not in result
    assert any("no labels" in s for s in said)


@pytest.mark.parametrize("n, d", [(2, 4), (3, 4), (5, 1), (2, 1), (40, 1)])
def test_tsne_on_few_points_or_a_1d_latent(n, d):
    from vaekit.latent_map import latent_map

    plane = latent_map(np.random.default_rng(0).normal(size=(n, d)), "tsne")
    assert plane.points.shape == (n, 2) and np.isfinite(plane.points).all()


def test_report_tsne_of_a_1d_latent(tmp_path):
    run = vaekit.train(tmp_path / "r", epochs=1, **{**TINY, "latent_dim": 1})
    assert main(["report", str(run), "--map", "tsne"]) == 0
