"""Every benchmark script answers ``--help`` with its options, and no option's help reads
``(default: None)`` or ``(default: )`` (``benchmarks.common.HelpFormatter``)."""

import subprocess
import sys

import pytest

from benchmarks.common import REPO_ROOT

SCRIPTS = sorted(
    p.stem
    for p in (REPO_ROOT / "benchmarks").glob("*.py")
    if p.stem not in {"__init__", "common"} and "argparse" in p.read_text()
)


def test_every_benchmark_script_is_listed():
    assert {"accuracy", "convergence", "efficiency", "gpu_check", "pipeline"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_help_names_no_empty_default(script: str):
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
    text = " ".join(done.stdout.split())  # help lines wrap
    assert "(default: None)" not in text and "(default: )" not in text


def test_machine_info_names_the_cpu_generation_and_keeps_extras():
    """Every benchmark JSON records the same machine fields, from ``common.machine_info``: the ISA torch's kernels
    dispatch to tells two runs of the same code apart when their last digits differ."""
    import torch

    from benchmarks.common import machine_info

    info = machine_info("cpu", duckdb_threads=3)
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and info["cpu_capability"]
    assert info["duckdb_threads"] == 3 and info["device"] == "cpu" and info["cpu_count"] >= 1
    if info["cpu_family_model_stepping"] is not None:  # /proc/cpuinfo on Linux
        assert info["cpu_family_model_stepping"].count("/") == 2


def test_machine_info_records_the_variables_that_choose_kernel_paths(monkeypatch):
    """MKL limited to AVX2 moves the embedded sample's SASRec by .005 (stop 50), so a JSON says when it ran so."""
    from benchmarks.common import KERNEL_ENV, machine_info

    for name in KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    assert machine_info()["kernel_env"] == {}
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert machine_info()["kernel_env"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_help_formatter_keeps_real_defaults():
    import argparse

    from benchmarks.common import HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="epoch cap")
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--home", default="", help="home (default: a temporary folder)")
    text = " ".join(parser.format_help().split())
    assert "epoch cap (default: 40)" in text
    assert "learning rate" in text and "learning rate (default" not in text
    assert text.count("(default:") == 2  # 40 and the home's own words


def test_rss_trace_follows_a_child_process_and_passes_its_exit_code_through():
    """``common.run_with_rss_trace`` (ingest_scale and negatives_memory): a child that holds ~80 MB."""
    from benchmarks.common import run_with_rss_trace

    child = "import time; block = bytearray(80 * 2**20); time.sleep(1.5); raise SystemExit(3)"
    code, trace, wall = run_with_rss_trace([sys.executable, "-c", child], interval=0.1)
    assert code == 3 and wall >= 1.5
    assert len(trace) >= 5 and max(mb for _, mb in trace) > 80
    assert [t for t, _ in trace] == sorted(t for t, _ in trace)


def test_curves_add_a_full_ranking_panel_only_for_runs_that_logged_it(tmp_path, monkeypatch):
    """``benchmarks.curves``: one panel of sampled validation curves; a second beside it once a run
    logged full-ranking validation (``--valid-protocol full``)."""
    import json

    import matplotlib.image

    from benchmarks import curves

    (tmp_path / "convergence").mkdir()
    monkeypatch.setattr(curves, "RESULTS_DIR", tmp_path)
    epochs = [{"epoch": e, "loss": 1.0 / e, "valid_NDCG@10": 0.1 * e, "epoch_time_s": 60.0} for e in (1, 2)]
    (tmp_path / "convergence" / "beauty_a.json").write_text(json.dumps({"history": epochs}))
    one = matplotlib.image.imread(curves.plot("beauty", tmp_path / "one.png"))
    full = [{**h, "valid_full_NDCG@10": 0.01 * h["epoch"]} for h in epochs]
    (tmp_path / "convergence" / "beauty_b.json").write_text(json.dumps({"history": full}))
    two = matplotlib.image.imread(curves.plot("beauty", tmp_path / "two.png"))
    assert [label for label, _ in curves.runs("beauty")] == [
        "beauty_a (convergence)",
        "beauty_b (convergence)",
    ]
    assert one.shape[1] == 900 and two.shape[1] == 1500  # 9 and 15 inches at 100 dpi


def test_history_and_test_reads_one_model_from_either_kind_of_result(tmp_path):
    """``benchmarks.curves.history_and_test``: a convergence run's history and test figures, and the named
    model's from a pipeline run, not another model's."""
    import json

    from benchmarks.curves import history_and_test

    epochs = [{"epoch": 1, "valid_full_NDCG@10": 0.07}]
    full = {"NDCG@10": 0.06, "HR@10": 0.1}
    (tmp_path / "convergence.json").write_text(json.dumps({"history": epochs, "test": {"full": full}}))
    accuracy = {
        "training": {"sasrec_model": {"history": []}, "convrec_model": {"history": epochs}},
        "ours_test_all_users": {"sasrec": {"full": {"NDCG@10": 0.05}}, "convrec": {"full": full}},
    }
    (tmp_path / "accuracy.json").write_text(json.dumps(accuracy))
    assert history_and_test(tmp_path / "convergence.json") == (epochs, full)
    assert history_and_test(tmp_path / "accuracy.json") == (epochs, full)
    assert history_and_test(tmp_path / "accuracy.json", "sasrec") == ([], {"NDCG@10": 0.05})


def test_plot_full_validation_draws_each_run_against_minutes_or_epochs(tmp_path, monkeypatch):
    """``benchmarks.curves.plot_full_validation``: one line per run, its full-ranking validation against minutes
    (from ``elapsed_s``) or epochs, its test figure in the label."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import curves

    monkeypatch.setattr(curves, "RESULTS_DIR", tmp_path)
    epochs = [
        {"elapsed_s": 120.0, "valid_full_NDCG@10": 0.07},
        {"elapsed_s": 300.0, "valid_full_NDCG@10": 0.075},
    ]
    (tmp_path / "run.json").write_text(json.dumps({"history": epochs, "test": {"full": {"NDCG@10": 0.0612}}}))
    fig, ax = plt.subplots()
    curves.plot_full_validation(ax, [("a run", "run.json", "C1", "-")], marker=".")
    curves.plot_full_validation(ax, [("by epoch", "run.json", "C2", "--")], x="epoch")
    minutes, by_epoch = ax.get_lines()
    plt.close(fig)
    assert list(minutes.get_xdata()) == [2.0, 5.0] and list(minutes.get_ydata()) == [0.07, 0.075]
    assert minutes.get_label() == "a run: test 0.0612" and minutes.get_marker() == "."
    assert list(by_epoch.get_xdata()) == [1, 2] and by_epoch.get_linestyle() == "--"


def test_curves_plot_only_the_runs_named_including_subfolders_and_accuracy_runs(tmp_path, monkeypatch):
    """``benchmarks.curves --runs``: globs under the results folder pick the runs, a stop's subfolder
    and a pipeline run's training histories included; the default keeps to the top level."""
    import json

    from benchmarks import curves

    (tmp_path / "convergence" / "s32").mkdir(parents=True)
    monkeypatch.setattr(curves, "RESULTS_DIR", tmp_path)
    epochs = [{"epoch": 1, "loss": 1.0, "valid_NDCG@10": 0.1, "epoch_time_s": 60.0}]
    (tmp_path / "convergence" / "beauty_top.json").write_text(json.dumps({"history": epochs}))
    (tmp_path / "convergence" / "s32" / "beauty_new.json").write_text(json.dumps({"history": epochs}))
    (tmp_path / "convergence" / "s32" / "video_new.json").write_text(json.dumps({"history": epochs}))
    accuracy = {
        "benchmark": "accuracy",
        "training": {"convrec_model": {"history": epochs}, "popularity_model": {}},
    }
    (tmp_path / "accuracy_beauty_cpu.json").write_text(json.dumps(accuracy))

    assert [label for label, _ in curves.runs("beauty")] == [
        "beauty_top (convergence)",
        "accuracy_beauty_cpu: convrec_model",
    ]
    named = curves.runs("beauty", ["convergence/s32/beauty_*.json", "accuracy_beauty_cpu.json"])
    assert [label for label, _ in named] == ["beauty_new (convergence)", "accuracy_beauty_cpu: convrec_model"]
    assert curves.plot("beauty", tmp_path / "s32.png", ["convergence/s32/beauty_*.json"]).exists()
    # an ensemble of seeds: one line per member
    accuracy["training"]["convrec_model"]["member_histories"] = [epochs, epochs]
    (tmp_path / "accuracy_beauty_cpu.json").write_text(json.dumps(accuracy))
    assert [label for label, _ in curves.runs("beauty", ["accuracy_beauty_cpu.json"])] == [
        "accuracy_beauty_cpu: convrec_model member 0",
        "accuracy_beauty_cpu: convrec_model member 1",
    ]


def test_valid_test_gap_buckets_cover_every_evaluated_user_once():
    import numpy as np

    from benchmarks.valid_test_gap import COUNT_EDGES, bucket_labels, bucketize, user_groups
    from models.synthetic import chain_data

    assert bucket_labels((0, 1, 5)) == ["0", "1-4", "5+"]
    assert bucketize(np.array([0, 1, 4, 5, 99]), (0, 1, 5)).tolist() == [0, 1, 1, 2, 2]
    data = chain_data(n_users=40, n_items=15, min_len=4, max_len=10, seed=3)
    users = data.eval_users()
    groups = user_groups(data)
    for split in ("valid", "test"):
        for index, labels in groups[split].values():
            assert len(index) == len(users) and 0 <= index.min() and index.max() < len(labels)
    # the validation target's training count, bucketed, for the first evaluated user
    target = data.items[data.user_ptr[users[0] + 1] - 2]
    count = data.train_item_counts()[target]
    label = groups["valid"]["target_train_count"][1][groups["valid"]["target_train_count"][0][0]]
    assert label == bucket_labels(COUNT_EDGES)[bucketize(np.array([count]), COUNT_EDGES)[0]]
    # with a successor map (chain_data: item i is followed by i + 1 mod n), the target's relation to the last item
    successors = np.concatenate([[0], np.arange(2, data.n_items + 1), [1]])
    follows = user_groups(data, successors)["test"]["next_item"][0] == 0
    for user, flag in zip(users, follows):
        end = data.user_ptr[user + 1]
        assert bool(flag) == (data.items[end - 1] == data.items[end - 2] % data.n_items + 1)
    assert 0 < follows.mean() < 1
    # with a catalogue: the generator's rule per row, and the successor rows split by the item before the last
    catalog = {
        "successor": successors,
        "subcategory": np.arange(data.n_items + 1) % 2,
        "brand": np.zeros(data.n_items + 1),
    }
    with_catalog = user_groups(data, successors, catalog)["test"]
    kinds, split = with_catalog["row_kind"][0], with_catalog["successor_rows_by_item_before_last"][0]
    assert len(kinds) == len(users) and np.array_equal(split == 2, kinds != 0) and (kinds == 0).any()
    ends = data.user_ptr[users + 1]
    mixed = (data.items[ends - 3] % 2) != (data.items[ends - 2] % 2)
    assert np.array_equal(split[kinds == 0], mixed[kinds == 0].astype(int))
    # a target the user already had: counted as a repeat
    repeats = groups["test"]["repeat_of_last"][0]
    for user, flag in zip(users, repeats):
        end = data.user_ptr[user + 1]
        assert bool(flag) == (data.items[end - 1] in set(data.items[data.user_ptr[user] : end - 1].tolist()))


def test_transition_counts_count_consecutive_training_rows_of_one_user():
    import numpy as np

    from benchmarks.sample_ablation import transition_counts
    from models.synthetic import chain_data

    data = chain_data(n_users=40, n_items=15, min_len=4, max_len=10, seed=3)
    pairs: dict[tuple[int, int], int] = {}
    for user in range(1, data.n_users + 1):
        rows = data.items[data.user_ptr[user] : data.user_ptr[user] + data.n_train(user)].tolist()
        for a, b in zip(rows, rows[1:]):
            pairs[a, b] = pairs.get((a, b), 0) + 1
    first, second = np.meshgrid(np.arange(1, data.n_items + 1), np.arange(1, data.n_items + 1))
    counted = transition_counts(data, first.ravel(), second.ravel())
    expected = [pairs.get((a, b), 0) for a, b in zip(first.ravel().tolist(), second.ravel().tolist())]
    assert counted.tolist() == expected and counted.sum() > 0
    # a validation or test target never counts, nor does a pair across two users
    assert counted.sum() == sum(max(data.n_train(u) - 1, 0) for u in range(1, data.n_users + 1))


def test_large_catalogue_compares_the_budget_with_and_without_its_rule_only_where_it_applies():
    import numpy as np

    from benchmarks.large_catalogue import budget_settings_for, changes_nothing
    from convrec_dagster.data.preflight import DataSize

    def size(users: int, items: int) -> DataSize:
        return DataSize(users, items, 6 * users, False, True, "test", np.full(users, 6))

    fashion, video = size(45_184, 166_270), size(31_013, 23_715)
    without, with_rule = (budget_settings_for("convrec", fashion, rule) for rule in (False, True))
    assert (without["loss"], with_rule["loss"], with_rule["n_negatives"]) == (
        "full_softmax",
        "shared_softmax",
        4096,
    )
    assert (without["max_validation_scores"], with_rule["max_validation_scores"]) == (0, 10**9)
    assert not changes_nothing(without, with_rule, fashion)
    video_settings = [budget_settings_for("convrec", video, rule) for rule in (False, True)]
    assert changes_nothing(*video_settings, video)


def test_convergence_refuses_strides_without_kernels(capsys):
    """``--strides`` alone would be dropped (the kernels, and so the strides, come from ``--max-len``)."""
    from benchmarks import convergence

    with pytest.raises(SystemExit) as stop:
        convergence.main(["--dataset", "sample", "--model", "convrec", "--strides", "1,1"])
    assert stop.value.code == 2
    assert "--strides needs --kernels" in capsys.readouterr().err


def test_sample_dumps_summary_pairs_models_per_dump_and_runs_with_their_reference():
    """``benchmarks.sample_dumps``: ConvRec - SASRec only over dumps where both ran (a run in progress
    has dumps with one model), and a change paired with its reference row by (dump, model, seed)."""
    from benchmarks.sample_dumps import summarize

    def row(dump, model, seed, valid, test, full):
        return {
            "dump_seed": dump,
            "model": model,
            "seed": seed,
            "valid": valid,
            "test": test,
            "test_full": full,
        }

    rows = [
        row(1, "convrec", 0, 0.70, 0.66, 0.58), row(1, "sasrec", 0, 0.68, 0.67, 0.60),
        row(2, "convrec", 0, 0.72, 0.70, 0.64), row(2, "sasrec", 0, 0.70, 0.68, 0.62),
        row(3, "convrec", 0, 0.10, 0.10, 0.10),  # SASRec not trained yet on dump 3
    ]  # fmt: skip
    gap = summarize(rows, None)["convrec_minus_sasrec"]
    assert {k: gap["test_full"][k] for k in ("mean", "dumps_ahead", "dumps")} == {
        "mean": 0.0,
        "dumps_ahead": 1,
        "dumps": 2,
    }
    assert gap["test_full"]["p_value_over_dumps"] == 1.0  # -.02 and +.02: no lead either way
    assert gap["test_full"]["ci95_over_dumps"][0] < 0.0 < gap["test_full"]["ci95_over_dumps"][1]
    assert {k: gap["valid"][k] for k in ("mean", "dumps_ahead", "dumps")} == {
        "mean": 0.02,
        "dumps_ahead": 2,
        "dumps": 2,
    }
    # ConvRec ahead on each of 7 dumps: only 2 of the 128 sign flips are as extreme, p about .016
    steady = [
        row(d, m, 0, 0.5, 0.5, 0.5 + (0.01 + 0.001 * d if m == "convrec" else 0.0))
        for d in range(7)
        for m in ("convrec", "sasrec")
    ]
    lead = summarize(steady, None)["convrec_minus_sasrec"]["test_full"]
    assert lead["dumps_ahead"] == 7 and 0.005 < lead["p_value_over_dumps"] < 0.03
    assert 0.01 <= lead["ci95_over_dumps"][0] < lead["mean"] < lead["ci95_over_dumps"][1] <= 0.016
    reference = [
        {**r, "valid": r["valid"] - 0.01, "test": r["test"] + 0.01} for r in rows if r["model"] == "convrec"
    ]
    change = summarize(rows, reference)["against_reference"]
    assert set(change) == {"convrec"}  # SASRec has no reference rows
    assert change["convrec"]["valid"] == 0.01 and change["convrec"]["test"] == -0.01
    assert (
        change["convrec"]["valid_and_test_up"] == "3 of 6" and change["convrec"]["test_full_up"] == "0 of 3"
    )
    # the change with the dump as the unit: valid up by .01 on each of 3 dumps, so its interval is that point
    over_dumps = change["convrec"]["over_dumps"]
    assert over_dumps["valid"]["dumps_up"] == 3 and over_dumps["valid"]["ci95"] == [0.01, 0.01]
    assert over_dumps["test_full"] == {"dumps_up": 0, "dumps": 3, "ci95": [0.0, 0.0], "p_value": 1.0}


def test_sample_row_kinds_follow_the_generator_rules_in_order():
    """``valid_test_gap.row_kinds``: two sub-categories with chains 1-2-3-4 and 5-6-7-8, brands 0 / 1."""
    from types import SimpleNamespace

    import numpy as np

    from benchmarks.valid_test_gap import ROW_KINDS, row_kinds

    catalog = {
        "successor": np.array([0, 2, 3, 4, 1, 6, 7, 8, 5]),
        "subcategory": np.array([-1, 0, 0, 0, 0, 1, 1, 1, 1]),
        "brand": np.array([-1, 0, 0, 1, 1, 0, 0, 1, 1]),
    }
    users = [  # (history, target, expected kind)
        ([1, 2], 3, 0),  # the last item's successor
        ([3, 2], 4, 0),  # its successor 3 is in the history: the next unseen one along the chain
        ([1, 5], 2, 1),  # the successor of the last item of the earlier sub-category
        ([3, 5], 8, 2),  # neither; brand 1 is in the history (item 3)
        ([1, 5], 7, 3),  # neither; brand 1 is not
    ]
    items = np.array([i for history, target, _ in users for i in [*history, target]])
    lengths = np.array([len(history) + 1 for history, _, _ in users])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    kinds = row_kinds(SimpleNamespace(items=items), starts, starts + lengths - 1, catalog)
    assert kinds.tolist() == [kind for _, _, kind in users]
    assert len(ROW_KINDS) == 4


def test_sample_dumps_trains_through_the_assets_run_training(tmp_path):
    """``sample_dumps.train_one`` trains as the asset does (``run_training``): ConvRec's window comes
    from the window search (the budget's L would be 20), and a second run repeats the first to the digit."""
    import duckdb
    from test_training_asset import write_split_tables

    from benchmarks.sample_dumps import train_one
    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset_info import DatasetInfo, write_dataset_info
    from models.synthetic import chain_data

    db = settings.duckdb_path(tmp_path)
    write_split_tables(db, chain_data(n_users=60, n_items=40, max_len=14, seed=2))
    with duckdb.connect(str(db)) as conn:
        write_dataset_info(conn, DatasetInfo(name="tiny", has_time=True, embedded_sample=True))
    overrides = {"max_epochs": 2, "max_len_choices": [2, 5]}
    first = train_one(tmp_path, "convrec", 0, overrides)
    assert first["max_len"] in (2, 5) and first["epochs"] == 2
    assert 0.0 < first["valid"] <= 1.0 and 0.0 < first["test_full"] <= 1.0
    assert train_one(tmp_path, "convrec", 0, overrides) == first
    assert "tau" not in first  # the sample budget's adjustment is off


def test_sample_dumps_rows_record_the_fitted_popularity_adjustment(tmp_path):
    """With ``popularity_adjustment: auto`` each row names the tau validation picked, per protocol."""
    import duckdb
    from test_training_asset import write_split_tables

    from benchmarks.sample_dumps import train_one
    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset_info import DatasetInfo, write_dataset_info
    from models.calibration import TAU_GRID
    from models.synthetic import chain_data

    db = settings.duckdb_path(tmp_path)
    write_split_tables(db, chain_data(n_users=60, n_items=40, max_len=14, seed=2))
    with duckdb.connect(str(db)) as conn:
        write_dataset_info(conn, DatasetInfo(name="tiny", has_time=True, embedded_sample=True))
    row = train_one(tmp_path, "sasrec", 0, {"max_epochs": 1, "popularity_adjustment": "auto"})
    assert list(row["tau"]) == ["sampled_100"] and row["tau"]["sampled_100"] in TAU_GRID


def test_sample_dumps_combine_summarises_runs_of_the_same_settings(tmp_path, monkeypatch):
    """``--combine``: the rows of runs split between processes summarised as one run; runs of other
    settings, or with a row in common, are refused."""
    import json

    import pytest

    import benchmarks.sample_dumps as sample_dumps

    monkeypatch.setattr(sample_dumps, "OUT_DIR", tmp_path)

    def run(tag, dumps, overrides=None):
        rows = [
            {
                "dump_seed": d,
                "model": m,
                "seed": 0,
                "valid": 0.5,
                "test": 0.5,
                "test_full": 0.5 + (m == "convrec") * 0.01,
            }
            for d in dumps
            for m in ("convrec", "sasrec")
        ]
        payload = {
            "command": f"run {tag}",
            "machine": {},
            "overrides": overrides or {},
            "rows": rows,
            "wall_s": 10.0,
        }
        (tmp_path / f"{tag}.json").write_text(json.dumps(payload))

    run("a", [1, 2])
    run("b", [3])
    sample_dumps.main(["--combine", "a,b", "--tag", "ab"])
    combined = json.loads((tmp_path / "ab.json").read_text())
    assert combined["dumps"] == [1, 2, 3] and len(combined["rows"]) == 6 and combined["wall_s"] == 20.0
    gap = combined["summary"]["convrec_minus_sasrec"]["test_full"]
    assert gap["dumps"] == 3 and gap["dumps_ahead"] == 3 and gap["mean"] == 0.01
    run("c", [4], {"crop_prob": 0.3})
    with pytest.raises(ValueError, match="different --set overrides"):
        sample_dumps.main(["--combine", "a,c", "--tag", "ac"])
    with pytest.raises(ValueError, match="share a"):
        sample_dumps.main(["--combine", "a,a", "--tag", "aa"])


def test_sample_catalog_reads_the_dump_of_its_generator_seed():
    """``valid_test_gap.sample_catalog(data, seed)``: the item names of dump 3 resolve against dump 3's
    catalogue (every item's sub-category and chain successor known), not against the embedded sample's."""
    from types import SimpleNamespace

    import numpy as np

    from benchmarks.valid_test_gap import sample_catalog
    from convrec_dagster.data.sample_dump import SampleDumpConfig, build_catalog

    items = build_catalog(SampleDumpConfig(seed=3)).items
    data = SimpleNamespace(item_names=np.array(["<pad>"] + [item.asin for item in items]))
    mine = sample_catalog(data, 3)
    assert (mine["subcategory"][1:] >= 0).all() and (mine["successor"][1:] > 0).all()
    assert mine["subcategory"][0] == -1
    assert (sample_catalog(data)["subcategory"][1:] == -1).mean() > 0.9  # the embedded sample's catalogue


def test_ensemble_ranks_each_member_as_evaluation_does_and_the_pair_by_its_mean_score(one_torch_thread):
    """``benchmarks.ensemble``: scored once per member in lockstep, a member alone ranks exactly as
    ``rank_eval_users`` ranks it, and a pair as a model whose scores are the mean of the two."""
    import contextlib

    import numpy as np
    import torch

    from benchmarks.ensemble import ranks_per_subset
    from models.base import SequentialRecommender
    from models.evaluate import rank_eval_users
    from models.registry import build_model
    from models.synthetic import chain_data

    data = chain_data(n_users=60, n_items=40, min_len=4, max_len=12, seed=3, with_time=False)
    hparams = {"d": 16, "max_len": 5, "dropout": 0.0, "loss": "full_softmax", "residual_pool": "last"}
    members = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        members[f"s{seed}"] = build_model("convrec", data, hparams).eval()

    class Mean(SequentialRecommender):
        def __init__(self, parts):
            super().__init__(parts[0].n_items, parts[0].max_len)
            self.parts = torch.nn.ModuleList(parts)

        def predict(self, batch):
            return torch.stack([p.predict(batch) for p in self.parts]).mean(0)

        def full_sort_predict(self, batch):
            return torch.stack([p.full_sort_predict(batch) for p in self.parts]).mean(0)

        @contextlib.contextmanager
        def item_table_for_eval(self):
            with members["s0"].item_table_for_eval(), members["s1"].item_table_for_eval():
                yield

    subsets = [("s0",), ("s1",), ("s0", "s1")]
    for protocol in ("full", "sampled_100"):
        got = ranks_per_subset(members, data, "test", protocol, subsets)
        want = {
            ("s0",): rank_eval_users(members["s0"], data, "test", protocol, "cpu")[1:],
            ("s1",): rank_eval_users(members["s1"], data, "test", protocol, "cpu")[1:],
            ("s0", "s1"): rank_eval_users(Mean(list(members.values())), data, "test", protocol, "cpu")[1:],
        }
        for subset in subsets:
            assert all(np.array_equal(g, w) for g, w in zip(got[subset], want[subset])), (protocol, subset)
        assert not np.array_equal(got[("s0",)][0], got[("s1",)][0])  # two different members
        assert not np.array_equal(got[("s0", "s1")][0], got[("s0",)][0])


def test_accuracy_reads_an_ensemble_s_member_histories_and_its_wall_clock_minutes(tmp_path):
    """``benchmarks.accuracy``: a model folder's history and minutes; for an ensemble of seeds each member's
    history, its training minutes the longest member's where they trained side by side, their sum else."""
    import json

    import torch

    from benchmarks.accuracy import training_histories

    epoch = lambda n, seconds: {"epoch": n, "epoch_time_s": seconds}  # noqa: E731
    histories = [[epoch(1, 60.0), epoch(2, 60.0)], [epoch(1, 240.0)]]
    assert training_histories(tmp_path) == {}
    (tmp_path / "history.json").write_text(json.dumps(histories[0]))
    assert training_histories(tmp_path) == {"history": histories[0], "train_minutes": 2.0}
    for i, history in enumerate(histories):
        (tmp_path / f"member_{i}").mkdir()
        (tmp_path / f"member_{i}" / "history.json").write_text(json.dumps(history))
    for side_by_side, minutes in ((True, 4.0), (False, 6.0)):
        extra = {"ensemble_size": 2, "side_by_side": side_by_side}
        torch.save(
            {"model": "convrec", "hparams": {}, "state_dict": {}, "extra": extra}, tmp_path / "best.pt"
        )
        out = training_histories(tmp_path)
        assert out["member_histories"] == histories and out["train_core_minutes"] == 6.0
        assert out["train_minutes"] == minutes


def test_accuracy_curves_add_a_full_ranking_panel_only_where_a_model_validated_in_full(tmp_path):
    from benchmarks.accuracy import plot_curves

    epochs = [{"epoch": e, "epoch_time_s": 60.0, "valid_NDCG@10": 0.3 + 0.01 * e} for e in (1, 2, 3)]
    res = {
        "dataset": "beauty",
        "budget": "cpu",
        "machine": {"device": "cpu"},
        "published_quoted_not_measured": {
            "rows": [
                {"model": "SASRec", "protocol": "sampled_100", "NDCG@10": 0.338},
                {"model": "BSARec", "protocol": "full", "NDCG@10": 0.0611},
            ]
        },
        "training": {"sasrec_model": {"history": epochs}, "popularity_model": {}},
    }
    assert plot_curves(res, tmp_path / "sampled.png") == ["sampled_100"]
    full = [{**h, "valid_full_NDCG@10": 0.05 + 0.001 * h["epoch"]} for h in epochs]
    res["training"]["convrec_model"] = {"history": full, "member_histories": [full, full]}
    assert plot_curves(res, tmp_path / "both.png") == ["sampled_100", "full"]
    assert (tmp_path / "both.png").stat().st_size > (tmp_path / "sampled.png").stat().st_size
