"""Shared fixtures: offline, single-threaded, and a per-session feature cache."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("PTLAB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    """One feature cache for the whole run, as a study would share it."""
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session")
def random_tiny_clip(tmp_path_factory):
    """A randomly initialised tiny ResNet CLIP in open_clip's local-dir layout (no pretraining)."""
    from ptlab.world.pretrain import build_model, save

    folder = tmp_path_factory.mktemp("random-tiny-rn")
    save(build_model("tiny-rn", seed=0), "tiny-rn", {}, folder)
    return f"local-dir:{folder}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on loopback, with a bucket `ptlab`; endpoint and credentials as a user's environment gives them."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]' installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from pyarrow import fs

        deadline = time.monotonic() + 30
        while True:
            try:
                # from a URI, as ptlab opens storages: that path reads AWS_ENDPOINT_URL
                fs.FileSystem.from_uri("s3://ptlab?allow_bucket_creation=true")[0].create_dir("ptlab")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.5)
        yield env
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
