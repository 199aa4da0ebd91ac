"""Shared fixtures: offline, single-threaded, and a per-session feature cache."""

from __future__ import annotations

import os

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
    """An S3 server on loopback with a bucket `ptlab`; endpoint and credentials in the environment, as a user's would be."""
    from bench.s3 import NoServer, local_s3_server

    try:
        with local_s3_server("ptlab", tmp_path_factory.mktemp("moto") / "moto.log") as env:
            yield env
    except NoServer as err:
        pytest.skip(str(err))
