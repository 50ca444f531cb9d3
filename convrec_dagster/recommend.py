"""Recommendations for any history: a Python API and a command line (no Dagster).

After a run, score a new user's sequence of raw item ids (ASINs) with the model the pipeline chose:

    from convrec_dagster.recommend import Recommender
    rec = Recommender.load(".convrec")                  # the chosen model, on CPU
    rec.recommend(["B00X", "B00Y"], k=10)               # [("B00Z", 7.31), ...], best first

    python -m convrec_dagster.recommend --home .convrec --items B00X,B00Y --k 10 [--model sasrec] [--json]

The model is the one `recommendations` uses: the best by *validation* NDCG@10 in
`evaluation_metrics` (never chosen on test), or the validation score kept in each checkpoint when
the metrics table has no validation rows. Its checkpoint is loaded with ``weights_only=True``.
Unknown ids are left out with a warning; the given history is never recommended back.

Time context. ConvRec and its attention counterpart read the time of every history item and of the
candidates (ProxyRCA's scheme) when the dump has timestamps. A new history comes without times, so
every history item and the candidates take the time of the most recent interaction in the data
("now" as far as the model knows): time intervals inside the history are 0. This is a documented
approximation; histories whose items are far apart in time are scored as if they were recent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convrec_dagster.data import settings
from convrec_dagster.data.dataset import data_for_checkpoint

log = logging.getLogger(__name__)


# --- which model ----------------------------------------------------------------------------------


def choose_model(
    rows: list[dict],
    trained: Iterable[str],
    checkpoint_valid: dict[str, float] | None = None,
    protocol: str = "sampled_100",
) -> tuple[str | None, str]:
    """(model, why): the trained model with the best *validation* NDCG@10 under ``protocol`` in the
    metric rows (the long format of `evaluation_metrics`), never chosen on test; without validation
    rows, the best validation NDCG@10 kept in the checkpoints (``checkpoint_valid``)."""
    from convrec_dagster.data.report import best_model, lookup

    trained = set(trained)
    rows = [r for r in rows if r["model"] in trained]
    name = best_model(rows, protocol=protocol, split="valid")
    if name is not None:
        value = lookup(rows, "valid", "all")[(name, protocol, "NDCG@10")]["value"]
        return (
            name,
            f"best validation NDCG@10 under {protocol} ({value:.4f}) in evaluation_metrics; never chosen on test",
        )
    valid = {m: v for m, v in (checkpoint_valid or {}).items() if m in trained and v is not None}
    if valid:
        name = max(valid, key=valid.get)
        return name, f"best validation NDCG@10 (sampled_100, {valid[name]:.4f}) kept in its checkpoint"
    return None, "no trained model has a validation score"


# --- the recommender ------------------------------------------------------------------------------


@dataclass
class Recommendation:
    item_id: str
    score: float
    rank: int


@dataclass
class Recommender:
    """A trained model and its dataset, ready to score histories of raw item ids."""

    model: object
    data: object
    model_name: str
    why: str
    checkpoint: Path
    device: str = "cpu"
    item_index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        home: str | Path | None = None,
        model: str | None = None,
        device: str = "cpu",
        protocol: str = "sampled_100",
    ) -> Recommender:
        """The chosen model of the pipeline in ``home`` (default ``CONVREC_HOME``), or ``model`` by name.

        Reads the DuckDB file read-only, so it works while nothing writes it; when a run holds the
        file, the Parquet export (``CONVREC_HOME/export``) is used instead."""
        import torch

        from convrec_dagster.data.dataset import load_rec_data
        from models.registry import MODEL_NAMES, model_from_checkpoint

        home = Path(home).expanduser().resolve() if home else settings.convrec_home()
        models_dir = settings.artifacts_dir(home) / "models"
        trained = {
            m: models_dir / m / "best.pt" for m in MODEL_NAMES if (models_dir / m / "best.pt").is_file()
        }
        if not trained:
            raise RecommenderError(
                f"no trained model under {models_dir}",
                "run the pipeline first (`make run`, or `dagster job execute -j full_pipeline`) "
                "with CONVREC_HOME pointing at this home, or pass the right --home",
            )
        if model and model not in trained:
            raise RecommenderError(
                f"model {model!r} has no best.pt under {models_dir} (trained: {sorted(trained)})",
                f"pick one of {sorted(trained)}, or train {model!r} first",
            )
        with _open_tables(home) as conn:
            rows = _metric_rows(conn)
            checkpoints = {
                m: torch.load(p, map_location="cpu", weights_only=True, mmap=True)  # reads only what is used
                for m, p in trained.items()
            }
            if model:
                name, why = model, "named by the caller"
            else:
                valid = {
                    m: ((c.get("extra") or {}).get("valid") or {}).get("NDCG@10")
                    for m, c in checkpoints.items()
                }
                name, why = choose_model(rows, trained, valid, protocol)
                if name is None:
                    raise RecommenderError(
                        f"cannot choose a model: {why}",
                        "materialize `evaluation_metrics`, or name a model with --model",
                    )
            cache: dict[str, object] = {}

            def load(features: str):
                if features not in cache:
                    cache[features] = load_rec_data(conn, features=features)
                return cache[features]

            checkpoint = checkpoints[name]
            data = data_for_checkpoint(load, checkpoint)
        if data is None:
            raise RecommenderError(
                f"model {name!r} ({trained[name]}) was trained on other data than the data prepared in {home}",
                "retrain it (`dagster job execute -j retrain`), or use the home it was trained in",
            )
        net = model_from_checkpoint(checkpoint, data)  # with its popularity adjustment, if any
        net.to(device).eval()
        index = (
            {str(item): i for i, item in enumerate(data.item_names) if i > 0}
            if data.item_names is not None
            else {}
        )
        return cls(net, data, name, why, trained[name], device, index)

    def recommend(self, item_ids: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        """The top ``k`` items (raw ids, scores; best first) after the history ``item_ids`` (oldest
        first), never an item of the history. Unknown ids are left out with a warning."""
        return [(r.item_id, r.score) for r in self.recommend_detailed(item_ids, k)[0]]

    def recommend_detailed(
        self, item_ids: Sequence[str], k: int = 10
    ) -> tuple[list[Recommendation], list[str]]:
        """(recommendations, the ids that were not in the catalogue and so were ignored)."""
        import torch

        from models.batching import make_batch
        from models.data import RecData

        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        known = [self.item_index[str(i)] for i in item_ids if str(i) in self.item_index]
        unknown = [str(i) for i in item_ids if str(i) not in self.item_index]
        if unknown:
            log.warning(
                "ignoring %d item id(s) not in the catalogue: %s", len(unknown), ", ".join(unknown[:20])
            )
        if not known:
            raise RecommenderError(
                f"none of the {len(item_ids)} item id(s) is in the catalogue of {self.data.n_items:,} items",
                "give raw item ids (ASINs) that occur in the prepared data (`SELECT item_id FROM item_index`)",
            )
        data = self.data
        history = np.asarray(known, dtype=np.int64)
        n = len(history)
        # a one-user dataset holding the history; every row takes the latest time of the data
        one = RecData(
            n_users=1,
            n_items=data.n_items,
            user_ptr=np.array([0, 0, n]),
            items=history,
            is_eval_user=np.zeros(2, bool),
            eval_negatives=np.zeros((2, 0), np.int64),
            proxy_ids=data.proxy_ids,
            n_proxy=data.n_proxy,
        )
        if data.context is not None:
            latest = _latest_row(data)
            one.context = np.repeat(data.context[latest : latest + 1], n, axis=0)
            one.ymd = np.repeat(data.ymd[latest : latest + 1], n, axis=0) if data.ymd is not None else None
        elif data.ymd is not None:
            one.ymd = np.repeat(data.ymd[_latest_row(data) : _latest_row(data) + 1], n, axis=0)
        batch = make_batch(
            one,
            np.array([1]),
            np.array([n]),
            self.model.max_len,
            np.ones((1, 1), np.int64),
            time_rows=np.array([n - 1]),
        ).to(self.device)
        with torch.no_grad():
            scores = self.model.full_sort_predict(batch).float()[0].cpu().numpy().astype(np.float64)
        scores[0] = -np.inf
        scores[history] = -np.inf
        available = int(np.isfinite(scores).sum())
        top = np.argsort(-scores, kind="stable")[: min(k, available)]
        names = data.item_names
        return (
            [
                Recommendation(str(names[i]) if names is not None else str(i), float(scores[i]), r + 1)
                for r, i in enumerate(top)
            ],
            unknown,
        )


class RecommenderError(Exception):
    """A problem with what to do about it."""

    def __init__(self, problem: str, what_to_do: str):
        super().__init__(f"{problem}. What to do: {what_to_do}.")
        self.problem, self.what_to_do = problem, what_to_do


def _latest_row(data) -> int:
    """The row of the most recent interaction (by year, month, day; the last row on ties)."""
    if data.ymd is None:
        return len(data.items) - 1
    ymd = data.ymd
    key = ymd[:, 0] * 10_000 + ymd[:, 1] * 100 + ymd[:, 2]
    return int(len(key) - 1 - np.argmax(key[::-1]))


class _open_tables:
    """A read-only DuckDB connection to the home's database, or views over its Parquet export."""

    def __init__(self, home: Path):
        self.home = home
        self.conn = None

    def __enter__(self):
        import duckdb

        from convrec_dagster.data.dataset import parquet_connection

        database = settings.duckdb_path(self.home)
        try:
            if not database.is_file():
                raise FileNotFoundError(database)
            self.conn = duckdb.connect(str(database), read_only=True)
        except (duckdb.IOException, FileNotFoundError) as err:
            export = self.home / "export"
            if not (export / "sequences.parquet").exists():
                raise RecommenderError(
                    f"cannot read {database} ({err}) and there is no Parquet export in {export}",
                    "wait until the run that writes the database ends, or point --home at "
                    "a finished CONVREC_HOME",
                ) from err
            log.warning("reading the Parquet export in %s (%s is busy or missing)", export, database)
            self.conn = parquet_connection(export)
        return self.conn

    def __exit__(self, *exc) -> None:
        if self.conn is not None:
            self.conn.close()


