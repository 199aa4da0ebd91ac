"""The Ray cluster a study runs on: start a local one or join one, and how to watch it.

Kept free of heavy imports at module level: every Ray worker process of a
study imports it at start-up (`pin_ray_address`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# The Train controller polls its workers this often (s); Ray's 2 s default throttles short epochs.
TRAIN_POLL_S = "0.25"
# Environment of every Ray process of the study. Trials keep the driver's working
# directory so relative data paths mean what they meant to the user.
RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_S,
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    # Trial results carry only some metrics each epoch (e.g. val_acc every eval_every epochs).
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Tune's own console output; the study prints its own progress view.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Train runs are listed in the dashboard's Train view (and its REST API) only with this.
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
}
FORWARDED_ENV_PREFIXES = ("PTLAB_", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")
# Set in the driver before it starts a local cluster: every process of that cluster (GCS,
# raylet, agents, workers, what trials start) inherits it, which is how the processes a
# dead driver left are found later, and only those.
CLUSTER_MARK = "PTLAB_CLUSTER_ID"


@dataclass(frozen=True)
class RayConnection:
    dashboard_url: str | None
    started_here: bool
    cpus: float
    gpus: float
    cluster_id: str | None = None  # local clusters: the CLUSTER_MARK value of their processes
    session_dir: str | None = None  # local clusters: Ray's session folder (/tmp/ray/session_...)


def connect(address: str | None = None, num_cpus: int | None = None, study: str | None = None) -> RayConnection:
    """Join `address` or start a local cluster whose dashboard listens on 127.0.0.1 only.

    The driver's job carries the study's name in its metadata (`ptlab_study`),
    which the dashboard's Jobs view shows.

    The dashboard stays on: without it Ray Train leaks the placement groups of
    trials Tune stops (ray-project/ray#54305) and a study deadlocks. Token
    authentication stays on as Ray sets it up.
    """
    import ray
    from ray.job_config import JobConfig

    os.environ.update(RAY_ENV)
    if not address:
        # It watches for nodes being drained (spot instances); one process less per trial here.
        os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
        os.environ[CLUSTER_MARK] = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) or k in RAY_ENV
           or k == "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"}
    runtime_env = {"env_vars": env, "worker_process_setup_hook": "ptlab.study.cluster.pin_ray_address"}
    job_config = JobConfig(metadata={"ptlab_study": study} if study else {})
    if address:
        context = ray.init(address=address, runtime_env=runtime_env, log_to_driver=False,
                           logging_level=logging.WARNING, job_config=job_config)
    else:
        _bind_to_loopback()
        # address="local": never attach to whatever cluster /tmp/ray/ray_current_cluster names,
        # which outlives a crashed `ray start` and would make ray.init wait on a dead GCS.
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                           runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING,
                           job_config=job_config)
    resources = ray.cluster_resources()
    url = context.dashboard_url
    return RayConnection(
        dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
        started_here=not address,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        cluster_id=None if address else os.environ[CLUSTER_MARK],
        session_dir=None if address else context.address_info.get("session_dir"),
    )


# Ray's own switch for a cluster that never leaves the machine (its default on macOS and
# Windows): the node's address is 127.0.0.1, and every server (GCS, raylet, object manager,
# metrics agents, dashboard and its agent) binds to the node's address.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _bind_to_loopback() -> None:
    from ray._private import ray_constants

    os.environ[LOOPBACK_ONLY_ENV] = "0"  # the processes the cluster starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # this one, which imported Ray already


def disconnect(connection: RayConnection) -> None:
    """Leave the cluster; one started here is stopped and its session folder removed."""
    import ray

    ray.shutdown()
    if connection.started_here:
        end_cluster(connection.cluster_id, connection.session_dir)
        os.environ.pop(CLUSTER_MARK, None)


def _marked_processes(cluster_id: str) -> list[int]:
    """Processes of this user whose environment carries the cluster's mark."""
    needle = f"{CLUSTER_MARK}={cluster_id}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # ended meanwhile, or another user's
            continue
        if needle in environ.split(b"\0") and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def end_cluster(cluster_id: str | None, session_dir: str | None, grace_s: float = 5.0) -> int:
    """End what is left of a local cluster ptlab started, then remove its session folder; returns how many processes were left."""
    left = _marked_processes(cluster_id) if cluster_id else []
    found = len(left)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _marked_processes(cluster_id)
        if not left:
            break
    if session_dir and Path(session_dir).name.startswith("session_"):
        shutil.rmtree(session_dir, ignore_errors=True)
        latest = Path(session_dir).parent / "session_latest"
        if latest.is_symlink() and not latest.exists():
            latest.unlink(missing_ok=True)
    return found


def dashboard_help(connection: RayConnection) -> str:
    if not connection.dashboard_url:
        return "Ray dashboard: not running on this cluster"
    port = connection.dashboard_url.rsplit(":", 1)[-1]
    return (
        f"Ray dashboard: {connection.dashboard_url} (bound to this machine only; token authentication on).\n"
        f"  Open it in a browser and paste the token printed by `ray get-auth-token` (stored in ~/.ray/auth_token).\n"
        f"  From another machine: ssh -L {port}:127.0.0.1:{port} THIS_HOST, then open http://127.0.0.1:{port}"
    )


def pin_ray_address() -> None:
    """Runs first in every worker process of the study: name its own cluster in RAY_ADDRESS.

    Ray's state API, which Ray Train's placement-group cleaner uses to see that
    a stopped trial's controller is gone, otherwise finds "the" cluster through
    /tmp/ray/ray_current_cluster, i.e. whichever cluster last started on this
    machine. With two clusters on a machine the cleaner asks the wrong one, its
    thread dies, and the placement group of every trial ASHA stops leaks.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def _probe_write(target: str, relative: str, token: str) -> str:
    """Run on one node: write `token` where the study's trials will write; the error text, or "" once written."""
    from ptlab.study.storage import open_storage

    try:
        open_storage(target).write_bytes(relative, token.encode())
    except Exception as err:  # reported to the driver, which refuses the study with it
        return f"{type(err).__name__}: {err}"
    return ""


def check_nodes_reach(study_dir: Path, storage: str | None, connection: RayConnection) -> int:
    """Refuse a study whose trials' files some node could not hand to the driver; returns how many nodes were probed.

    On a cluster ptlab joined, or one of several nodes, a task on every node
    that can run trials writes a file where its trials will write (the
    storage, or else the study folder as that node sees it) and the driver
    reads it back. A local cluster ptlab started is one node on the driver's
    disk, and is not probed.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ptlab.study.storage import open_storage

    nodes = [n for n in ray.nodes() if n.get("Alive") and
             (n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)]
    if connection.started_here and len(nodes) <= 1:
        return 0
    target = storage or str(study_dir)
    reader = open_storage(target)
    token = uuid.uuid4().hex
    probes = {n["NodeID"]: f".probe/{n['NodeID'][:12]}-{token[:8]}" for n in nodes}
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_write)
    pending = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
               .remote(target, relative, token) for node, relative in probes.items()}
    fix = ("give the study a storage every node reaches: --storage s3://BUCKET/PREFIX (endpoint and credentials from "
           "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), gs://..., or a path every node mounts (README: Studies on a cluster)")
    try:
        for node in nodes:
            where = f"node {node['NodeManagerAddress']} ({node.get('NodeManagerHostname', '?')}, id {node['NodeID'][:12]})"
            relative = probes[node["NodeID"]]
            try:
                error = ray.get(pending[node["NodeID"]], timeout=120)
            except (ray.exceptions.RayError, TimeoutError) as err:
                raise RuntimeError(f"{where} did not answer the storage check ({type(err).__name__}); "
                                   "check the node, then run the study again") from None
            if error:
                raise RuntimeError(f"{where} cannot write its trials' files to {reader.display(relative)}: {error}; "
                                   f"{fix}")
            if reader.read_bytes(relative) != token.encode():
                raise RuntimeError(f"{where} wrote {reader.display(relative)}, but this driver does not find it there: "
                                   f"that node's trials would write results the driver never reads. The study folder "
                                   f"is not shared with it; {fix}")
    finally:
        for relative in probes.values():
            try:
                reader.filesystem.delete_file(reader.path(relative))
            except OSError:
                pass
        if reader.is_local:
            shutil.rmtree(reader.path(".probe"), ignore_errors=True)
    return len(nodes)
