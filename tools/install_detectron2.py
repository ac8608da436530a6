#!/usr/bin/env python3
"""Make ``import detectron2`` work in the Python environment that runs this script.

detectron2 is not published as a binary on the package index. This script:

1. does nothing if detectron2 is already importable (an official install, any release from 0.6 to main);
2. otherwise downloads ``pb1-detectron2==0.6`` from the package index: a source mirror whose Python files are
   byte-identical to detectron2's official v0.6 release, but which lacks the C++ sources and so cannot be built
   by pip. The archive is checked against a pinned sha256, and only its ``detectron2`` Python package is
   installed, as a pure-Python ``detectron2`` distribution without compiled ops. ``person_search.compat``
   supplies what the missing extension would have (and a clear error if one of its ops is called).

The index is read through its JSON "simple" API (PEP 691) because current pip refuses to even download this
sdist: its metadata names a direct-URL extra dependency.

Usage: python tools/install_detectron2.py [--index-url URL]
       python tools/install_detectron2.py --wheel-dir .whl   # only build a detectron2-0.6 wheel there (for
                                                             # another machine, e.g. the GPU machine's .whl/)
"""
import argparse
import hashlib
import http.client
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SETUP_PY = '''\
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    description="detectron2 0.6 Python sources without compiled ops (see person_search.compat)",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    # the model zoo reads its yaml/py configs through the installed package
    package_data={"detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]},
)
'''


ALTERNATIVES = (
    "Alternatives: pass the index with --index-url; install the official detectron2 from source "
    "(README.md, 'Installing detectron2'); or build a wheel with --wheel-dir on a machine that reaches the index."
)


def default_index_url():
    """The index pip uses here: $PIP_INDEX_URL, else pip's configured index-url ([install], then [global]), else
    PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    for key in ("install.index-url", "global.index-url"):
        configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
        if configured.returncode == 0 and configured.stdout.strip():
            return configured.stdout.strip()
    return "https://pypi.org/simple"


def fetch(url, what, accept=None):
    """The body of ``url``, or an exit naming ``what`` could not be fetched and the alternatives."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.read()
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError; a cut-off download
        raise SystemExit(f"error: cannot fetch {what} from {url} ({e}). {ALTERNATIVES}")


def sdist_url(index_url):
    page = index_url.rstrip("/") + "/pb1-detectron2/"
    body = fetch(page, "the pb1-detectron2 project page", accept="application/vnd.pypi.simple.v1+json")
    try:
        files = json.loads(body)["files"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"error: {page} did not answer with the JSON simple API (PEP 691). {ALTERNATIVES}")
    for entry in files:
        if entry.get("filename") == SDIST_NAME:
            return urllib.parse.urljoin(page, entry["url"])  # mirrors may give URLs relative to the page
    raise SystemExit(f"error: {SDIST_NAME} is not listed by {page}. {ALTERNATIVES}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-url", help="package index (default: pip's, from $PIP_INDEX_URL or pip config)")
    parser.add_argument("--wheel-dir", help="build a wheel into this folder instead of installing")
    args = parser.parse_args()

    if args.wheel_dir is None and importlib.util.find_spec("detectron2") is not None:
        import detectron2

        print(f"detectron2 {detectron2.__version__} already installed at {os.path.dirname(detectron2.__file__)}")
        return
    if args.wheel_dir is None and importlib.util.find_spec("torch") is None:
        raise SystemExit(f"error: install torch into {sys.executable} before detectron2")

    url = sdist_url(args.index_url or default_index_url())
    data = fetch(url, SDIST_NAME)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"error: {url} has sha256 {digest}, expected {SDIST_SHA256}: not the file this script was checked "
            f"with, so it is not installed. {ALTERNATIVES}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        prefix = "pb1-detectron2-0.6/"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix + "detectron2/")]
            for member in members:
                member.name = member.name[len(prefix):]
            # the archive's sha256 is pinned; the "data" filter (Python >= 3.11.4 / 3.10.12) is a second guard
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(tmp, members=members, **safe)
        with open(os.path.join(tmp, "setup.py"), "w") as f:
            f.write(SETUP_PY)
        if args.wheel_dir is not None:
            pip_args = ["wheel", "-w", os.path.abspath(args.wheel_dir)]
        else:
            pip_args = ["install"]
        subprocess.check_call(
            [sys.executable, "-m", "pip", *pip_args, "-q", "--no-deps", "--no-build-isolation", tmp]
        )
    done = f"built a wheel in {args.wheel_dir}" if args.wheel_dir is not None else "installed"
    print(f"{done}: pure-Python detectron2 0.6 from {SDIST_NAME} (sha256 checked)")


if __name__ == "__main__":
    main()
