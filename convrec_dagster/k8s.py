"""Kubernetes: what ``dagster-k8s`` receives from this project, as plain dicts (no cluster, no import).

- :func:`executor_config`: the config of ``dagster_k8s.k8s_job_executor`` (one pod per step): the
  image, ``CONVREC_HOME`` on a shared volume (a ReadWriteMany PVC), DuckDB steps one at a time
  (``tag_concurrency_limits`` on the ``convrec/duckdb`` tag they carry), default step resources;
- :func:`training_op_tags`: the ``dagster-k8s/config`` op tag of the training assets, requesting
  GPUs (and ``/dev/shm`` for NCCL); the assets carry it when ``CONVREC_K8S_TRAINING_GPUS`` is set;
- :func:`pipes_training_pod_spec`: the ``base_pod_spec`` for ``dagster_k8s.PipesK8sClient.run``,
  starting the torchrun training (``convrec_dagster.torchrun_entry``) in a pod of its own.

docs/deploy/kubernetes.md puts them together; tests/test_k8s.py checks them, and feeds them to
dagster-k8s's own job and pod builders when ``pip install .[k8s]`` is installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

USER_DEFINED_K8S_CONFIG_KEY = "dagster-k8s/config"  # the op tag dagster-k8s reads
DUCKDB_TAG_KEY, DUCKDB_TAG_VALUE = (
    "convrec/duckdb",
    "true",
)  # = resources.DUCKDB_TAGS (no Dagster import here)
TRAINING_GPUS_ENV = "CONVREC_K8S_TRAINING_GPUS"


@dataclass(frozen=True)
class K8sDeployment:
    """Where and how the pipeline runs on a cluster."""

    image: str  # the project's image: `pip install .[k8s]` on a CUDA base image
    namespace: str = "convrec"
    home_claim: str = (
        "convrec-home"  # PVC (ReadWriteMany) holding CONVREC_HOME: DuckDB file, export/, artifacts/
    )
    home_mount: str = "/convrec"
    raw_subdir: str = "raw"  # the raw dumps, under the home volume
    gpus_per_training_step: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: dict = field(
        default_factory=dict
    )  # e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    gpu_tolerations: tuple = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    step_cpu: str = "2"
    step_memory: str = "4Gi"  # DuckDB steps: memory_limit (e.g. 1GB) plus Python, Dagster and Arrow
    training_cpu_per_gpu: int = 8
    training_memory_per_gpu: str = "32Gi"
    shm_size: str = "16Gi"  # NCCL and DataLoader shared memory

    @property
    def home(self) -> str:
        return self.home_mount

    @property
    def raw_dir(self) -> str:
        return f"{self.home_mount}/{self.raw_subdir}"


def home_volume(d: K8sDeployment) -> tuple[dict, dict]:
    """(volume, volume mount) of the shared home."""
    return (
        {"name": "convrec-home", "persistentVolumeClaim": {"claimName": d.home_claim}},
        {"name": "convrec-home", "mountPath": d.home_mount},
    )


def shm_volume(d: K8sDeployment) -> tuple[dict, dict]:
    """A memory-backed /dev/shm: the container default (64 MB) is too small for NCCL."""
    return (
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": d.shm_size}},
        {"name": "dshm", "mountPath": "/dev/shm"},
    )


def env_vars(d: K8sDeployment) -> list[dict]:
    return [
        {"name": "CONVREC_HOME", "value": d.home},
        {"name": "CONVREC_RAW_DIR", "value": d.raw_dir},
        {"name": TRAINING_GPUS_ENV, "value": str(d.gpus_per_training_step)},
    ]


def training_resources(d: K8sDeployment, gpus: int) -> dict:
    return {
        "requests": {
            "cpu": str(d.training_cpu_per_gpu * gpus),
            "memory": _times(d.training_memory_per_gpu, gpus),
        },
        "limits": {d.gpu_resource: str(gpus), "memory": _times(d.training_memory_per_gpu, gpus)},
    }


def _times(quantity: str, n: int) -> str:
    number = quantity.rstrip("KMGTPEi")
    return f"{int(number) * n}{quantity[len(number) :]}"


def training_k8s_config(d: K8sDeployment, gpus: int | None = None) -> dict:
    """The ``dagster-k8s/config`` value for a training step: GPUs, CPU, memory, /dev/shm, GPU nodes."""
    gpus = d.gpus_per_training_step if gpus is None else gpus
    shm, shm_mount = shm_volume(d)
    pod_spec: dict = {"volumes": [shm], "tolerations": list(d.gpu_tolerations)}
    if d.gpu_node_selector:
        pod_spec["nodeSelector"] = dict(d.gpu_node_selector)
    return {
        "container_config": {"resources": training_resources(d, gpus), "volume_mounts": [shm_mount]},
        "pod_spec_config": pod_spec,
    }


def training_op_tags(gpus: int | None = None, d: K8sDeployment | None = None) -> dict:
    """Op tags of the training assets: ``{"dagster-k8s/config": ...}`` requesting ``gpus`` GPUs;
    ``gpus`` defaults to ``CONVREC_K8S_TRAINING_GPUS`` (unset or 0: no tag, nothing changes)."""
    if gpus is None:
        gpus = int(os.environ.get(TRAINING_GPUS_ENV) or 0)
    if gpus <= 0:
        return {}
    return {USER_DEFINED_K8S_CONFIG_KEY: training_k8s_config(d or K8sDeployment(image=""), gpus)}


def executor_config(d: K8sDeployment, max_concurrent: int = 4) -> dict:
    """``k8s_job_executor.configured(executor_config(d))``: every step a pod from ``d.image`` with
    the home mounted; DuckDB-writing steps (tag ``convrec/duckdb``) one at a time."""
    volume, mount = home_volume(d)
    return {
        "job_image": d.image,
        "job_namespace": d.namespace,
        "image_pull_policy": "IfNotPresent",
        "env_vars": [f"{e['name']}={e['value']}" for e in env_vars(d)],
        "volumes": [volume],
        "volume_mounts": [mount],
        "max_concurrent": max_concurrent,
        "tag_concurrency_limits": [{"key": DUCKDB_TAG_KEY, "value": DUCKDB_TAG_VALUE, "limit": 1}],
        "step_k8s_config": {
            "container_config": {
                "resources": {
                    "requests": {"cpu": d.step_cpu, "memory": d.step_memory},
                    "limits": {"memory": d.step_memory},
                }
            }
        },
    }


def pipes_training_pod_spec(d: K8sDeployment, command: list[str], gpus: int | None = None) -> dict:
    """``base_pod_spec`` for ``PipesK8sClient.run(..., image=d.image, command=command)``: one pod
    with ``gpus`` GPUs running ``command`` (``pipes_training.torchrun_command(..., python="python")``),
    the home and /dev/shm mounted. ``PipesK8sClient`` adds the Pipes variables and reads rank 0's
    messages from the pod's log."""
    gpus = d.gpus_per_training_step if gpus is None else gpus
    volume, mount = home_volume(d)
    shm, shm_mount = shm_volume(d)
    spec = {
        "containers": [
            {
                "name": "trainer",
                "image": d.image,
                "command": list(command),
                "env": env_vars(d),
                "resources": training_resources(d, gpus),
                "volumeMounts": [mount, shm_mount],
            }
        ],
        "volumes": [volume, shm],
        "restartPolicy": "Never",
        "tolerations": list(d.gpu_tolerations),
    }
    if d.gpu_node_selector:
        spec["nodeSelector"] = dict(d.gpu_node_selector)
    return spec


def as_step_tags(op_tags: dict) -> dict[str, str]:
    """Op tags as a step sees them (Dagster stores dict values as JSON strings)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in op_tags.items()}
