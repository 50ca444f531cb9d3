"""The evaluation report: comparison tables, the paper's numbers, plots, markdown, HTML and JSON.

Pure Python + matplotlib (object API on the Agg canvas, no pyplot state); no Dagster.
``evaluation_steps.write_evaluation_report`` (called by ``assets/evaluation.py``) reads DuckDB and the
training artifacts, then calls :func:`build_report`, :func:`render_plots`, :func:`render_markdown` and
:func:`write_report`.

Metric rows are the long format of the ``evaluation_metrics`` table: one dict per number with
``model, protocol, split, metric, k, user_group, value, ci_low, ci_high`` (``k`` None for MRR).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from convrec_dagster.data import plots
from models.metrics import PROTOCOLS
from models.registry import MODELS

MODEL_ORDER = tuple(m.name for m in MODELS)
MODEL_LABELS = {m.name: m.label for m in MODELS}
MODEL_COLORS = {m.name: m.color for m in MODELS}
PROTOCOL_TITLES = {
    "sampled_100": "sampled_100: the positive against its 100 stored negatives (the paper's protocol)",
    "full": "full: the positive against every item, the user's history masked",
}
USER_GROUPS = ("all", "top20_longest", "bottom80")
GROUP_LABELS = {"all": "all users", "top20_longest": "top 20 % longest histories", "bottom80": "other 80 %"}
METRIC_COLUMNS = ("HR@1", "HR@5", "HR@10", "HR@20", "NDCG@1", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")
HEADLINE = (("sampled_100", "HR@10"), ("sampled_100", "NDCG@10"), ("full", "HR@10"), ("full", "NDCG@10"))
NOTES = (
    "Leave-one-out: each user's last interaction is the test target, the one before it the validation "
    "target. Users with fewer than 3 interactions only train.",
    "sampled_100 scores the positive against the same 100 stored negatives for every model and run; "
    "full ranks it against all items with the user's own history masked. Sampled metrics can reorder "
    "models (Krichene & Rendle, KDD 2020), which is why both are shown.",
    "Ties never help a model: the positive's rank is spread uniformly over its tie group (expected "
    "value), so a model that scores every item equal gets HR@10 = 10/101 on sampled_100.",
    "Intervals are 95 % percentile bootstrap intervals of the mean over users (resampling users; the "
    "number of resamples is under Config, evaluation).",
    "User groups (paper, Appendix B): the 20 % of evaluated users with the longest histories and the "
    "other 80 %.",
)

# --- the published numbers -------------------------------------------------------------------------

# Table 1 of the paper, plus the S3-Rec Beauty benchmark file; used to recognise a dataset by its size.
PAPER_DATASETS: dict[str, dict[str, Any]] = {
    "Beauty": {"users": 52_204, "items": 57_289, "interactions": 394_908},
    "Games": {"users": 31_013, "items": 23_715, "interactions": 287_107},
    "Fashion": {"users": 45_184, "items": 166_270, "interactions": 358_003},
    "Men": {"users": 34_244, "items": 110_636, "interactions": 254_870},
    "S3-Rec Beauty": {"users": 22_363, "items": 12_101, "interactions": 198_502},
}
_T2 = "ConvRec paper, Table 2 (100 sampled negatives)"
_T3 = "ConvRec paper, Table 3 (full ranking)"
_ICLREC = "ICLRec (WWW 2022), full ranking on S3-Rec Beauty.txt"


def _published() -> list[dict[str, Any]]:
    table2 = {  # model: (dataset: (HR@10, NDCG@10))
        "SASRec": {
            "Beauty": (0.485, 0.322),
            "Games": (0.742, 0.541),
            "Fashion": (0.381, 0.245),
            "Men": (0.397, 0.259),
        },
        "ProxyRCA": {
            "Beauty": (0.609, 0.430),
            "Games": (0.805, 0.601),
            "Fashion": (0.661, 0.435),
            "Men": (0.613, 0.399),
        },
        "ConvRec": {
            "Beauty": (0.629, 0.439),
            "Games": (0.819, 0.617),
            "Fashion": (0.688, 0.469),
            "Men": (0.618, 0.406),
        },
    }
    table3 = {
        "SASRec": {"Beauty": (0.008, 0.004), "Games": (0.026, 0.014)},
        "ProxyRCA": {"Beauty": (0.049, 0.025), "Games": (0.136, 0.075)},
        "ConvRec": {"Beauty": (0.052, 0.027), "Games": (0.141, 0.081)},
    }
    out = []
    for protocol, table, source in (("sampled_100", table2, _T2), ("full", table3, _T3)):
        for model, by_dataset in table.items():
            for dataset, (hr, ndcg) in by_dataset.items():
                for metric, value in (("HR@10", hr), ("NDCG@10", ndcg)):
                    out.append(
                        dict(
                            dataset=dataset,
                            protocol=protocol,
                            model=model,
                            metric=metric,
                            value=value,
                            source=source,
                        )
                    )
    for metric, value in (("HR@10", 0.0744), ("NDCG@10", 0.0403), ("HR@20", 0.1058), ("NDCG@20", 0.0483)):
        out.append(
            dict(
                dataset="S3-Rec Beauty",
                protocol="full",
                model="ICLRec",
                metric=metric,
                value=value,
                source=_ICLREC,
            )
        )
    return out


PUBLISHED = _published()


def match_paper_dataset(
    users: int | None, items: int | None, interactions: int | None, tolerance: float = 0.02
) -> tuple[str | None, str]:
    """The paper dataset whose size (users, items, interactions) ours matches within ``tolerance``.

    Returns (name or None, the reason in words). Exact sizes say "exact"; near sizes say how near,
    because a re-preprocessed raw dump rarely lands on the published counts to the last row.
    """
    if not users or not items or not interactions:
        return None, "dataset size unknown"
    ours = {"users": users, "items": items, "interactions": interactions}
    for name, size in PAPER_DATASETS.items():
        gaps = {key: abs(ours[key] - size[key]) / size[key] for key in size}
        if max(gaps.values()) <= tolerance:
            if max(gaps.values()) == 0:
                return (
                    name,
                    f"size equals {name} exactly ({users:,} users, {items:,} items, {interactions:,} interactions)",
                )
            worst = max(gaps, key=gaps.get)
            return name, f"size within {100 * gaps[worst]:.1f} % of {name} ({worst})"
    return None, "size matches none of the paper's datasets"


def published_for(dataset: str | None) -> list[dict[str, Any]]:
    return [row for row in PUBLISHED if row["dataset"] == dataset]


# --- tables ----------------------------------------------------------------------------------------


def metric_name(row: dict) -> str:
    return row["metric"] if row.get("k") is None else f"{row['metric']}@{int(row['k'])}"


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def ordered_models(models: Iterable[str]) -> list[str]:
    models = set(models)
    return [m for m in MODEL_ORDER if m in models] + sorted(models - set(MODEL_ORDER))


def lookup(rows: list[dict], split: str = "test", user_group: str = "all") -> dict[tuple, dict]:
    """(model, protocol, metric name) -> row, for one split and user group."""
    return {
        (r["model"], r["protocol"], metric_name(r)): r
        for r in rows
        if r["split"] == split and r["user_group"] == user_group
    }


def comparison_table(
    rows: list[dict], columns: Iterable[tuple[str, str]], split: str = "test", user_group: str = "all"
) -> dict[str, Any]:
    """Models x (protocol, metric) with the best of every column marked.

    Returns {"columns": [[protocol, metric], ...], "rows": [{"model", "label", "cells": [cell]}]},
    a cell being {"value", "ci_low", "ci_high", "best"} or None where the model has no number.
    """
    columns = [list(c) for c in columns]
    index = lookup(rows, split, user_group)
    models = ordered_models(r["model"] for r in rows)
    table_rows = []
    for model in models:
        cells = []
        for protocol, metric in columns:
            row = index.get((model, protocol, metric))
            cells.append(
                None
                if row is None or row["value"] is None
                else {
                    "value": row["value"],
                    "ci_low": row.get("ci_low"),
                    "ci_high": row.get("ci_high"),
                    "best": False,
                }
            )
        table_rows.append({"model": model, "label": model_label(model), "cells": cells})
    for j in range(len(columns)):
        values = [r["cells"][j]["value"] for r in table_rows if r["cells"][j] is not None]
        if len(values) > 1 and max(values) > min(values):  # a best needs a model to beat
            top = max(values)
            for r in table_rows:
                if r["cells"][j] is not None and r["cells"][j]["value"] == top:
                    r["cells"][j]["best"] = True
    return {"columns": columns, "rows": table_rows}


def paper_rows(dataset: str | None, columns: list[list[str]]) -> list[dict[str, Any]]:
    """The published numbers of ``dataset`` laid out in ``columns`` (None where not published)."""
    published = published_for(dataset)
    models = list(dict.fromkeys(p["model"] for p in published))
    out = []
    for model in models:
        cells = []
        for protocol, metric in columns:
            hit = [
                p
                for p in published
                if p["model"] == model and p["protocol"] == protocol and p["metric"] == metric
            ]
            cells.append({"value": hit[0]["value"], "source": hit[0]["source"]} if hit else None)
        if any(cells):
            out.append({"model": model, "label": f"{model} (published)", "cells": cells})
    return out


def best_model(
    rows: list[dict], protocol: str = "sampled_100", split: str = "test", metric: str = "NDCG@10"
) -> str | None:
    """The model with the highest ``metric`` (all users); ties go to the later model in MODEL_ORDER."""
    candidates = [
        r
        for r in rows
        if r["protocol"] == protocol
        and r["split"] == split
        and r["user_group"] == "all"
        and metric_name(r) == metric
        and r["value"] is not None
    ]
    if not candidates:
        return None
    rank = {m: i for i, m in enumerate(ordered_models(r["model"] for r in candidates))}
    return max(candidates, key=lambda r: (r["value"], rank[r["model"]]))["model"]


def headline_values(rows: list[dict], split: str = "test") -> dict[str, dict[str, dict[str, float]]]:
    """model -> protocol -> {"HR@10", "NDCG@10"} (all users of ``split``), in model order."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (model, protocol, metric), row in lookup(rows, split, "all").items():
        if metric in ("HR@10", "NDCG@10") and row["value"] is not None:
            out.setdefault(model, {}).setdefault(protocol, {})[metric] = float(row["value"])
    return {m: out[m] for m in ordered_models(out)}


