"""The console a person reads: `dagster job execute`, `make run` and the UI's run logs.

The Definitions replace Dagster's default ``console`` logger with this one. At ``INFO`` (the
default) it prints what the steps say (progress, estimates, warnings), one line when a step starts
and ends, a one-line note when a step fails, and a summary block when the run ends
(``convrec_dagster.run_summary``): status, wall time, each model's test metrics, the model chosen
for recommendations and why, the report's path, quarantine counts, warnings; for a failed run, the
failing step's message with what to do, once. ``DEBUG`` prints every Dagster event as well, and the
failure's traceback. One setting away:

- ``CONVREC_LOG_LEVEL=DEBUG`` in the environment (``make run CONVREC_LOG_LEVEL=DEBUG``), or
- ``loggers: {console: {config: {log_level: DEBUG}}}`` in the run config.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from datetime import datetime

import dagster as dg

from convrec_dagster import run_summary

LOG_LEVEL_ENV = "CONVREC_LOG_LEVEL"
_SKIPPED = re.compile(r"Dependencies for step \S+ (failed|were not executed): .*Not executing\.$", re.DOTALL)
# metadata worth keeping for the summary: numbers, short text, paths, small JSON (not markdown/plots)
_KEEP_JSON_CHARS = 20_000
# dagster's wrappers around the exception a step raised; the message the user needs is their cause
_WRAPPERS = {
    "DagsterExecutionStepExecutionError",
    "DagsterResourceFunctionError",
    "DagsterUserCodeExecutionError",
    "DagsterExecutionInterruptedError",
}


def _level(value: str | None) -> int:
    name = (value or os.environ.get(LOG_LEVEL_ENV) or "INFO").strip().upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def failure_message(error) -> tuple[str, str]:
    """(the message a person needs, the full text with tracebacks) of a SerializableErrorInfo."""
    full = error.to_string() if hasattr(error, "to_string") else str(error)
    inner = error
    while getattr(inner, "cls_name", None) in _WRAPPERS and getattr(inner, "cause", None) is not None:
        inner = inner.cause
    message = (getattr(inner, "message", None) or str(inner)).strip()
    head, sep, rest = message.partition(": ")
    if sep and "." in head and " " not in head:  # "dagster._core.definitions.events.Failure: text"
        cls = head.rsplit(".", 1)[1]
        message = rest if cls == "Failure" else f"{cls}: {rest}"
    return message, full


def _metadata(materialization) -> dict:
    out = {}
    for key, value in (materialization.metadata or {}).items():
        raw = getattr(value, "value", value)
        if isinstance(value, dg.MarkdownMetadataValue):
            continue
        if isinstance(raw, (int, float, str, bool)) or raw is None:
            out[key] = raw
        elif isinstance(raw, (dict, list)):
            import json

            text = json.dumps(raw, default=str)
            if len(text) <= _KEEP_JSON_CHARS:
                out[key] = json.loads(text)
        elif hasattr(value, "path"):
            out[key] = str(value.path)
    return out


class ConsoleHandler(logging.Handler):
    """Prints readable lines at the configured level and notes what the run summary needs."""

    def __init__(self, level: int, stream=None):
        super().__init__(logging.DEBUG)  # every record is noted; ``self.show`` decides what is printed
        self.show = level
        self.stream = stream
        self.started = time.time()

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            meta = getattr(record, "dagster_meta", None) or {}
            event = meta.get("dagster_event")
            run_id = meta.get("run_id")
            step = meta.get("step_key")
            message = meta.get("orig_message") or record.getMessage()
            when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
            if event is None:
                self._user_line(record, run_id, step, message, when)
            else:
                self._event(record, event, meta, run_id, step, message, when)
        except Exception:  # the console must never fail a run
            self.handleError(record)

    def _user_line(self, record, run_id, step, message, when) -> None:
        if _SKIPPED.match(message):  # the executor's line for each step downstream of a failure
            run_summary.add_note(run_id, {"kind": "skipped", "step": step})
            if self.show <= logging.DEBUG:
                self._write(f"{when} {step or 'run'} | {message}")
            return
        if record.levelno >= logging.WARNING:
            run_summary.add_note(run_id, {"kind": "warning", "step": step, "message": message})
        if record.levelno >= self.show:
            level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
            self._write(f"{when} {step or 'run'} | {level}{message}")

    def _event(self, record, event, meta, run_id, step, message, when) -> None:
        kind = event.event_type.name  # RUN_START, not its stored value PIPELINE_START
        debug = self.show <= logging.DEBUG
        data = event.event_specific_data
        if kind == "ASSET_MATERIALIZATION":
            materialization = data.materialization
            run_summary.add_note(
                run_id,
                {
                    "kind": "materialization",
                    "step": step,
                    "asset": materialization.asset_key.to_user_string(),
                    "metadata": _metadata(materialization),
                },
            )
        elif kind == "ASSET_CHECK_EVALUATION" and not data.passed:
            run_summary.add_note(
                run_id,
                {
                    "kind": "warning",
                    "step": step,
                    "message": f"asset check {data.asset_check_key.to_user_string()} failed",
                },
            )
        elif kind in ("STEP_FAILURE", "STEP_UP_FOR_RETRY"):
            text, full = failure_message(data.error) if getattr(data, "error", None) else (message, message)
            run_summary.add_note(
                run_id,
                {
                    "kind": "failure" if kind == "STEP_FAILURE" else "retry",
                    "step": step,
                    "message": text,
                    "traceback": full,
                },
            )
        elif kind == "RUN_START":
            self.started = record.created
            run_summary.add_note(run_id, {"kind": "start", "job": meta.get("job_name")})

        if debug:
            line = f"{when} {record.levelname:<7} {step or 'run'} | {kind} - {message}"
            if kind in ("RUN_SUCCESS", "RUN_FAILURE"):
                self._summary(run_id, meta.get("job_name"), kind, record.created, debug=True)
                return
            error = getattr(data, "error", None) if data is not None else None
            if error is not None and kind != "STEP_FAILURE":  # the failure's traceback is in the summary
                line += "\n" + failure_message(error)[1]
            self._write(line)
            return
        if kind == "RUN_START":
            self._write(
                f"{when} convrec: run {run_id} of {meta.get('job_name')} started (console at "
                f"{logging.getLevelName(self.show)}; {LOG_LEVEL_ENV}=DEBUG prints every event)"
            )
        elif kind == "STEP_START":
            self._write(f"{when} {step} | started")
        elif kind == "STEP_SUCCESS":
            seconds = getattr(data, "duration_ms", None)
            self._write(
                f"{when} {step} | done"
                + (f" in {run_summary.fmt_duration(seconds / 1000)}" if seconds else "")
            )
        elif kind == "STEP_FAILURE":
            self._write(f"{when} {step} | FAILED: what happened and what to do are in the summary below")
        elif kind == "STEP_UP_FOR_RETRY":
            text = failure_message(data.error)[0] if getattr(data, "error", None) else message
            self._write(f"{when} {step} | failed, will retry: {text.splitlines()[0] if text else ''}")
        elif kind in ("RUN_SUCCESS", "RUN_FAILURE"):
            self._summary(run_id, meta.get("job_name"), kind, record.created, debug=False)

    def _summary(self, run_id, job, kind, ended: float, debug: bool) -> None:
        notes = run_summary.read_notes(run_id)
        starts = [n["t"] for n in notes if n.get("kind") == "start"]
        wall = ended - (starts[0] if starts else self.started)
        self._write(
            run_summary.summary_text(
                notes,
                status="SUCCESS" if kind == "RUN_SUCCESS" else "FAILURE",
                job=job,
                run_id=run_id,
                wall_s=wall,
                debug=debug,
            )
        )
        run_summary.drop_notes(run_id)


@dg.logger(
    config_schema={
        # a default value for every field, so that Dagster builds this logger without any run config
        "log_level": dg.Field(
            str,
            is_required=False,
            default_value="",
            description=f"INFO or DEBUG (every Dagster event); empty: ${LOG_LEVEL_ENV}, else INFO",
        ),
    },
    description="convrec's console: readable lines at INFO, a summary block at the end of every run.",
)
def convrec_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    # not logging.getLogger: a fresh logger per run, so handlers never pile up in long-lived processes
    logger = logging.Logger(f"convrec.console.{init_context.run_id or ''}", logging.DEBUG)
    logger.addHandler(ConsoleHandler(_level((init_context.logger_config or {}).get("log_level"))))
    logger.propagate = False
    return logger
