"""Kubernetes specs from our configuration, without a cluster (convrec_dagster/k8s.py).

The plain-dict checks always run. When dagster-k8s is installed (``pip install .[k8s]``), the same
dicts go through dagster-k8s's own builders: the executor's config schema, the step Job that
``k8s_job_executor`` would create for a training step (executor config merged with the op tag),
and the pod that ``PipesK8sClient`` would create; otherwise that part is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from convrec_dagster.k8s import (
    K8sDeployment,
    as_step_tags,
    executor_config,
    pipes_training_pod_spec,
    training_op_tags,
)
from convrec_dagster.pipes_training import torchrun_command
from convrec_dagster.resources import DUCKDB_TAGS

IMAGE = "registry.example.com/convrec-dagster:0.1.0-cuda"
DEPLOY = K8sDeployment(image=IMAGE, gpus_per_training_step=8, gpu_node_selector={"gpu": "h100"})
JOB = "/convrec/artifacts/models/convrec/torchrun_job.json"
HAVE_DAGSTER_K8S = importlib.util.find_spec("dagster_k8s") is not None
needs_dagster_k8s = pytest.mark.skipif(
    not HAVE_DAGSTER_K8S,
    reason="dagster-k8s is not installed (pip install '.[k8s]'); the plain-dict checks ran",
)


def _gpu_limit(resources: dict) -> str:
    return resources["limits"]["nvidia.com/gpu"]


def test_executor_config_mounts_the_home_and_runs_duckdb_steps_one_at_a_time():
    config = executor_config(DEPLOY)
    assert config["job_image"] == IMAGE and config["job_namespace"] == "convrec"
    assert config["volumes"] == [
        {"name": "convrec-home", "persistentVolumeClaim": {"claimName": "convrec-home"}}
    ]
    assert config["volume_mounts"] == [{"name": "convrec-home", "mountPath": "/convrec"}]
    ((key, value),) = DUCKDB_TAGS.items()  # the tag the DuckDB steps carry
    assert config["tag_concurrency_limits"] == [{"key": key, "value": value, "limit": 1}]
    assert (
        "CONVREC_HOME=/convrec" in config["env_vars"] and "CONVREC_RAW_DIR=/convrec/raw" in config["env_vars"]
    )


def test_training_op_tags_request_gpus_only_when_asked(monkeypatch):
    monkeypatch.delenv("CONVREC_K8S_TRAINING_GPUS", raising=False)
    assert training_op_tags() == {}
    monkeypatch.setenv("CONVREC_K8S_TRAINING_GPUS", "4")
    config = training_op_tags()["dagster-k8s/config"]
    assert _gpu_limit(config["container_config"]["resources"]) == "4"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in config["container_config"]["volume_mounts"]


def test_the_training_assets_carry_the_gpu_tag_when_set(monkeypatch):
    from assets.training import _training_asset
    from models.registry import spec

    monkeypatch.setenv("CONVREC_K8S_TRAINING_GPUS", "2")
    tags = _training_asset(spec("convrec")).op.tags  # what the module builds at import time
    assert tags["convrec/duckdb"] == "true"
    k8s_config = tags["dagster-k8s/config"]
    k8s_config = json.loads(k8s_config) if isinstance(k8s_config, str) else k8s_config
    assert _gpu_limit(k8s_config["container_config"]["resources"]) == "2"
    monkeypatch.delenv("CONVREC_K8S_TRAINING_GPUS")
    assert "dagster-k8s/config" not in _training_asset(spec("convrec")).op.tags


def test_pipes_training_pod_spec_runs_torchrun_on_the_gpus_with_the_home_mounted():
    command = torchrun_command(JOB, 8, python="python")
    spec = pipes_training_pod_spec(DEPLOY, command)
    container = spec["containers"][0]
    assert container["image"] == IMAGE
    assert container["command"][:4] == ["python", "-m", "torch.distributed.run", "--nproc_per_node=8"]
    assert container["command"][-2:] == ["--job", JOB]
    assert _gpu_limit(container["resources"]) == "8"
    assert {"name": "convrec-home", "mountPath": "/convrec"} in container["volumeMounts"]
    assert {"name": "convrec-home", "persistentVolumeClaim": {"claimName": "convrec-home"}} in spec["volumes"]
    assert spec["restartPolicy"] == "Never" and spec["nodeSelector"] == {"gpu": "h100"}


@needs_dagster_k8s
def test_dagster_k8s_builds_the_training_step_job_from_our_config():
    from dagster._config import process_config
    from dagster_k8s import k8s_job_executor
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    from convrec_dagster.definitions import build_defs

    config = executor_config(DEPLOY)
    checked = process_config(k8s_job_executor.config_schema.config_type, config)
    assert checked.success, checked.errors  # the executor's own config schema accepts it
    executor = k8s_job_executor.configured(config, name="convrec_k8s")
    assert build_defs(executor=executor).get_job_def("full_pipeline").executor_def.name == "convrec_k8s"
    # what K8sStepHandler does for a step: executor context, merged with the step's op tags
    context = K8sContainerContext(
        image_pull_policy=config["image_pull_policy"],
        env_vars=config["env_vars"],
        volumes=config["volumes"],
        volume_mounts=config["volume_mounts"],
        namespace=config["job_namespace"],
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["step_k8s_config"]),
    )
    step_tags = as_step_tags({**DUCKDB_TAGS, **training_op_tags(8, DEPLOY)})
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags)))
    launcher = SimpleNamespace(
        job_image=None,
        dagster_home="/opt/dagster/dagster_home",  # the K8sRunLauncher's
        instance_config_map="dagster-instance",
        postgres_password_secret=None,
    )
    job = construct_dagster_k8s_job(
        context.get_k8s_job_config(config["job_image"], launcher),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-convrec-model",
        user_defined_k8s_config=context.run_k8s_config,
        component="step_worker",
    )
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.image == IMAGE and container.args == ["dagster", "api", "execute_step"]
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    assert {v.name for v in pod.volumes} == {"convrec-home", "dshm"}
    assert (
        pod.volumes[[v.name for v in pod.volumes].index("convrec-home")].persistent_volume_claim.claim_name
        == "convrec-home"
    )
    assert {m.mount_path for m in container.volume_mounts} == {"/convrec", "/dev/shm"}
    assert pod.node_selector == {"gpu": "h100"}


@needs_dagster_k8s
def test_pipes_k8s_client_builds_the_training_pod_from_our_spec():
    from dagster_k8s.pipes import build_pod_body

    command = torchrun_command(JOB, 8, python="python")
    pod = build_pod_body(
        pod_name="dagster-convrec-model-train",
        image=IMAGE,
        command=command,
        env_vars={"DAGSTER_PIPES_CONTEXT": "x", "DAGSTER_PIPES_MESSAGES": "y"},
        base_pod_meta=None,
        base_pod_spec=pipes_training_pod_spec(DEPLOY, command),
    )
    container = pod.spec.containers[0]
    assert container.image == IMAGE and container.command == command
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    assert {"CONVREC_HOME", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= {
        e.name for e in container.env
    }
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "convrec-home"
    assert pod.spec.restart_policy == "Never"
