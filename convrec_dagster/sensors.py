"""`raw_dump_sensor`: a new or changed dump file in ``CONVREC_RAW_DIR`` requests a `full_pipeline` run.

The cursor is the JSON fingerprint of the folder's dump files (name → size, mtime) as of the last
run request, so an unchanged folder requests nothing and a re-copied or appended file requests a
new run. Files modified less than ``CONVREC_SENSOR_SETTLE_SECONDS`` (default 60) ago are taken to
be still copying: the sensor waits for them instead of starting a run on half a file.

Ships STOPPED, like Dagster's own sensors: turned on, it starts a full pipeline (hours of training
on a real dump) for the files already in the folder, which should be a decision, not a side effect
of `dagster dev`. Turn it on in the UI (Automation) or with ``dagster sensor start raw_dump_sensor``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import dagster as dg

from convrec_dagster.jobs import full_pipeline
from convrec_dagster.resources import ConvRecPaths

SETTLE_SECONDS_ENV = "CONVREC_SENSOR_SETTLE_SECONDS"
DEFAULT_SETTLE_SECONDS = 60.0
# Partial downloads and editor leftovers are not dump files.
IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".swp", "~")

Fingerprint = dict[str, dict[str, int]]


def settle_seconds() -> float:
    value = os.environ.get(SETTLE_SECONDS_ENV, "").strip()
    if not value:
        return DEFAULT_SETTLE_SECONDS
    try:
        return max(0.0, float(value))
    except ValueError as err:
        raise ValueError(
            f"{SETTLE_SECONDS_ENV}={value!r} is not a number of seconds; set e.g. 60, or unset it."
        ) from err


def dump_fingerprint(raw_dir: Path) -> Fingerprint:
    """Name → {size, mtime_ns} of every dump file directly in ``raw_dir`` (hidden files and
    partial downloads left out; sub-folders such as image folders are not dump files)."""
    fingerprint: Fingerprint = {}
    for entry in sorted(raw_dir.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES):
            continue
        if not entry.is_file():
            continue
        stat = entry.stat()
        fingerprint[entry.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return fingerprint


def fingerprint_key(fingerprint: Fingerprint) -> str:
    """A short, stable run key for one state of the dump folder."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return "raw-dump-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _read_cursor(context: dg.SensorEvaluationContext) -> Fingerprint:
    if not context.cursor:
        return {}
    try:
        previous = json.loads(context.cursor)
    except json.JSONDecodeError:
        context.log.warning(f"Unreadable cursor {context.cursor[:80]!r}; treating every file as new.")
        return {}
    return previous if isinstance(previous, dict) else {}


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dg.sensor(
    name="raw_dump_sensor",
    job=full_pipeline,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Watches the raw dump folder (CONVREC_RAW_DIR) and requests a full_pipeline run when a "
        "dump file is added or changed (by name, size and modification time)."
    ),
)
def raw_dump_sensor(context: dg.SensorEvaluationContext, paths: ConvRecPaths) -> dg.SensorResult:
    if paths.is_embedded_sample():
        return dg.SensorResult(
            skip_reason=(
                "No raw dump folder is configured (CONVREC_RAW_DIR is unset), so the pipeline uses "
                "the embedded sample, which never changes. Set CONVREC_RAW_DIR to a folder of "
                "Amazon dumps to watch it."
            )
        )
    raw_dir = paths.raw_path()
    if not raw_dir.is_dir():
        return dg.SensorResult(
            skip_reason=f"The raw dump folder {raw_dir} does not exist yet (CONVREC_RAW_DIR). "
            "Create it and copy the dump files into it."
        )
    current = dump_fingerprint(raw_dir)
    if not current:
        return dg.SensorResult(
            skip_reason=f"The raw dump folder {raw_dir} holds no dump files yet "
            "(hidden files and partial downloads are ignored)."
        )

    settle = settle_seconds()
    now_ns = time.time_ns()
    copying = sorted(name for name, stat in current.items() if (now_ns - stat["mtime_ns"]) / 1e9 < settle)
    if copying:
        return dg.SensorResult(
            skip_reason=f"Waiting for {_short_list(copying)} in {raw_dir} to settle (modified "
            f"less than {settle:g} s ago, probably still copying); will look again."
        )

    previous = _read_cursor(context)
    added = sorted(set(current) - set(previous))
    changed = sorted(name for name in current if name in previous and previous[name] != current[name])
    removed = sorted(set(previous) - set(current))
    cursor = json.dumps(current, sort_keys=True)

    if not added and not changed:
        if removed:
            return dg.SensorResult(
                skip_reason=f"{_short_list(removed)} removed from {raw_dir}; removing files alone "
                "does not start a run (the remaining files were already processed).",
                cursor=cursor,
            )
        return dg.SensorResult(
            skip_reason=f"No new or changed dump files in {raw_dir} ({len(current)} files, "
            "unchanged since the last run request)."
        )

    context.log.info(
        f"Dump folder {raw_dir} changed: added {added or 'none'}, changed {changed or 'none'}, "
        f"removed {removed or 'none'}; requesting full_pipeline."
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=fingerprint_key(current),
                # pins the folder the sensor saw, visible in the run's config in the UI
                run_config={"resources": {"paths": {"config": {"raw_dir": str(raw_dir)}}}},
                tags={
                    "convrec/trigger": "raw_dump_sensor",
                    "convrec/raw_dir": str(raw_dir),
                    "convrec/new_or_changed": _short_list(added + changed),
                },
            )
        ],
        cursor=cursor,
    )