def _comparison_sentence(c: dict) -> str:
    """One finding from a row of `evaluation_comparisons` (``model`` against ``baseline``)."""
    from models.significance import format_p

    model, baseline = model_label(c["model"]), model_label(c["baseline"])
    a, b, diff = c["value_model"], c["value_baseline"], c["diff"]
    test = (
        f"paired permutation test over {int(c['n_users']):,} users, {format_p(c['p_value'], c.get('n_perm'))}; "
        f"difference {diff:+.4f}, 95 % CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}"
    )
    if c["verdict"] == "better":
        return f"{c['protocol']}: {model} is better than {baseline} on test NDCG@10 ({a:.4f} vs {b:.4f}; {test})."
    if c["verdict"] == "worse":
        ratio = f", {b / a:.1f}x higher" if a > 0 and b > 1.5 * a else ""
        return (
            f"{c['protocol']}: {model} is worse than {baseline} on test NDCG@10 ({a:.4f} vs {b:.4f}{ratio}; "
            f"{test})."
        )
    return (
        f"{c['protocol']}: {model} and {baseline} do not differ significantly on test NDCG@10 "
        f"({a:.4f} vs {b:.4f}; {test})."
    )


def findings(rows: list[dict], comparisons: list[dict] | None = None) -> list[str]:
    """Plain sentences on what the numbers say: the best model per protocol, reorderings, and
    ConvRec against every other model, wins and losses alike. "Better" or "worse" is said only with
    a paired test on the same users at p < 0.05 (``comparisons``: rows of `evaluation_comparisons`);
    without one, the numbers are given with no claim."""
    out = []
    order = {}
    index = lookup(rows, "test", "all")
    for protocol in PROTOCOLS:
        scored = [
            (index[(m, protocol, "NDCG@10")]["value"], m)
            for m in ordered_models(r["model"] for r in rows)
            if (m, protocol, "NDCG@10") in index
        ]
        if not scored:
            continue
        scored.sort(reverse=True)
        order[protocol] = [m for _, m in scored]
        out.append(
            f"{protocol}: best test NDCG@10 is {model_label(scored[0][1])} ({scored[0][0]:.4f}); order "
            + " > ".join(model_label(m) for m in order[protocol])
            + "."
        )
    if len(order) == 2 and order["sampled_100"] != order["full"]:
        out.append("The two protocols order the models differently (see Krichene & Rendle, KDD 2020).")
    tested = {(c["protocol"], c["baseline"]): c for c in comparisons or [] if c.get("model") == "convrec"}
    for protocol in PROTOCOLS:
        conv = index.get(("convrec", protocol, "NDCG@10"))
        if not conv:
            continue
        for baseline in ordered_models(r["model"] for r in rows):
            other = index.get((baseline, protocol, "NDCG@10"))
            if baseline == "convrec" or not other:
                continue
            if (protocol, baseline) in tested:
                out.append(_comparison_sentence(tested[(protocol, baseline)]))
                continue
            relation = (
                "higher than"
                if conv["value"] > other["value"]
                else "lower than"
                if conv["value"] < other["value"]
                else "equal to"
            )
            out.append(
                f"{protocol}: ConvRec scores {relation} {model_label(baseline)} on test NDCG@10 "
                f"({conv['value']:.4f} vs {other['value']:.4f}); no paired test on the same users was run, "
                "so this is no claim that either is better."
            )
    return out


