"""An S3-compatible server on 127.0.0.1 (moto's, from the dev extras), for the tests and benchmarks of study storage."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


class NoServer(RuntimeError):
    """moto[server] is not installed."""


@contextlib.contextmanager
def local_s3_server(bucket: str, log: Path | None = None):
    """Serve S3 on a free loopback port with `bucket` made; its endpoint and credentials are in os.environ meanwhile,
    where a user's environment has them (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Yields those variables."""
    from pyarrow import fs

    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        raise NoServer("moto[server] is not installed (pip install -e '.[dev]' installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    output = open(log, "w") if log else subprocess.DEVNULL
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=output, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                # from a URI, as ptlab opens storages: that path reads AWS_ENDPOINT_URL
                fs.FileSystem.from_uri(f"s3://{bucket}?allow_bucket_creation=true")[0].create_dir(bucket)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.5)
        yield env
    finally:
        process.terminate()
        process.wait(timeout=30)
        if log:
            output.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
