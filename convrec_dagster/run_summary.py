"""The block that ends every run's console output (pure Python, no Dagster).

Steps run in processes of their own, so what the summary needs is noted as it happens, one JSON
line per note, in a file per run (``notes_path``): materialized metadata (metrics, the chosen
model, the report's path, ingest counts), warnings and step failures. ``convrec_dagster.console``
writes the notes from every process and prints :func:`summary_text` when the run ends.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from models.registry import MODELS

WIDTH = 96
MODEL_LABELS = {m.name: m.label for m in MODELS}  # the registry's order and labels
MODEL_ORDER = tuple(MODEL_LABELS)
NOTES_MAX_AGE_S = 2 * 24 * 3600
GENERIC_ADVICE = (
    "What to do: the step's log lines above say what it was doing; run again with "
    "CONVREC_LOG_LEVEL=DEBUG for the traceback."
)


def notes_dir() -> Path:
    return (
        Path(tempfile.gettempdir()) / f"convrec-run-notes-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )


def notes_path(run_id: str) -> Path:
    return notes_dir() / f"{run_id}.jsonl"


def add_note(run_id: str | None, note: dict) -> None:
    """Append one note for ``run_id`` (never raises: the console must not fail a run)."""
    if not run_id:
        return
    try:
        path = notes_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"t": time.time(), **note}, default=str) + "\n")
    except (OSError, TypeError, ValueError):
        pass


def read_notes(run_id: str) -> list[dict]:
    try:
        lines = notes_path(run_id).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    notes = []
    for line in lines:
        try:
            notes.append(json.loads(line))
        except ValueError:
            continue
    return notes


def drop_notes(run_id: str) -> None:
    """Remove this run's notes, and notes of runs that ended long ago without a summary."""
    try:
        notes_path(run_id).unlink(missing_ok=True)
        now = time.time()
        for old in notes_dir().glob("*.jsonl"):
            if now - old.stat().st_mtime > NOTES_MAX_AGE_S:
                old.unlink(missing_ok=True)
    except OSError:
        pass


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _latest(notes: list[dict], asset: str) -> dict:
    found = [n for n in notes if n.get("kind") == "materialization" and n.get("asset") == asset]
    return found[-1].get("metadata") or {} if found else {}