def best_record(history: list[dict]) -> dict:
    """The best epoch's record: the last one the training loop flagged ``best`` (it knows which
    validation protocol picked it), else, for histories without the flag, the highest valid NDCG@10."""
    flagged = [h for h in history if h.get("best")]
    return flagged[-1] if flagged else max(history, key=lambda h: h.get("valid_NDCG@10") or 0)


def training_findings(histories: dict[str, list[dict]], data_summary: dict[str, Any]) -> list[str]:
    """Caveats a reader would otherwise miss: models still improving when training stopped, and a
    catalogue so small that sampled and full ranking nearly coincide."""
    out = []
    for name, history in histories.items():
        trained = [h for h in history if h.get("loss") is not None]
        if len(trained) > 1 and best_record(trained) is trained[-1]:
            out.append(
                f"{model_label(name)} was still improving at its last epoch ({trained[-1]['epoch']}): "
                "more epochs (or a larger time budget) would likely raise its numbers."
            )
    items = data_summary.get("items")
    if isinstance(items, int) and 0 < items <= 1000:
        out.append(
            f"The catalogue has only {items} items, so the 100 sampled negatives cover "
            f"{min(100 / max(items - 1, 1), 1):.0%} of it: sampled and full ranking nearly coincide here."
        )
    return out


def training_table(histories: dict[str, list[dict]], model_configs: dict[str, dict]) -> list[dict]:
    """One row per model: parameters, best epoch, epochs trained, training time, why it stopped,
    whether it was still improving, and the run that trained it (from best.pt and history.json)."""
    out = []
    for name in ordered_models(set(histories) | set(model_configs)):
        history = histories.get(name) or []
        info = model_configs.get(name) or {}
        trained = [h for h in history if h.get("loss") is not None]
        best_epoch = info.get("epoch")
        if best_epoch is None and history:
            best_epoch = best_record(history).get("epoch")
        last = trained[-1] if trained else None
        out.append(
            {
                "model": name,
                "label": model_label(name),
                "parameters": info.get("n_parameters"),
                "best_epoch": best_epoch,
                "sampled_100_epoch": info.get("sampled_100_epoch"),  # under valid_protocol full only
                "epochs": len(trained),
                "train_time_s": round(sum(float(h.get("epoch_time_s") or 0) for h in trained), 1)
                if trained
                else 0.0,
                "stopped_by": (last or {}).get("stop") or ("nothing to train" if not trained else None),
                "still_improving": bool(len(trained) > 1 and best_epoch == trained[-1].get("epoch")),
                "trained_in_run": info.get("run_id"),
            }
        )
        size = int(info.get("ensemble_size") or 1)
        if size > 1:  # seeds ranked by their mean score, each with its best epoch
            out[-1] |= {"ensemble_size": size, "member_epochs": info.get("member_epochs")}
    return out


