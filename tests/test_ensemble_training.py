"""The mechanics of training an ensemble of seeds (``convrec_dagster.data.ensemble_training``): how the threads
are split, and what a member that fails or dies does to the others (the training asset's test covers a
whole ensemble through Dagster)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import signal

import pytest
import torch

from convrec_dagster.data.ensemble_training import member_jobs, member_threads, train_members_in_processes
from models.config import ConvRecConfig
from models.synthetic import chain_data
from models.train import TrainConfig


def test_members_split_the_cpu_threads_and_take_turns_on_a_gpu_or_with_too_few_threads():
    assert member_threads(2, "cpu", 2) == (True, 1)
    assert member_threads(2, "cpu", 5) == (True, 2)
    assert member_threads(3, "cpu", 2) == (False, 2)
    assert member_threads(2, torch.device("cuda"), 8) == (False, 8)
    assert member_threads(2, "cpu", 0) == (
        (True, torch.get_num_threads() // 2) if torch.get_num_threads() >= 2 else (False, 0)
    )


def test_member_seeds_count_up_and_leave_the_popularity_adjustment_to_the_ensemble(tmp_path):
    config = TrainConfig(seed=7, popularity_adjustment="auto")
    jobs = member_jobs(
        "convrec", ConvRecConfig(d=8, hidden=8, max_len=4), config, 3, tmp_path, "cpu", "fp32", 1
    )
    assert [j.train_config.seed for j in jobs] == [7, 8, 9]
    assert {j.train_config.popularity_adjustment for j in jobs} == {0.0}
    assert [j.out_dir.name for j in jobs] == ["member_0", "member_1", "member_2"]
    assert dataclasses.replace(jobs[0].train_config, seed=7, popularity_adjustment="auto") == config


def test_a_failing_member_stops_the_ensemble_with_its_traceback(tmp_path):
    """Member 1 cannot write its folder (a file is in the way): the parent raises with that member's traceback,
    and member 0 is stopped, not waited for, even where SIGTERM is ignored."""
    data = chain_data(n_users=20, n_items=15, max_len=10, seed=0)
    config = TrainConfig(max_epochs=100_000, batch_size=8, patience=100_000)  # member 0 never finishes alone
    model = ConvRecConfig(d=8, hidden=8, max_len=4, features="none")
    jobs = member_jobs("convrec", model, config, 2, tmp_path, "cpu", "fp32", 1)
    jobs[1].out_dir.parent.mkdir(parents=True, exist_ok=True)
    jobs[1].out_dir.write_text("in the way")
    lines: list[str] = []
    # as under nohup or a parent that ignores SIGTERM: the members inherit it, so stopping them needs SIGKILL
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)ensemble member 1 failed:.*FileExistsError"):
            train_members_in_processes(jobs, data, lines.append, lambda index, record: None)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not [p for p in mp.active_children() if p.name.startswith("member-")]
    history = jobs[0].out_dir / "history.json"
    assert not history.exists() or len(json.loads(history.read_text())) < config.max_epochs
