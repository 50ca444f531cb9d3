"""Data-parallel training: 2 CPU ranks with gloo against the one-process run, a killed 2-rank run
resuming, and torchrun started by a training asset through Dagster Pipes.

Tolerance. With the same seed and global batch, the 2-rank run sees the very examples, negatives
and augmentations of the one-process run (one shared NumPy stream) and averages the same
gradients, so with dropout 0 the only difference is floating-point summation order: each rank sums
its half of the batch, then the all-reduce adds the halves. That is float32 rounding, ~1e-7
relative per step, which Adam may amplify a little over a few hundred steps. We allow 1e-4 relative
on every epoch's mean loss and 1e-3 absolute on validation NDCG@10 (one user among 100 moving one
rank moves NDCG@10 by ~1e-3 or more, which a rounding-level change of a score can do only for a
near tie). A real error is far larger: a row dropped, counted twice or mis-weighted changes the
loss at ~1e-2, and a different seed moves it more (asserted as a control). With dropout > 0 the
ranks draw their own masks (per-rank torch generators), and the runs agree only in distribution.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
import torch
from distributed_ranks import HP, JOBS, MAX_EPOCHS, config, data, spawn

from models.batching import training_users
from models.distributed import DistEnv, local_share, shard_bounds
from models.registry import build_model
from models.synthetic import chain_data
from models.train import train

LOSS_RTOL, NDCG_ATOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def one_process() -> dict:
    torch.set_num_threads(1)
    out = {}
    for key, (name, scheme, ema_decay, protocol) in JOBS.items():
        rec = data()
        torch.manual_seed(0)
        result = train(
            build_model(name, rec, HP),
            rec,
            name,
            HP,
            config(scheme, ema_decay=ema_decay, valid_protocol=protocol),
            log=lambda m: None,
        )
        out[key] = {
            "loss": [h["loss"] for h in result.history],
            "best": result.best_metrics["NDCG@10"],
            "valid": [h["valid_NDCG@10"] for h in result.history],
            "valid_full": [h.get("valid_full_NDCG@10") for h in result.history],
            "best_epoch": result.best_epoch,
        }
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    return spawn(tmp_path_factory.mktemp("two_ranks"), list(JOBS))


def test_shares_cover_each_global_batch_once_and_weigh_to_its_mean():
    for n in (1, 2, 7, 33, 100):
        bounds = [shard_bounds(n, r, 3) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    # position-wise batches: the factors follow the target positions, and average to 1 over the ranks
    items = torch.arange(1, 13).reshape(4, 3)
    targets = torch.tensor([[1, 2, 3], [0, 0, 4], [0, 5, 6], [0, 0, 7]])
    shares = [local_share((items, targets, None), DistEnv(r, r, 2)) for r in range(2)]
    assert [len(s[0][0]) for s in shares] == [2, 2]
    assert sum(f for _, f in shares) / 2 == pytest.approx(1.0)
    assert shares[0][1] == pytest.approx(4 / 7 * 2)
    # a batch smaller than the world: the rank without rows runs one row with factor 0
    (mine, factor) = local_share((items[:1], targets[:1], None), DistEnv(1, 1, 2))
    assert factor == 0.0 and len(mine[0]) == 1


def test_two_gloo_ranks_match_the_one_process_run(one_process, two_ranks):
    assert len(training_users(data())) % config("one_cut").batch_size == 1  # the empty-share path runs
    for key in JOBS:
        one, two = one_process[key], two_ranks[key]
        np.testing.assert_allclose(two["loss"], one["loss"], rtol=LOSS_RTOL, err_msg=key)
        assert abs(two["best"] - one["best"]) <= NDCG_ATOL, (key, one["best"], two["best"])
        # every epoch's validation, of the weight average where the job keeps one (ConvRec's)
        np.testing.assert_allclose(two["valid"], one["valid"], atol=NDCG_ATOL, err_msg=key)
        if JOBS[key][3] == "full":  # full-ranking validation on rank 0 picks the same epoch
            np.testing.assert_allclose(two["valid_full"], one["valid_full"], atol=NDCG_ATOL, err_msg=key)
            assert two["best_epoch"] == one["best_epoch"] == int(np.argmax(one["valid_full"])) + 1
        # the ranks split the work: every example once, half each (the last one-row batch to rank 0)
        rows = two["rows_per_rank"]
        assert sum(rows) > 0 and abs(rows[0] - rows[1]) <= MAX_EPOCHS * 4, (key, rows)
    # control: another seed is farther away than the tolerance, so the test can tell
    rec = data()
    torch.manual_seed(0)
    other = train(
        build_model("convrec", rec, HP), rec, "convrec", HP, config("one_cut", seed=6), log=lambda m: None
    )
    losses = [h["loss"] for h in other.history]
    assert not np.allclose(losses, one_process["convrec_one_cut"]["loss"], rtol=100 * LOSS_RTOL)


def test_killed_two_rank_run_resumes_and_matches_an_uninterrupted_one(two_ranks, tmp_path):
    out_root = tmp_path / "models"
    with pytest.raises(Exception, match="signal|SIGKILL|exited"):  # rank 0 SIGKILLed after epoch 2
        spawn(tmp_path, ["convrec_one_cut"], out_root, kill_at_epoch=2)
    state = torch.load(out_root / "convrec_one_cut" / "resume.pt", weights_only=True)
    assert state["epoch"] == 2 and state["world_size"] == 2 and len(state["rank_rng"]) == 2
    resumed = spawn(tmp_path, ["convrec_one_cut"], out_root)["convrec_one_cut"]
    assert resumed["resumed_from"] == 2 and resumed["epochs_run"] == MAX_EPOCHS - 2
    assert any("resuming from epoch 2" in m for m in resumed["messages"])
    # every rank's RNG, the optimizer and the scheduler came back: the same losses as never killed
    np.testing.assert_allclose(resumed["loss"], two_ranks["convrec_one_cut"]["loss"], rtol=1e-6)
    # ... and rank 0's weight average too: the same validation at every epoch
    np.testing.assert_allclose(resumed["valid"], two_ranks["convrec_one_cut"]["valid"], atol=1e-6)


# ---------------------------------------------------------------- torchrun through Dagster Pipes


def test_torchrun_command_and_layout_checks(tmp_path):
    from convrec_dagster.pipes_training import check_layout, torchrun_command

    one_node = torchrun_command(tmp_path / "job.json", 8)
    assert (
        one_node[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=8"] and "--standalone" in one_node
    )
    assert one_node[-4:] == ["-m", "convrec_dagster.torchrun_entry", "--job", str(tmp_path / "job.json")]
    nodes = torchrun_command("job.json", 8, nnodes=4, rdzv_endpoint="node0:29400", node_rank=3)
    assert {"--nnodes=4", "--node_rank=3", "--master_addr=node0", "--master_port=29400"} <= set(nodes)
    assert "--standalone" not in nodes
    for endpoint in ("", "node0", "node0:port"):
        with pytest.raises(dg.Failure, match="rdzv_endpoint"):
            check_layout({"nproc_per_node": 2, "nnodes": 2, "rdzv_endpoint": endpoint}, "cpu")
    check_layout({"nproc_per_node": 2, "nnodes": 2, "rdzv_endpoint": "10.0.0.1:29400"}, "cpu")


def test_torchrun_under_pipes_trains_like_the_one_process_asset(make_resources, convrec_home, tmp_path):
    """sasrec_model with nproc_per_node=2: torchrun as a Pipes subprocess, 2 gloo ranks reading the
    Parquet handoff; logs, per-epoch messages and metadata come back; the metric matches."""
    from test_training_asset import TINY, _materialize, write_split_tables

    from convrec_dagster.data import settings

    (tmp_path / "dump").mkdir()
    resources = make_resources(tmp_path / "dump")
    write_split_tables(
        settings.duckdb_path(convrec_home), chain_data(n_users=60, n_items=40, max_len=14, seed=2)
    )
    overrides = {**TINY, "dropout": 0.0, "max_epochs": 3, "num_threads": 1}
    one = (
        _materialize(resources, ["sasrec"], overrides)
        .asset_materializations_for_node("sasrec_model")[0]
        .metadata
    )
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(
        resources, ["sasrec"], {**overrides, "nproc_per_node": 2, "resume": False}, instance
    )
    assert result.success
    two = result.asset_materializations_for_node("sasrec_model")[0].metadata
    assert set(one) <= set(two), set(one) - set(two)  # the same metadata as the one-process path, and more
    assert (
        two["world_size"].value == 2 and two["backend"].value == "gloo" and "2 x cpu" in two["device"].value
    )
    assert two["epochs_run"].value == 3 and two["epochs_streamed"].value == 3
    assert min(two["rows_per_rank"].value) > 0
    assert abs(two["best_valid_NDCG@10"].value - one["best_valid_NDCG@10"].value) <= NDCG_ATOL
    assert "data:image/png;base64," in two["curves"].value
    logs = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "rank 0 of 2 (gloo" in logs and "sasrec epoch 3:" in logs  # streamed from rank 0 over Pipes
    assert (convrec_home / "export" / "sequences.parquet").exists()


def test_window_search_runs_before_torchrun_and_the_ranks_train_its_choice(
    make_resources, convrec_home, tmp_path
):
    """convrec_model with max_len_choices and nproc_per_node=2: the search runs in the asset's process,
    then both ranks train the chosen window, and the metadata shows the search."""
    from test_training_asset import TINY, _materialize, write_split_tables

    from convrec_dagster.data import settings

    (tmp_path / "dump").mkdir()
    resources = make_resources(tmp_path / "dump")
    write_split_tables(
        settings.duckdb_path(convrec_home), chain_data(n_users=60, n_items=40, max_len=14, seed=2)
    )
    search = {
        k: v for k, v in TINY.items() if k not in ("max_len", "ensemble_size")
    }  # the budget's pair: refused
    search |= {"max_len_choices": [2, 8], "max_len_search_epochs": 1, "max_epochs": 1, "num_threads": 1}
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(resources, ["convrec"], {**search, "nproc_per_node": 2, "resume": False}, instance)
    assert result.success
    meta = result.asset_materializations_for_node("convrec_model")[0].metadata
    chosen = meta["hparams"].value["max_len"]
    assert meta["world_size"].value == 2 and chosen in (2, 8)
    assert f"| {chosen} (chosen) |" in meta["window_search"].value
    logs = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "window search, L 2" in logs and "window search, L 8" in logs
    assert "runs in one process only" not in logs
    assert "the sample budget trains an ensemble of 2 seeds here" in logs and "one model is trained" in logs