# --- the report as data ----------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def build_report(
    rows: list[dict],
    *,
    data_summary: dict[str, Any],
    histories: dict[str, list[dict]] | None = None,
    config: dict[str, Any] | None = None,
    run_id: str | None = None,
    generated_at: str | None = None,
    paper_dataset: str = "auto",
    comparisons: list[dict] | None = None,
    model_configs: dict[str, dict] | None = None,
    warnings: list[dict] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as JSON-safe data (the JSON file is exactly this).

    ``paper_dataset``: "auto" recognises the dataset by its size, "none" shows no published numbers,
    or a name of :data:`PAPER_DATASETS`. ``comparisons``: rows of `evaluation_comparisons` (paired
    tests); ``model_configs``: per model, the provenance kept in its best.pt (best epoch, parameter
    count, the run that trained it); ``warnings``: ``{"step", "message"}`` of every warning the run
    logged. ``data_summary["ingest"]`` (when given) holds the ingest and quarantine counts.
    """
    if paper_dataset == "auto":
        dataset, reason = match_paper_dataset(
            data_summary.get("users"), data_summary.get("items"), data_summary.get("interactions")
        )
    elif paper_dataset == "none":
        dataset, reason = None, "published numbers switched off in config"
    elif paper_dataset in PAPER_DATASETS:
        dataset, reason = paper_dataset, "named in config"
    else:
        raise ValueError(
            f"paper_dataset={paper_dataset!r} is not one of 'auto', 'none', {', '.join(map(repr, PAPER_DATASETS))}"
        )
    rows = [{k: v for k, v in r.items()} for r in rows]
    detail_columns = {p: [[p, m] for m in METRIC_COLUMNS] for p in PROTOCOLS}
    group_columns = [[p, f"NDCG@10 {g}"] for p in PROTOCOLS for g in USER_GROUPS]
    report = {
        "title": "ConvRec evaluation report",
        "run_id": run_id,
        "generated_at": generated_at,
        "data": data_summary,
        "paper": {
            "dataset": dataset,
            "match": reason,
            "published": published_for(dataset),
        },
        "notes": _notes(config),
        "findings": findings(rows, comparisons) + training_findings(histories or {}, data_summary),
        "comparisons": comparisons or [],
        "training": training_table(histories or {}, model_configs or {}),
        "warnings": warnings or [],
        "best_model": best_model(rows),
        "tables": {
            "headline": comparison_table(rows, HEADLINE),
            "headline_valid": comparison_table(rows, HEADLINE, split="valid"),
            "sampled_100": comparison_table(rows, detail_columns["sampled_100"]),
            "full": comparison_table(rows, detail_columns["full"]),
            "user_groups": _group_table(rows, group_columns),
        },
        "paper_rows": paper_rows(dataset, [list(c) for c in HEADLINE]),
        "metrics": rows,
        "histories": histories or {},
        "config": config or {},
    }
    return _json_safe(report)


def _notes(config: dict | None) -> list[str]:
    evaluation = (config or {}).get("evaluation")
    ties = evaluation.get("ties", "expected") if isinstance(evaluation, dict) else "expected"
    if ties != "pessimistic":
        return list(NOTES)
    return [
        "Ties count fully against a model: the positive ranks after every candidate scored like it, so a "
        "model that scores every item equal gets HR@10 = 0."
        if note.startswith("Ties")
        else note
        for note in NOTES
    ]


def _group_table(rows: list[dict], columns: list[list[str]]) -> dict[str, Any]:
    # columns are [protocol, "NDCG@10 <group>"]; relabel rows so comparison_table can index them
    relabelled = [
        {**r, "metric": f"{metric_name(r)} {r['user_group']}", "k": None, "user_group": "all"}
        for r in rows
        if r["split"] == "test" and metric_name(r) == "NDCG@10"
    ]
    return comparison_table(relabelled, columns)


# --- plots -----------------------------------------------------------------------------------------


def _figure(width: float, height: float, ncols: int, nrows: int = 1):
    return plots.figure(width, height, ncols, nrows, dpi=100, layout="constrained")


_png = plots.png


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(fig, axes) -> None:
    """One legend above the panels, with every model that appears in any of them, in model order."""
    found: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    order = [model_label(m) for m in MODEL_ORDER]
    labels = sorted(found, key=lambda label: order.index(label) if label in order else len(order))
    if labels:
        fig.legend(
            [found[label] for label in labels],
            labels,
            loc="outside upper center",
            ncols=len(labels),
            fontsize=9,
            frameon=False,
        )


def plot_metric_by_k(rows: list[dict], split: str = "test") -> bytes | None:
    """HR@k and NDCG@k against k, one line per model, one panel per protocol and metric."""
    index = lookup(rows, split, "all")
    models = ordered_models(r["model"] for r in rows)
    ks = sorted({int(r["k"]) for r in rows if r.get("k") is not None})
    panels = [
        (p, m)
        for p in PROTOCOLS
        for m in ("HR", "NDCG")
        if any((x, p, f"{m}@{k}") in index for x in models for k in ks)
    ]
    if not panels or not ks:
        return None
    ncols = 2 if len(panels) > 2 else len(panels)  # protocols in rows, HR and NDCG in columns
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(4.2 * ncols, 0.4 + 2.7 * nrows, ncols, nrows)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (protocol, metric) in zip(axes, panels):
        for model in models:
            points = [
                (k, index[(model, protocol, f"{metric}@{k}")]["value"])
                for k in ks
                if (model, protocol, f"{metric}@{k}") in index
            ]
            if points:
                ax.plot(
                    *zip(*points),
                    marker="o",
                    label=model_label(model),
                    color=MODEL_COLORS.get(model),
                    linewidth=2 if model == "convrec" else 1.4,
                )
        ax.set_xticks(ks)
        _style(ax, f"{metric}@k — {protocol}", "k", f"{metric}@k ({split})")
    _legend(fig, axes)
    return _png(fig)


def plot_user_groups(rows: list[dict], metric: str = "NDCG@10", split: str = "test") -> bytes | None:
    """``metric`` per user group and model, with the bootstrap intervals as error bars."""
    models = ordered_models(r["model"] for r in rows)
    protocols = [
        p
        for p in PROTOCOLS
        if any(r["protocol"] == p and r["split"] == split and metric_name(r) == metric for r in rows)
    ]
    if not protocols:
        return None
    fig, axes = _figure(5.0 * len(protocols), 3.2, len(protocols))
    width = 0.8 / max(len(models), 1)
    for ax, protocol in zip(axes, protocols):
        for i, model in enumerate(models):
            xs, ys, errs = [], [], [[], []]
            for g, group in enumerate(USER_GROUPS):
                row = lookup(rows, split, group).get((model, protocol, metric))
                if row is None:
                    continue
                xs.append(g + (i - (len(models) - 1) / 2) * width)
                ys.append(row["value"])
                low = row.get("ci_low") if row.get("ci_low") is not None else row["value"]
                high = row.get("ci_high") if row.get("ci_high") is not None else row["value"]
                errs[0].append(max(row["value"] - low, 0.0))
                errs[1].append(max(high - row["value"], 0.0))
            if xs:
                ax.bar(
                    xs,
                    ys,
                    width=width * 0.92,
                    yerr=errs,
                    capsize=2,
                    label=model_label(model),
                    color=MODEL_COLORS.get(model),
                    error_kw={"linewidth": 0.8},
                )
        ax.set_xticks(range(len(USER_GROUPS)))
        ax.set_xticklabels([GROUP_LABELS[g] for g in USER_GROUPS])
        _style(ax, f"{metric} by user group — {protocol}", "", f"{metric} ({split}, 95 % CI)")
    _legend(fig, axes)
    return _png(fig)


def _series(history: list[dict], wanted: tuple[str, ...]) -> list[tuple[float, float]]:
    """(epoch, value) for the first key of each entry whose lower-cased name contains all of ``wanted``."""
    points = []
    for i, entry in enumerate(history):
        for key, value in entry.items():
            name = key.lower().replace("_", "").replace(" ", "")
            if (
                all(w in name for w in wanted)
                and isinstance(value, (int, float))
                and value is not None
                and math.isfinite(value)
            ):
                points.append((float(entry.get("epoch", i + 1)), float(value)))
                break
    return points


def plot_training_curves(histories: dict[str, list[dict]]) -> bytes | None:
    """Training loss and validation NDCG@10 per epoch, one line per model."""
    panels = (
        (("loss",), "training loss"),
        (("ndcg@10",), "validation NDCG@10"),
        (("hr@10",), "validation HR@10"),
    )
    series = {
        title: {m: _series(histories[m], wanted) for m in ordered_models(histories) if histories.get(m)}
        for wanted, title in panels
    }
    series = {t: {m: s for m, s in by_model.items() if s} for t, by_model in series.items()}
    series = {t: by_model for t, by_model in series.items() if by_model}
    if not series:
        return None
    fig, axes = _figure(3.6 * len(series), 3.0, len(series))
    for ax, (title, by_model) in zip(axes, series.items()):
        for model, points in by_model.items():
            if len(points) == 1:  # nothing trained (popularity): a reference level, not a curve
                ax.axhline(
                    points[0][1],
                    linestyle="--",
                    linewidth=1.2,
                    label=model_label(model),
                    color=MODEL_COLORS.get(model),
                )
                continue
            ax.plot(
                *zip(*points),
                marker="." if len(points) < 40 else None,
                label=model_label(model),
                color=MODEL_COLORS.get(model),
            )
        _style(ax, title, "epoch", title)
    _legend(fig, axes)
    return _png(fig)


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per plot name; plots without data are left out."""
    rows = report["metrics"]
    plots = {
        "metric_by_k": plot_metric_by_k(rows),
        "user_groups": plot_user_groups(rows),
        "training_curves": plot_training_curves(report.get("histories") or {}),
    }
    return {name: png for name, png in plots.items() if png}


