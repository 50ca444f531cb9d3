"""The GPU code paths, exercised on CPU (bf16 autocast, torch.compile, out-of-memory handling), and
the tests marked ``gpu`` that ``benchmarks.gpu_check`` runs where CUDA is present."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.efficiency import run_steps
from models.registry import build_model
from models.synthetic import chain_data
from models.train import TrainConfig, train
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HP = {"d": 16, "hidden": 32, "max_len": 8, "dropout": 0.1}


@pytest.fixture(scope="module")
def data():
    return chain_data(n_users=80, n_items=30, min_len=5, max_len=12, seed=3)


def test_bf16_training_runs_on_cpu_through_autocast(data):
    config = TrainConfig(max_epochs=2, patience=2, batch_size=32, lr=3e-3, seed=0)
    torch.manual_seed(0)
    result = train(
        build_model("convrec", data, HP), data, "convrec", HP, config, "cpu", "bf16", log=lambda m: None
    )
    assert len(result.history) == 2
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert result.best_metrics["NDCG@10"] > 0


def test_compiled_sequence_mixer_matches_eager_on_cpu(data):
    from models.batching import make_batch

    torch.manual_seed(0)
    model = build_model("convrec", data, HP).eval()
    users = np.arange(1, 9)
    targets = data.user_ptr[users + 1] - 1
    cands = np.tile(np.arange(1, 11), (len(users), 1))
    batch = make_batch(data, users, targets, HP["max_len"], cands)
    eager = model.predict(batch)
    model.mix = torch.compile(model.mix, dynamic=False)
    compiled = model.predict(batch)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_an_out_of_memory_step_is_recorded_not_raised():
    calls = []

    def step(batch):  # a stub: this tests our handling of the error, not torch
        calls.append(batch)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 1.0

    result = run_steps(step, batches=range(5), sync=lambda: None, warmup=1)
    assert result["status"] == "OOM" and result["steps_done"] == 2
    assert "out of memory" in result["error"]
    assert run_steps(lambda b: 0.5, range(4), lambda: None, 1)["status"] == "ok"


def test_gpu_check_exits_at_once_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the check would run for minutes")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr
    assert '"status": "no_cuda"' in (tmp_path / "gpu_check.json").read_text()


def test_gpu_check_refuses_an_unknown_part(tmp_path, capsys):
    from benchmarks.gpu_check import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--parts", "tests,benchmarks"])
    assert exit_info.value.code == 2
    assert "--parts takes tests, training and efficiency" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_mix", [False, True])
def test_bf16_training_on_cuda(data, compile_mix):
    torch.manual_seed(0)
    model = build_model("convrec", data, HP)
    if compile_mix:
        model.mix = torch.compile(model.mix)
    config = TrainConfig(max_epochs=2, patience=2, batch_size=32, lr=3e-3, seed=0, scheme="all_cuts")
    result = train(model, data, "convrec", HP, config, "cuda", "bf16", log=lambda m: None)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert result.peak_memory_bytes > 0  # torch.cuda.max_memory_allocated


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_pipeline_trains_every_model_on_cuda(convrec_home, make_resources):
    """``full_pipeline`` on the embedded sample with the torch_device resource on CUDA: the product's
    GPU path end to end (images through ResNet-50 on the GPU, every model trained in bf16)."""
    import dagster as dg
    from test_pipeline_e2e import _assert_pipeline_outputs, build_defs

    job = build_defs(make_resources(device="cuda")).resolve_job_def("full_pipeline")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        _assert_pipeline_outputs(convrec_home, instance, result.run_id)
    trained = {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
        if event.asset_key.to_user_string().endswith("_model")
    }
    assert {"sasrec_model", "convrec_model", "convrec_attention_model"} <= set(trained)
    for name in ("sasrec_model", "convrec_model", "convrec_attention_model"):
        assert trained[name]["device"].value.startswith("cuda"), (name, trained[name]["device"])
        assert trained[name]["precision"].value == "bf16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_nccl_rank_trains_on_cuda(tmp_path):
    """The data-parallel path on a GPU: one rank, NCCL, DDP with ``device_id``, CUDA RNG state in the
    checkpoint (tests/test_distributed.py runs two gloo ranks on CPU)."""
    from distributed_ranks import MAX_EPOCHS, spawn

    out = spawn(tmp_path, ["convrec_one_cut"], out_root=tmp_path / "ckpt", world=1, device_kind="cuda")
    run = out["convrec_one_cut"]
    assert run["backend"] == "nccl" and run["epochs_run"] == MAX_EPOCHS
    assert all(math.isfinite(loss) for loss in run["loss"]) and run["best"] > 0
    assert (tmp_path / "ckpt" / "convrec_one_cut" / "resume.pt").exists()
