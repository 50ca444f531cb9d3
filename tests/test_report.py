"""The evaluation report from hand-made metric rows and training histories (no Dagster, no DuckDB)."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from convrec_dagster.data import report as R
from models.metrics import grouped_summary

GAMES_SIZE = {"users": 31_013, "items": 23_715, "interactions": 287_107}
OTHER_SIZE = {"users": 120, "items": 80, "interactions": 1_500}


def _rows(ranks: dict[str, dict[str, int]]) -> list[dict]:
    """Rows where every user of ``model`` under ``protocol`` ranks the positive at the given rank."""
    lengths = np.arange(3, 23)  # 20 users: 4 in the top group
    rows = []
    for model, by_protocol in ranks.items():
        for protocol, rank in by_protocol.items():
            for split in ("test", "valid"):
                n_greater = np.full(20, rank)
                n_greater[:5] += 1  # not every user alike, so intervals have width
                for record in grouped_summary(n_greater, None, lengths, n_boot=100):
                    rows.append(
                        {"model": model, "protocol": protocol, "split": split, "run_id": "r1", **record}
                    )
    return rows


# convrec best on sampled_100, sasrec best on full: the two protocols disagree
RANKS = {
    "popularity": {"sampled_100": 30, "full": 500},
    "sasrec": {"sampled_100": 6, "full": 2},
    "convrec": {"sampled_100": 1, "full": 5},
}
HISTORIES = {
    "sasrec": [
        {"epoch": e, "loss": 1.0 / e, "valid_HR@10": 0.1 * e, "valid_NDCG@10": 0.05 * e} for e in range(1, 6)
    ],
    "convrec": [
        {"epoch": e, "loss": 0.8 / e, "valid_HR@10": 0.12 * e, "valid_NDCG@10": 0.06 * e} for e in range(1, 6)
    ],
}


def _summary(size: dict, **extra) -> dict:
    return {
        "dataset": "test dump",
        "eval_users": 20,
        "time_context": True,
        "fingerprint": "abc123",
        **size,
        **extra,
    }


def _build(size=GAMES_SIZE, **kwargs) -> dict:
    return R.build_report(
        _rows(RANKS),
        data_summary=_summary(size),
        histories=HISTORIES,
        config={"convrec": {"d": 64}},
        run_id="r1",
        generated_at="2026-01-01T00:00:00",
        **kwargs,
    )


class _TagBalance(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_markdown_labels_both_protocols_and_bolds_the_best():
    report = _build()
    md = R.render_markdown(report)
    assert "sampled_100" in md and "full" in md
    assert R.PROTOCOL_TITLES["sampled_100"] in md and R.PROTOCOL_TITLES["full"] in md
    index = R.lookup(report["metrics"])
    conv_sampled = index[("convrec", "sampled_100", "NDCG@10")]["value"]
    sasrec_full = index[("sasrec", "full", "NDCG@10")]["value"]
    conv_full = index[("convrec", "full", "NDCG@10")]["value"]
    assert f"**{conv_sampled:.4f}**" in md
    assert f"**{sasrec_full:.4f}**" in md
    assert f"**{conv_full:.4f}**" not in md  # ConvRec is not the best on full ranking here
    assert f"| Popularity | {0:.4f} |" in md  # a column where every model scores 0 has no best
    headline = report["tables"]["headline"]
    best = {
        (row["model"], j) for row in headline["rows"] for j, c in enumerate(row["cells"]) if c and c["best"]
    }
    # HR@10 ties at 1.0 (ranks below 10) bold both models; NDCG@10 has one best per protocol
    assert best == {
        ("convrec", 0),
        ("sasrec", 0),
        ("convrec", 1),
        ("sasrec", 2),
        ("convrec", 2),
        ("sasrec", 3),
    }
    assert report["best_model"] == "convrec"
    assert any("order the models differently" in line for line in report["findings"])
    # without a paired test the numbers are given, but no model is called better
    assert any(
        line.startswith("sampled_100: ConvRec scores higher than Popularity") and "no paired test" in line
        for line in report["findings"]
    )
    assert any(line.startswith("full: ConvRec scores lower than SASRec") for line in report["findings"])
    assert not any(" is better than " in line or " beats " in line for line in report["findings"])


def _comparison(baseline: str, protocol: str, a: float, b: float, p: float) -> dict:
    from models.significance import verdict

    return {
        "model": "convrec",
        "baseline": baseline,
        "protocol": protocol,
        "split": "test",
        "metric": "NDCG@10",
        "n_users": 20,
        "value_model": a,
        "value_baseline": b,
        "diff": a - b,
        "ci_low": a - b - 0.01,
        "ci_high": a - b + 0.01,
        "p_value": p,
        "n_perm": 10_000,
        "verdict": verdict(p, a - b),
    }


def test_findings_say_better_or_worse_only_with_a_paired_test():
    comparisons = [
        _comparison("popularity", "sampled_100", 0.40, 0.10, 0.00009999),
        _comparison("sasrec", "sampled_100", 0.20, 0.41, 0.0004),  # ConvRec loses, by about 2x
        _comparison("sasrec", "full", 0.050, 0.048, 0.31),  # a small gap, not significant
    ]
    report = R.build_report(_rows(RANKS), data_summary=_summary(OTHER_SIZE), comparisons=comparisons)
    lines = report["findings"]
    assert any(
        line.startswith("sampled_100: ConvRec is better than Popularity") and "p < 0.0001" in line
        for line in lines
    )
    worse = [line for line in lines if line.startswith("sampled_100: ConvRec is worse than SASRec")]
    assert len(worse) == 1 and "2.0x higher" in worse[0] and "p = 0.0004" in worse[0]
    assert any(
        line.startswith("full: ConvRec and SASRec do not differ significantly") and "p = 0.310" in line
        for line in lines
    )
    md = R.render_markdown(report)
    assert "## Paired tests" in md and "| sampled_100 | ConvRec | SASRec |" in md


def test_training_ingest_and_warning_tables():
    # SASRec validated by full ranking: its sampled figures come from the epoch the sampled validation picked
    configs = {
        "convrec": {"epoch": 4, "n_parameters": 12_345, "run_id": "run-a"},
        "sasrec": {"epoch": 2, "sampled_100_epoch": 1},
    }
    histories = {
        "convrec": [
            {
                "epoch": e,
                "loss": 1.0,
                "valid_NDCG@10": 0.1 * e,
                "epoch_time_s": 2.0,
                "stop": "max_epochs" if e == 4 else None,
            }
            for e in range(1, 5)
        ],
        "sasrec": [
            {
                "epoch": e,
                "loss": 1.0,
                "valid_NDCG@10": [0.1, 0.3, 0.2][e - 1],
                "epoch_time_s": 1.5,
                "stop": "patience" if e == 3 else None,
            }
            for e in range(1, 4)
        ],
    }
    ingest = {
        "reviews_kept": 1_000,
        "quarantined": 3,
        "quarantine": [{"stage": "reviews", "reason": "malformed_json", "rows": 3}],
    }
    report = R.build_report(
        _rows(RANKS),
        data_summary=_summary(OTHER_SIZE, ingest=ingest),
        histories=histories,
        model_configs=configs,
        warnings=[{"step": "items", "message": "7 items have no metadata"}],
    )
    training = {t["model"]: t for t in report["training"]}
    assert training["convrec"] == {
        "model": "convrec",
        "label": "ConvRec",
        "parameters": 12_345,
        "best_epoch": 4,
        "sampled_100_epoch": None,
        "epochs": 4,
        "train_time_s": 8.0,
        "stopped_by": "max_epochs",
        "still_improving": True,
        "trained_in_run": "run-a",
    }
    assert training["sasrec"]["still_improving"] is False and training["sasrec"]["stopped_by"] == "patience"
    md = R.render_markdown(report)
    assert "| ConvRec | 12,345 | 4 | 4 | 8.0 s | max_epochs | yes | `run-a` |" in md
    assert "| SASRec | – | 2 (sampled-100: 1) | 3 |" in md
    assert "| quarantined (reviews): malformed_json | 3 |" in md
    assert "| items | 7 items have no metadata |" in md
    html = R.render_html(report)
    assert "7 items have no metadata" in html and "12,345" in html


def test_paper_numbers_shown_for_a_paper_dataset_only():
    games = _build(GAMES_SIZE)
    assert games["paper"]["dataset"] == "Games"
    md = R.render_markdown(games)
    assert "ConvRec (published)" in md and "0.819" in md and "0.617" in md  # Table 2
    assert "0.141" in md and "0.081" in md  # Table 3
    page = R.render_html(games)
    assert "0.819" in page and "ProxyRCA (published)" in page

    other = _build(OTHER_SIZE)
    assert other["paper"]["dataset"] is None and other["paper_rows"] == []
    assert "(published)" not in R.render_markdown(other)
    assert "No published numbers shown" in R.render_html(other)

    assert _build(GAMES_SIZE, paper_dataset="none")["paper_rows"] == []
    named = _build(OTHER_SIZE, paper_dataset="S3-Rec Beauty")
    assert [r["model"] for r in named["paper_rows"]] == ["ICLRec"]
    assert named["paper_rows"][0]["cells"][:2] == [None, None]  # only full-ranking numbers exist
    with pytest.raises(ValueError, match="paper_dataset"):
        _build(paper_dataset="Books")


def test_match_paper_dataset_by_size():
    assert R.match_paper_dataset(31_013, 23_715, 287_107)[0] == "Games"
    assert "exactly" in R.match_paper_dataset(31_013, 23_715, 287_107)[1]
    assert R.match_paper_dataset(22_363, 12_101, 198_502)[0] == "S3-Rec Beauty"
    name, why = R.match_paper_dataset(52_000, 57_289, 395_500)  # a re-preprocessed raw Beauty dump
    assert name == "Beauty" and "within" in why
    assert R.match_paper_dataset(40_000, 57_289, 394_908)[0] is None
    assert R.match_paper_dataset(None, 10, 10) == (None, "dataset size unknown")


def test_html_file_written_and_well_formed(tmp_path):
    report = _build()
    plots = R.render_plots(report)
    assert set(plots) == {"metric_by_k", "user_groups", "training_curves"}
    paths = R.write_report(report, tmp_path / "reports", plots)
    page = paths["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    parser = _TagBalance()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert len(parser.images) == 3
    for src in parser.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # standalone: nothing fetched
    assert "abc123" in page  # data fingerprint
    assert not list((tmp_path / "reports").glob("*.tmp"))


def test_json_round_trip(tmp_path):
    rows = _rows(RANKS)
    rows[0]["value"] = float("nan")  # a NaN must not produce invalid JSON
    report = R.build_report(rows, data_summary=_summary(OTHER_SIZE), histories=HISTORIES, run_id="r1")
    paths = R.write_report(report, tmp_path, R.render_plots(report))
    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert loaded == report
    assert loaded["metrics"][0]["value"] is None
    assert len(loaded["metrics"]) == len(rows)
    assert loaded["metrics"][5] == {k: (v if v == v else None) for k, v in rows[5].items()}
    assert loaded["histories"]["convrec"][4]["valid_NDCG@10"] == pytest.approx(0.3)


def test_data_summary_says_unknown_rather_than_guessing():
    report = _build(OTHER_SIZE)
    md = R.render_markdown(report)
    assert "**image weights pretrained**: unknown" in md
    assert "**attribute kinds (vocabulary size)**: unknown" in md
    assert "**time context**: yes" in md
    report = R.build_report(
        _rows(RANKS),
        data_summary=_summary(
            OTHER_SIZE, image_weights_pretrained=False, feature_kinds={"brand": 7, "category": 31}
        ),
    )
    md = R.render_markdown(report)
    assert "**image weights pretrained**: no (random initialisation)" in md
    assert "brand (7), category (31)" in md


def test_plots_embedded_in_markdown_and_left_out_without_data():
    report = _build()
    md = R.render_markdown(report, R.render_plots(report))
    assert len(re.findall(r"!\[\w+\]\(data:image/png;base64,[A-Za-z0-9+/=]+\)", md)) == 3
    assert R.plot_training_curves({}) is None
    assert R.plot_training_curves({"popularity": [{"epoch": 1, "seconds": 0.1}]}) is None
    assert R.plot_metric_by_k([]) is None


def test_history_keys_are_found_by_name():
    history = [
        {"epoch": 1, "train_loss": 2.0, "valid": 0},
        {"epoch": 2, "train_loss": 1.5, "valid_ndcg@10": 0.2},
    ]
    assert R._series(history, ("loss",)) == [(1.0, 2.0), (2.0, 1.5)]
    assert R._series(history, ("ndcg@10",)) == [(2.0, 0.2)]


def test_ties_note_follows_the_evaluation_setting():
    expected = _build()
    assert any("10/101" in note for note in expected["notes"])
    pessimistic = R.build_report(
        _rows(RANKS), data_summary=_summary(OTHER_SIZE), config={"evaluation": {"ties": "pessimistic"}}
    )
    assert any("HR@10 = 0" in note for note in pessimistic["notes"])
    assert not any("10/101" in note for note in pessimistic["notes"])


def test_training_findings_flag_models_still_improving_and_tiny_catalogues():
    rising = [{"epoch": e, "loss": 1.0 / e, "valid_NDCG@10": 0.1 * e} for e in range(1, 4)]
    peaked = [{"epoch": e, "loss": 1.0 / e, "valid_NDCG@10": v} for e, v in enumerate([0.1, 0.3, 0.2], 1)]
    notes = R.training_findings({"convrec": rising, "sasrec": peaked}, {"items": 145})
    assert len(notes) == 2
    assert "still improving at its last epoch (3)" in notes[0] and "SASRec" not in notes[0]
    assert "only 145 items" in notes[1] and "69%" in notes[1]
    assert R.training_findings({"sasrec": peaked}, {"items": 23715}) == []
    # picked by full-ranking validation: the loop's own "best" flag, not the sampled figure, says which
    by_full = [{**h, "best": e in (1, 3)} for e, h in enumerate(peaked, 1)]
    assert "still improving at its last epoch (3)" in R.training_findings({"convrec": by_full}, {})[0]
    assert R.best_record(by_full)["epoch"] == 3 and R.best_record(peaked)["epoch"] == 2