PLOT_TITLES = {
    "metric_by_k": "Metric by k (test split, all users)",
    "user_groups": "NDCG@10 by user group (test split)",
    "training_curves": "Training curves",
}


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- markdown (the Dagster UI) ---------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _md_cell(cell: dict | None, with_ci: bool) -> str:
    if cell is None:
        return "–"
    text = _fmt(cell["value"])
    if cell.get("best"):
        text = f"**{text}**"
    if with_ci and cell.get("ci_low") is not None:
        text += f" ({_fmt(cell['ci_low'], 3)}–{_fmt(cell['ci_high'], 3)})"
    return text


def _md_table(
    table: dict, header: list[str], extra_rows: list[dict] | None = None, with_ci: bool = False
) -> str:
    lines = ["| model | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for row in table["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(_md_cell(c, with_ci) for c in row["cells"]) + " |")
    for row in extra_rows or []:
        cells = ["–" if c is None else f"*{c['value']:.3f}*" for c in row["cells"]]
        lines.append(f"| *{row['label']}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _headline_header(columns: list[list[str]]) -> list[str]:
    return [f"{metric} {protocol}" for protocol, metric in columns]


def headline_markdown(table: dict) -> str:
    """A :func:`comparison_table` of (protocol, metric) columns as a markdown table with intervals."""
    return _md_table(table, _headline_header(table["columns"]), with_ci=True)


def _data_items(report: dict[str, Any]) -> list[tuple[str, str]]:
    data = report["data"]

    def num(key: str) -> str:
        value = data.get(key)
        return "unknown" if value is None else (f"{value:,}" if isinstance(value, int) else str(value))

    kinds = data.get("feature_kinds")
    kinds_text = ", ".join(f"{k} ({v:,})" for k, v in kinds.items()) if kinds else "none"
    if kinds is None:
        kinds_text = "unknown"
    pretrained = data.get("image_weights_pretrained")
    pretrained_text = {True: "yes (local ResNet-50 weights)", False: "no (random initialisation)"}.get(
        pretrained, "unknown"
    )
    time_context = data.get("time_context")
    time_text = {True: "yes (review timestamps)", False: "no (the dump has no timestamps)"}.get(
        time_context, "unknown"
    )
    paper = report["paper"]
    return [
        ("dataset", str(data.get("dataset") or "unknown")),
        ("users", num("users")),
        ("evaluated users", num("eval_users")),
        ("items", num("items")),
        ("interactions", num("interactions")),
        ("sequence length (mean / max)", f"{_fmt(data.get('avg_seq_len'), 1)} / {num('max_seq_len')}"),
        ("attribute kinds (vocabulary size)", kinds_text),
        ("item features the models read", str(data.get("model_inputs") or "unknown")),
        ("items with an image", num("items_with_image")),
        ("image weights pretrained", pretrained_text),
        ("time context", time_text),
        ("paper dataset", f"{paper['dataset'] or 'none'} — {paper['match']}"),
        ("data fingerprint", f"`{data.get('fingerprint') or 'unknown'}`"),
    ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _plain_tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """The report's text tables as (title, header, rows, caption), shared by markdown and HTML:
    paired tests, training, ingest and quarantine, warnings."""
    from models.significance import format_p

    tables = []
    comparisons = report.get("comparisons") or []
    rows = [
        [
            c["protocol"],
            model_label(c["model"]),
            model_label(c["baseline"]),
            _fmt(c["value_model"]),
            _fmt(c["value_baseline"]),
            f"{c['diff']:+.4f} ({c['ci_low']:+.4f} to {c['ci_high']:+.4f})",
            format_p(c["p_value"], c.get("n_perm")),
            c["verdict"],
        ]
        for c in comparisons
    ]
    tables.append(
        (
            "Paired tests: ConvRec against every other model (test NDCG@10)",
            ["protocol", "model", "against", "model", "against", "difference (95 % CI)", "p", "verdict"],
            rows,
            "Same users, per-user NDCG@10; two-sided sign-flip permutation test. \"better\" / \"worse\" need p < 0.05."
            if rows
            else "No paired test: ConvRec and at least one other model must be evaluated together.",
        )
    )
    rows = [
        [
            t["label"]
            + (f" (ensemble of {t['ensemble_size']} seeds)" if t.get("ensemble_size", 1) > 1 else ""),
            "–" if t["parameters"] is None else f"{int(t['parameters']):,}",
            "–"
            if t["best_epoch"] is None
            else (
                " / ".join(map(str, t["member_epochs"])) if t.get("member_epochs") else str(t["best_epoch"])
            )
            + (f" (sampled-100: {t['sampled_100_epoch']})" if t.get("sampled_100_epoch") is not None else ""),
            str(t["epochs"]),
            _duration(t["train_time_s"]),
            str(t["stopped_by"] or "–"),
            "yes" if t["still_improving"] else "no",
            f"`{t['trained_in_run']}`" if t.get("trained_in_run") else "–",
        ]
        for t in report.get("training") or []
    ]
    tables.append(
        (
            "Training",
            [
                "model",
                "parameters",
                "best epoch",
                "epochs",
                "training time",
                "stopped by",
                "still improving",
                "trained in run",
            ],
            rows,
            "Training time: the epochs' seconds from history.json (resumed epochs included, validation included)."
            " An ensemble of seeds shows each member's best epoch, and its first member's epochs and time (the"
            " members train side by side on a CPU; each keeps its own history.json in `member_<i>/`).",
        )
    )
    ingest = (report.get("data") or {}).get("ingest") or {}
    rows = [
        [key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value)]
        for key, value in ingest.items()
        if key != "quarantine"
    ]
    rows += [
        [f"quarantined ({q['stage']}): {q['reason']}", f"{int(q['rows']):,}"]
        for q in ingest.get("quarantine") or []
    ]
    tables.append(
        (
            "Ingest and quarantine",
            ["what", "count"],
            rows,
            "Quarantined records are in the `quarantine` table with the raw line and the reason."
            if rows
            else "Ingest counts unknown (no ingest tables in DuckDB).",
        )
    )
    warnings = report.get("warnings") or []
    tables.append(
        (
            "Warnings of this run",
            ["step", "warning"],
            [[w.get("step") or "-", w["message"]] for w in warnings],
            "Every warning the run logged." if warnings else "The run logged no warning.",
        )
    )
    return tables


def _md_plain(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], plots: dict[str, bytes] | None = None) -> str:
    """The report as markdown, plots embedded as base64 PNG (for ``dg.MetadataValue.md``)."""
    plots = plots or {}
    tables = report["tables"]
    paper = report["paper"]
    out = [f"# {report['title']}", ""]
    out.append(f"run `{report.get('run_id') or '-'}` · {report.get('generated_at') or ''}")
    out.append("")
    out += [f"- {line}" for line in report["findings"]] + [""]
    out.append("## Test split, all users — both protocols")
    out.append("")
    extra = report["paper_rows"]
    out.append(
        _md_table(tables["headline"], _headline_header(tables["headline"]["columns"]), extra, with_ci=True)
    )
    if extra:
        out.append("")
        sources = sorted({c["source"] for r in extra for c in r["cells"] if c})
        out.append(f"*Published ({paper['dataset']}; {paper['match']}): " + "; ".join(sources) + "*")
    out.append("")
    out.append("Bold: best of our models. Brackets: 95 % bootstrap interval over users.")
    for protocol in PROTOCOLS:
        out += ["", f"## {PROTOCOL_TITLES[protocol]}", ""]
        out.append(_md_table(tables[protocol], [m for _, m in tables[protocol]["columns"]]))
    out += ["", "## Validation split, all users", ""]
    out.append(_md_table(tables["headline_valid"], _headline_header(tables["headline_valid"]["columns"])))
    out += ["", "## NDCG@10 by user group (test)", ""]
    out.append(
        _md_table(
            tables["user_groups"],
            [f"{m.split(' ')[1]} {p}" for p, m in tables["user_groups"]["columns"]],
            with_ci=False,
        )
    )
    for title, header, rows, caption in _plain_tables(report):
        out += ["", f"## {title}", ""]
        if rows:
            out += [_md_plain(header, rows), ""]
        out.append(f"*{caption}*")
    for name, png in plots.items():
        out += ["", f"## {PLOT_TITLES.get(name, name)}", "", f"![{name}]({_data_uri(png)})"]
    out += ["", "## Data", ""]
    out += [f"- **{k}**: {v}" for k, v in _data_items(report)]
    out += ["", "## How to read this", ""]
    out += [f"- {line}" for line in report["notes"]]
    if report.get("config"):
        lines = []
        for section, value in report["config"].items():
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                lines += [f"{section}.{key}: {json.dumps(v, sort_keys=True)}" for key, v in value.items()]
            else:
                lines.append(f"{section}: {json.dumps(value, sort_keys=True)}")
        out += ["", "## Config", "", "```", *lines, "```"]
    return "\n".join(out) + "\n"


