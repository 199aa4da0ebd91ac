"""The Ray cluster a study runs on: start a local one or join one, and how to watch it.

Kept free of heavy imports at module level: every Ray worker process of a
study imports it at start-up (`pin_ray_address`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

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
}
FORWARDED_ENV_PREFIXES = ("PTLAB_", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class RayConnection:
    dashboard_url: str | None
    started_here: bool
    cpus: float
    gpus: float


def connect(address: str | None = None, num_cpus: int | None = None) -> RayConnection:
    """Join `address` or start a local cluster whose dashboard listens on 127.0.0.1 only.

    The dashboard stays on: without it Ray Train leaks the placement groups of
    trials Tune stops (ray-project/ray#54305) and a study deadlocks. Token
    authentication stays on as Ray sets it up.
    """
    import ray

    os.environ.update(RAY_ENV)
    if not address:
        # It watches for nodes being drained (spot instances); one process less per trial here.
        os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) or k in RAY_ENV
           or k == "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"}
    runtime_env = {"env_vars": env, "worker_process_setup_hook": "ptlab.study.cluster.pin_ray_address"}
    if address:
        context = ray.init(address=address, runtime_env=runtime_env, log_to_driver=False,
                           logging_level=logging.WARNING)
    else:
        # address="local": never attach to whatever cluster /tmp/ray/ray_current_cluster names,
        # which outlives a crashed `ray start` and would make ray.init wait on a dead GCS.
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                           runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING)
    resources = ray.cluster_resources()
    url = context.dashboard_url
    return RayConnection(
        dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
        started_here=not address,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
    )


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