def _short(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metrics_lines(metrics: dict) -> list[str]:
    if not metrics:
        return []
    head = (
        f"  {'test, all users':<20}{'sampled_100 HR@10':>18}{'NDCG@10':>9}  {'full HR@10':>11}{'NDCG@10':>9}"
    )
    lines = ["models", head]
    for model in [m for m in MODEL_ORDER if m in metrics] + sorted(set(metrics) - set(MODEL_ORDER)):
        by = metrics[model]

        def cell(protocol: str, metric: str, by: dict = by) -> str:
            value = (by.get(protocol) or {}).get(metric)
            return "–" if value is None else f"{value:.4f}"

        lines.append(
            f"  {MODEL_LABELS.get(model, model):<20}{cell('sampled_100', 'HR@10'):>18}"
            f"{cell('sampled_100', 'NDCG@10'):>9}  {cell('full', 'HR@10'):>11}{cell('full', 'NDCG@10'):>9}"
        )
    return lines


def _comparison_lines(comparisons: list) -> list[str]:
    from models.significance import format_p

    lines = []
    for c in comparisons or []:
        p_text = format_p(c.get("p_value"), c.get("n_perm"))
        verdict = c.get("verdict") or "?"
        lines.append(
            f"  {c.get('protocol')}: ConvRec vs {MODEL_LABELS.get(c.get('baseline'), c.get('baseline'))}: "
            f"{verdict} ({c.get('value_model', 0):.4f} vs {c.get('value_baseline', 0):.4f}, {p_text})"
        )
    return ["paired tests (test NDCG@10, same users)"] + lines if lines else []


def _training_lines(notes: list[dict]) -> list[str]:
    lines = []
    for model in MODEL_ORDER:
        md = _latest(notes, f"{model}_model")
        if not md:
            continue
        reused = md.get("reused_from_run")
        if reused and reused != "no":
            lines.append(
                f"  {MODEL_LABELS[model]}: reused the model trained in run {reused} (unchanged config and "
                "data; `retrain: true` trains again)"
            )
            continue
        if not md.get("epochs_total") or (md.get("best_epoch") == 0 and md.get("epochs_total") == 1):
            lines.append(f"  {MODEL_LABELS[model]}: nothing to train (item counts)")
            continue
        parts = [f"best epoch {md.get('best_epoch')} of {md.get('epochs_total')}"]
        if md.get("train_time_s") is not None:
            parts.append(f"{fmt_duration(md.get('train_time_s'))} of training")
        if md.get("still_improving_at_end"):
            parts.append("still improving at its last epoch")
        head = ""
        if (md.get("ensemble_size") or 1) > 1:  # the figures above are member 0's (history.json)
            how = "side by side" if md.get("ensemble_side_by_side") else "one after another"
            head = f"an ensemble of {md['ensemble_size']} seeds trained {how}; member 0: "
        lines.append(f"  {MODEL_LABELS[model]}: {head}" + ", ".join(parts))
    return ["training"] + lines if lines else []


def _data_line(notes: list[dict]) -> list[str]:
    reviews, items, interactions = (
        _latest(notes, "reviews"),
        _latest(notes, "items"),
        _latest(notes, "interactions"),
    )
    if not reviews:
        return []
    parts = [
        f"{int(reviews.get('records_read', 0)):,} review lines read, {int(reviews.get('records_kept', 0)):,} kept"
    ]
    quarantined = int(reviews.get("quarantined") or 0) + int(items.get("quarantined") or 0)
    reasons: dict = {}
    for md in (reviews, items):
        for reason, n in (md.get("quarantined_by_reason") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    parts.append(
        f"{quarantined:,} quarantined"
        + (f" ({', '.join(f'{r}: {n:,}' for r, n in reasons.items())})" if reasons else "")
    )
    if interactions.get("users") is not None:
        parts.append(
            f"{int(interactions['users']):,} users x {int(interactions.get('items') or 0):,} items after filtering"
        )
    return ["data: " + "; ".join(parts)]


def failure_lines(notes: list[dict], debug: bool) -> list[str]:
    failures = [n for n in notes if n.get("kind") == "failure"]
    if not failures:
        return [
            "no step failure was recorded (the run was stopped or failed to start); run again with "
            "CONVREC_LOG_LEVEL=DEBUG for every event"
        ]
    first = failures[0]
    lines = [f"failed step: {first.get('step')}"]
    message = str(first.get("message") or "").rstrip()
    if "what to do" not in message.lower():
        message += "\n" + GENERIC_ADVICE
    lines += ["  " + line for line in message.splitlines()]
    if debug and first.get("traceback"):
        lines += ["traceback:"] + ["  " + line for line in str(first["traceback"]).rstrip().splitlines()]
    others = sorted({n.get("step") for n in failures[1:]} - {first.get("step")})
    if others:
        lines.append(f"also failed: {', '.join(map(str, others))}")
    skipped = sorted({str(n.get("step")) for n in notes if n.get("kind") == "skipped"})
    if skipped:
        lines.append(f"{len(skipped)} step(s) after it did not run")
    return lines


def summary_text(
    notes: list[dict], *, status: str, job: str | None, run_id: str, wall_s: float | None, debug: bool = False
) -> str:
    """The end-of-run block: status and wall time; on success each model's test HR@10 / NDCG@10
    under both protocols, the paired tests, the recommending model and why, training, data and
    quarantine counts and the report's path; on failure the failing step's message with what to do
    (the traceback only when ``debug``); and the run's warnings."""
    ok = status == "SUCCESS"
    rule = "=" * WIDTH
    lines = [
        rule,
        f"convrec: {job or 'run'} {'SUCCEEDED' if ok else 'FAILED'} in {fmt_duration(wall_s)} (run {run_id})",
        "-" * WIDTH,
    ]
    if not ok:
        lines += failure_lines(notes, debug)
    metrics = _latest(notes, "evaluation_metrics")
    lines += _metrics_lines(metrics.get("test_metrics") or {})
    lines += _comparison_lines(metrics.get("comparisons") or [])
    rec = _latest(notes, "recommendations")
    if rec.get("model"):
        label = MODEL_LABELS.get(rec["model"], rec["model"])
        lines.append(
            f"recommendations: {label}, {rec.get('k', '?')} per user ({rec.get('selected_by', 'reason unknown')})"
        )
    lines += _training_lines(notes)
    lines += _data_line(notes)
    report = _latest(notes, "evaluation_report")
    if report.get("html"):
        lines.append(f"report: {report['html']}")
    warnings = [n for n in notes if n.get("kind") == "warning"]
    if warnings:
        lines.append(f"warnings ({len(warnings)}):")
        lines += [f"  - {n.get('step') or 'run'}: {_short(n.get('message', ''))}" for n in warnings[:12]]
        if len(warnings) > 12:
            lines.append(
                f"  ... and {len(warnings) - 12} more (all of them are in the report and the UI's run log)"
            )
    else:
        lines.append("warnings: none")
    lines.append(rule)
    return "\n".join(lines)