# --- HTML (the standalone file) --------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
 max-width:1180px;margin:24px auto;padding:0 24px;line-height:1.45;font-size:14px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;font-size:12px}.meta code{font-size:11px}
table{border-collapse:collapse;margin:6px 0 4px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:right;white-space:nowrap}
th{background:#f6f8fa;font-weight:600;font-size:12px}th.group{text-align:center;border-bottom:1px solid #d0d7de}
td.model,th.model{text-align:left}tr.paper td{color:#57606a;font-style:italic;background:#fbfbfc}
tr.sep td{border-bottom:2px solid #d0d7de;padding:0}
.ci{color:#6e7781;font-size:11px;display:block}strong{color:#0b5cad}
.caption{color:#57606a;font-size:12px;margin:2px 0 10px}
ul.findings li{margin:2px 0}
img{max-width:100%;border:1px solid #eaeef2;border-radius:4px;margin:6px 0}
dl{display:grid;grid-template-columns:max-content auto;gap:3px 16px;margin:6px 0}dt{color:#57606a}dd{margin:0}
details pre{background:#f6f8fa;padding:10px;border-radius:4px;font-size:11px;overflow:auto;max-height:480px}
th.start,td.start{border-left:1px solid #d0d7de}
.tables{display:flex;flex-wrap:wrap;gap:0 32px}
table.plain td,table.plain th{text-align:left;white-space:normal}
"""


def _html_cell(cell: dict | None, with_ci: bool, css: str = "") -> str:
    if cell is None:
        return f"<td{css}>–</td>"
    text = html.escape(_fmt(cell["value"]))
    if cell.get("best"):
        text = f"<strong>{text}</strong>"
    if with_ci and cell.get("ci_low") is not None:
        text += f'<span class="ci">{_fmt(cell["ci_low"], 3)}–{_fmt(cell["ci_high"], 3)}</span>'
    return f"<td{css}>{text}</td>"


def _html_table(
    table: dict,
    header: list[str],
    groups: list[tuple[str, int]] | None = None,
    extra_rows: list[dict] | None = None,
    with_ci: bool = False,
) -> str:
    starts, at = set(), 0  # first column of every group gets a divider
    for _, n in groups or []:
        starts.add(at)
        at += n
    css = [' class="start"' if j in starts and j else "" for j in range(len(header))]
    parts = ["<table>", "<thead>"]
    if groups:
        parts.append(
            '<tr><th class="model"></th>'
            + "".join(
                f'<th class="group{" start" if i else ""}" colspan="{n}">{html.escape(g)}</th>'
                for i, (g, n) in enumerate(groups)
            )
            + "</tr>"
        )
    parts.append(
        '<tr><th class="model">model</th>'
        + "".join(f"<th{c}>{html.escape(h)}</th>" for h, c in zip(header, css))
        + "</tr>"
    )
    parts += ["</thead>", "<tbody>"]
    for row in table["rows"]:
        cells = "".join(_html_cell(cell, with_ci, c) for cell, c in zip(row["cells"], css))
        parts.append(f'<tr><td class="model">{html.escape(row["label"])}</td>{cells}</tr>')
    if extra_rows:
        parts.append(f'<tr class="sep"><td colspan="{len(header) + 1}"></td></tr>')
        for row in extra_rows:
            cells = "".join(
                f"<td{c}>–</td>" if cell is None else f"<td{c}>{cell['value']:.3f}</td>"
                for cell, c in zip(row["cells"], css)
            )
            parts.append(f'<tr class="paper"><td class="model">{html.escape(row["label"])}</td>{cells}</tr>')
    parts += ["</tbody>", "</table>"]
    return "\n".join(parts)


def _protocol_groups(columns: list[list[str]]) -> list[tuple[str, int]]:
    groups: list[tuple[str, int]] = []
    for protocol, _ in columns:
        if groups and groups[-1][0] == protocol:
            groups[-1] = (protocol, groups[-1][1] + 1)
        else:
            groups.append((protocol, 1))
    return groups


def render_html(report: dict[str, Any], plots: dict[str, bytes] | None = None) -> str:
    """A standalone HTML page: inline CSS, plots as data URIs, nothing fetched."""
    plots = plots or {}
    tables = report["tables"]
    paper = report["paper"]
    esc = html.escape
    body = [f"<h1>{esc(report['title'])}</h1>"]
    data = report["data"]
    body.append(
        f'<div class="meta">dataset <b>{esc(str(data.get("dataset") or "unknown"))}</b>'
        f' · run <code>{esc(str(report.get("run_id") or "-"))}</code>'
        f' · {esc(str(report.get("generated_at") or ""))}'
        f' · data fingerprint <code>{esc(str(data.get("fingerprint") or "unknown"))}</code></div>'
    )
    if report["findings"]:
        body.append(
            '<ul class="findings">' + "".join(f"<li>{esc(s)}</li>" for s in report["findings"]) + "</ul>"
        )

    body.append("<h2>Test split, all users — both protocols</h2>")
    headline = tables["headline"]
    body.append(
        _html_table(
            headline,
            [m for _, m in headline["columns"]],
            _protocol_groups(headline["columns"]),
            report["paper_rows"],
            with_ci=True,
        )
    )
    caption = "Bold: best of our models. Small print: 95 % bootstrap interval over users."
    if report["paper_rows"]:
        sources = sorted({c["source"] for r in report["paper_rows"] for c in r["cells"] if c})
        caption += (
            f" Italic rows: published numbers for {esc(paper['dataset'])} ({esc(paper['match'])}): "
            + esc("; ".join(sources))
            + "."
        )
    else:
        caption += f" No published numbers shown: {esc(paper['match'])}."
    body.append(f'<p class="caption">{caption}</p>')

    for protocol in PROTOCOLS:
        body.append(f"<h2>{esc(PROTOCOL_TITLES[protocol])}</h2>")
        body.append(_html_table(tables[protocol], [m for _, m in tables[protocol]["columns"]]))
        body.append('<p class="caption">Test split, all users.</p>')

    body.append('<h2>Validation split and user groups</h2><div class="tables"><div>')
    valid = tables["headline_valid"]
    body.append(_html_table(valid, [m for _, m in valid["columns"]], _protocol_groups(valid["columns"])))
    body.append('<p class="caption">Validation split, all users.</p></div><div>')
    groups = tables["user_groups"]
    body.append(
        _html_table(
            groups,
            [GROUP_LABELS[m.split(" ")[1]] for _, m in groups["columns"]],
            _protocol_groups(groups["columns"]),
        )
    )
    body.append('<p class="caption">Test NDCG@10 by user group (paper, Appendix B).</p></div></div>')

    for title, header, rows, caption in _plain_tables(report):
        body.append(f"<h2>{esc(title)}</h2>")
        if rows:
            body.append(
                '<table class="plain"><thead><tr>'
                + "".join(f"<th>{esc(h)}</th>" for h in header)
                + "</tr></thead><tbody>"
            )
            body += [
                "<tr>" + "".join(f"<td>{esc(cell.strip('`'))}</td>" for cell in row) + "</tr>" for row in rows
            ]
            body.append("</tbody></table>")
        body.append(f'<p class="caption">{esc(caption)}</p>')
    for name, png in plots.items():
        body.append(f"<h2>{esc(PLOT_TITLES.get(name, name))}</h2>")
        body.append(f'<img alt="{esc(name)}" src="{_data_uri(png)}">')

    body.append("<h2>Data</h2><dl>")
    for key, value in _data_items(report):
        body.append(f"<dt>{esc(key)}</dt><dd>{esc(value.strip('`'))}</dd>")
    body.append("</dl>")
    body.append(
        "<h2>How to read this</h2><ul>" + "".join(f"<li>{esc(s)}</li>" for s in report["notes"]) + "</ul>"
    )
    if report.get("config"):
        body.append(
            "<h2>Config</h2><details><summary>hyper-parameters and settings of every model and of the evaluation</summary>"
        )
        body.append(f"<pre>{esc(json.dumps(report['config'], indent=1, sort_keys=True))}</pre></details>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(report['title'])}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(
    report: dict[str, Any],
    out_dir: Path,
    plots: dict[str, bytes] | None = None,
    stem: str = "evaluation_report",
) -> dict[str, Path]:
    """Write ``<stem>.html`` and ``<stem>.json`` into ``out_dir`` (atomically: temp file + rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / f"{stem}.html", "json": out_dir / f"{stem}.json"}
    contents = {
        "html": render_html(report, plots),
        "json": json.dumps(report, indent=1, sort_keys=False, allow_nan=False),
    }
    for kind, path in paths.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(contents[kind], encoding="utf-8")
        tmp.replace(path)
    return paths
