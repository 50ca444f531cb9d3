"""`dagster job execute -j full_pipeline` as a user runs it (a subprocess, the Definitions'
multiprocess executor, a persistent DAGSTER_HOME with the project's dagster.yaml), once; then what
the console showed, what the run left behind, and the recommend CLI and API on its home."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from convrec_dagster.data import settings
from convrec_dagster.resources import DUCKDB_TAGS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_run")
    home, dagster_home = root / "convrec_home", root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "convrec_dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "CONVREC_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("CONVREC_RAW_DIR", None)
    env.pop("CONVREC_LOG_LEVEL", None)
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "job", "execute", "-m", "convrec_dagster.definitions", "-j", "full_pipeline"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    run_id = re.search(r"convrec: full_pipeline SUCCEEDED in .* \(run ([0-9a-f-]+)\)", output).group(1)
    return {"home": home, "dagster_home": dagster_home, "output": done.stderr, "run_id": run_id, "env": env}


def test_console_is_readable_and_ends_with_the_summary_block(cli_run):
    lines = cli_run["output"].rstrip().splitlines()
    summary = lines[
        max(i for i, line in enumerate(lines) if line.startswith("convrec: full_pipeline SUCCEEDED")) - 1 :
    ]
    assert summary[0] == summary[-1] == "=" * len(summary[0])  # the block is the very end of the output
    text = "\n".join(summary)
    for label in ("Popularity", "SASRec", "ConvRec-Attention", "ConvRec"):
        assert re.search(rf"^  {re.escape(label)} +(0\.\d{{4}} +){{3}}0\.\d{{4}}$", text, re.MULTILINE), label
    assert re.search(r"^recommendations: \S+, 10 per user \(best validation NDCG@10", text, re.MULTILINE)
    assert "paired tests" in text and re.search(
        r"ConvRec vs SASRec: (better|worse|no significant difference)", text
    )
    assert re.search(r"^report: .*evaluation_report\.html$", text, re.MULTILINE)
    assert re.search(r"^data: [\d,]+ review lines read, [\d,]+ kept; \d+ quarantined", text, re.MULTILINE)
    assert "RANDOMLY INITIALISED" in text  # the run's warnings
    # INFO by default: no Dagster event lines, and a length a person reads
    assert not any(" - DEBUG - " in line or "STEP_OUTPUT" in line or "LOADED_INPUT" in line for line in lines)
    assert len(lines) < 200, len(lines)
    assert "preflight: training time estimate" in cli_run["output"]


def test_the_run_built_every_asset_with_one_duckdb_step_at_a_time(cli_run):
    from test_pipeline_e2e import _assert_pipeline_outputs, _step_intervals

    from convrec_dagster.definitions import build_defs

    with dg.DagsterInstance.from_config(str(cli_run["dagster_home"])) as instance:
        _assert_pipeline_outputs(cli_run["home"], instance, cli_run["run_id"])
        intervals = _step_intervals(instance, cli_run["run_id"])
    job = build_defs().resolve_job_def("full_pipeline")
    tagged = {node.name for node in job.graph.nodes if DUCKDB_TAGS.items() <= node.definition.tags.items()}
    spans = sorted(span for step, span in intervals.items() if step in tagged)
    assert len(spans) >= 10
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, "two DuckDB steps ran at the same time"


def _history(home: Path, n: int = 4) -> tuple[list[str], str]:
    with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
        items = [
            r[0]
            for r in conn.execute(
                "SELECT i.item_id FROM sequences s JOIN item_index i USING (item_idx) "
                "WHERE s.user_idx = 1 ORDER BY s.position LIMIT ?",
                [n],
            ).fetchall()
        ]
        model = conn.execute("SELECT any_value(model) FROM recommendations").fetchone()[0]
    return items, model


def test_recommend_cli_returns_k_unseen_items(cli_run):
    history, model = _history(cli_run["home"])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "convrec_dagster.recommend",
            "--home",
            str(cli_run["home"]),
            "--items",
            ",".join(history + ["NOT_AN_ITEM"]),
            "--k",
            "5",
            "--json",
        ],
        cwd=REPO_ROOT,
        env=cli_run["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    found = [r["item_id"] for r in answer["recommendations"]]
    assert len(found) == 5 and len(set(found)) == 5 and not set(found) & set(history)
    assert answer["ignored"] == ["NOT_AN_ITEM"] and "NOT_AN_ITEM" in done.stderr
    assert answer["model"] == model  # the model `recommendations` chose, on validation
    scores = [r["score"] for r in answer["recommendations"]]
    assert scores == sorted(scores, reverse=True)


def test_recommender_api_on_every_model(cli_run):
    from convrec_dagster.recommend import Recommender, RecommenderError

    history, _ = _history(cli_run["home"], n=3)
    for name in ("popularity", "sasrec", "convrec_attention", "convrec"):
        rec = Recommender.load(cli_run["home"], model=name)
        top = rec.recommend(history, k=7)
        assert len(top) == 7 and not {item for item, _ in top} & set(history), name
    with pytest.raises(RecommenderError, match="What to do"):
        rec.recommend(["NOT_AN_ITEM"], k=3)
