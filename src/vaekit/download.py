"""Download MNIST, Fashion-MNIST and KMNIST (IDX files), CIFAR-10 (its binary version) and SVHN (.mat),
checked against known SHA-256 sums (MD5 where only that is published).

Each file streams to FILE.part (resumed with an HTTP Range request after an interruption), is
hashed, and only then renamed into place, so a file under its final name is always complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .data import default_cache_dir
from .errors import VaekitError

# Per dataset: mirrors (tried in order) and the four files with their SHA-256 (None: not known, then the
# hash is reported and written to SHA256SUMS instead of checked). The Fashion-MNIST sums are those of
# Debian's dataset-fashion-mnist files; the MNIST and KMNIST sums agree with torchvision and TFDS.
SOURCES: dict[str, dict] = {
    "mnist": {
        "urls": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        "sha256": {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    },
    "fashion-mnist": {
        "urls": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "sha256": {
            "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        },
    },
    "kmnist": {
        "urls": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        "sha256": {
            "train-images-idx3-ubyte.gz": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            "train-labels-idx1-ubyte.gz": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            "t10k-images-idx3-ubyte.gz": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            "t10k-labels-idx1-ubyte.gz": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
        },
    },
    "cifar10": {  # the binary version: records of bytes, read without pickle (data.py)
        "urls": ("https://www.cs.toronto.edu/~kriz/",),
        "sha256": {"cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"},
    },
    "svhn": {  # the cropped digits; the authors publish no SHA-256: their MD5 sums are checked instead
        "urls": ("http://ufldl.stanford.edu/housenumbers/",),
        "sha256": {"train_32x32.mat": None, "test_32x32.mat": None},
        "md5": {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"},
    },
}
TIMEOUT_S = 30.0  # per socket operation
BACKOFF_S = 1.0  # first retry delay; doubles each attempt
CHUNK = 1 << 16
# Worth another try: the network, not the request, failed.
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def download(
    name: str, dest: Path | None = None, *, base_url: str | None = None, retries: int = 3, progress: bool = True
) -> Path:
    """Fetch and verify the files of dataset `name` into dest (default: cache/NAME); return dest.

    Files already present with the right hash are skipped. base_url (an http(s) URL) replaces the
    standard mirrors; only None means the standard ones. Each file gets 1 + `retries` attempts per
    mirror, with exponential backoff between them.
    """
    if name not in SOURCES:
        raise VaekitError(f"cannot download '{name}': known datasets are {', '.join(SOURCES)}")
    if base_url is not None and not _is_http_url(base_url):
        raise VaekitError(
            f"base_url {base_url!r} is not an http(s) URL: give one like https://host/path/, "
            "or none for the standard mirrors"
        )
    if retries < 0:
        raise VaekitError(f"retries must be 0 or more, got {retries}")
    dest = Path(dest) if dest is not None else default_cache_dir() / name
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaekitError(f"{dest}: cannot create the download folder ({e.strerror or e})") from None
    mirrors = (base_url,) if base_url is not None else SOURCES[name]["urls"]
    md5 = SOURCES[name].get("md5", {})
    unverified = {}
    for filename, expected in SOURCES[name]["sha256"].items():
        target = dest / filename
        if target.is_file():
            actual = _sha256(target)
            if expected is None:
                unverified[filename] = actual
            if expected == actual or (expected is None and md5.get(filename) in (None, _digest(target, "md5"))):
                continue
        part = dest / f"{filename}.part"
        url = _fetch(mirrors, filename, part, retries, progress)
        actual = _sha256(part)
        check, want, got = "SHA-256", expected, actual
        if expected is None and filename in md5:
            check, want, got = "MD5", md5[filename], _digest(part, "md5")
        if want is not None and got != want:
            part.unlink()
            raise VaekitError(
                f"{filename} from {url} is damaged or not the expected file: {check} {got}, "
                f"expected {want} (the download was removed)"
            )
        os.replace(part, target)  # atomic: the final name only ever holds a complete, checked file
        if expected is None:
            unverified[filename] = actual
    if unverified:
        sums = dest / "SHA256SUMS"
        sums.write_text("".join(f"{h}  {f}\n" for f, h in unverified.items()))
        unchecked = [f for f in unverified if f not in md5]
        if unchecked:
            print(f"warning: no known SHA-256 for {', '.join(unchecked)}; their hashes were written to {sums}",
                  file=sys.stderr)
    return dest


def _is_http_url(url: object) -> bool:
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # e.g. an unclosed [ of an IPv6 host
        return False
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)


def _fetch(mirrors: tuple[str, ...], filename: str, part: Path, retries: int, progress: bool) -> str:
    """Download filename into `part` from the first mirror that works; return its URL."""
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                _fetch_once(url, part, progress)
                return url
            except urllib.error.HTTPError as e:
                e.close()
                errors.append(f"{url}: HTTP {e.code} {e.reason}")
                if e.code < 500 and e.code not in (408, 429):  # the server will not change its mind
                    break
            except _TRANSIENT as e:
                errors.append(f"{url}: {getattr(e, 'reason', None) or e!r}")
    raise VaekitError(
        f"could not download {filename} after {retries + 1} attempt(s) per mirror (last error: {errors[-1]}); "
        "check the network, or fetch the files yourself and pass --data-dir FOLDER"
    )


def _fetch_once(url: str, part: Path, progress: bool) -> None:
    """Append the rest of url to `part` (resuming from its size), or restart when Range is not honoured."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the .part is complete; the hash will tell
            e.close()
            return
        raise
    with response:
        if response.status != 206:
            offset = 0  # a full answer (200): start again
        expected = response.length  # bytes still to come, if the server said
        received = 0
        try:
            f = open(part, "ab" if offset else "wb")
        except OSError as e:  # not transient: the folder, not the network
            raise VaekitError(f"{part}: cannot write ({e.strerror or e})") from None
        with f, tqdm(
            total=None if expected is None else offset + expected, initial=offset, unit="B", unit_scale=True,
            desc=url.rsplit("/", 1)[1], disable=None if progress else True, leave=False,
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received < expected:  # http.client returns b"" when the peer hangs up
        raise http.client.IncompleteRead(b"", expected - received)


def _sha256(path: Path) -> str:
    return _digest(path, "sha256")


def _digest(path: Path, algorithm: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, algorithm).hexdigest()
    except OSError as e:
        raise VaekitError(f"{path}: cannot read ({e.strerror or e})") from None