def _metric_rows(conn) -> list[dict]:
    from convrec_dagster.data.tables import table_exists

    if not table_exists(conn, "evaluation_metrics"):
        return []
    cols = ["model", "protocol", "split", "metric", "k", "user_group", "value"]
    return [
        dict(zip(cols, r))
        for r in conn.execute(f"SELECT {', '.join(cols)} FROM evaluation_metrics").fetchall()
    ]


# --- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convrec_dagster.recommend",
        description="Top-k items after a history of raw item ids, from the model the pipeline chose "
        "(best validation NDCG@10). The history is never recommended back.",
    )
    parser.add_argument(
        "--home", default="", help="CONVREC_HOME of a finished run (default: $CONVREC_HOME or ./.convrec)"
    )
    parser.add_argument(
        "--items", required=True, help="the history: comma-separated raw item ids (ASINs), oldest first"
    )
    parser.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument(
        "--model",
        default="",
        help="a model by name instead of the chosen one (popularity, sasrec, convrec_attention, convrec)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be at least 1, not {args.k}")
    logging.basicConfig(level=logging.WARNING, format="convrec: %(message)s", stream=sys.stderr)
    items = [i.strip() for i in args.items.split(",") if i.strip()]
    try:
        rec = Recommender.load(args.home or None, model=args.model or None, device=args.device)
        found, unknown = rec.recommend_detailed(items, args.k)
    except RecommenderError as err:
        print(f"convrec: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "model": rec.model_name,
                    "why": rec.why,
                    "history": items,
                    "ignored": unknown,
                    "recommendations": [
                        {"rank": r.rank, "item_id": r.item_id, "score": r.score} for r in found
                    ],
                },
                indent=1,
            )
        )
        return 0
    print(
        f"# {rec.model_name} ({rec.why}); history of {len(items) - len(unknown)} known item(s)",
        file=sys.stderr,
    )
    for r in found:
        print(f"{r.rank}\t{r.item_id}\t{r.score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
