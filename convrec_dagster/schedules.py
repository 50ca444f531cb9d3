"""Scheduled retraining: `weekly_retrain` runs the `retrain` job (weekly by default).

``CONVREC_RETRAIN_CRON`` (default ``0 3 * * 1``, Mondays 03:00) and ``CONVREC_RETRAIN_TIMEZONE``
(default ``UTC``) change when. Like every Dagster schedule it ships stopped: turn it on in the UI
(Automation) or with ``dagster schedule start weekly_retrain``.
"""

from __future__ import annotations

import os

import dagster as dg

from convrec_dagster.jobs import retrain

RETRAIN_CRON_ENV = "CONVREC_RETRAIN_CRON"
RETRAIN_TIMEZONE_ENV = "CONVREC_RETRAIN_TIMEZONE"
DEFAULT_RETRAIN_CRON = "0 3 * * 1"
# The asset whose existence means "the data is prepared": retraining reads it and those beside it.
PREPARED_DATA_ASSET = dg.AssetKey("sequences")


def retrain_cron() -> str:
    """The retrain cron string: ``CONVREC_RETRAIN_CRON`` or weekly."""
    return os.environ.get(RETRAIN_CRON_ENV, "").strip() or DEFAULT_RETRAIN_CRON


def retrain_timezone() -> str:
    return os.environ.get(RETRAIN_TIMEZONE_ENV, "").strip() or "UTC"


def build_retrain_schedule() -> dg.ScheduleDefinition:
    """The schedule, built from the environment at load time (tests call this after setenv)."""
    cron, timezone = retrain_cron(), retrain_timezone()

    def weekly_retrain(context: dg.ScheduleEvaluationContext):
        if context.instance.get_latest_materialization_event(PREPARED_DATA_ASSET) is None:
            return dg.SkipReason(
                "No prepared data yet: `sequences` has never been materialized on this instance. "
                "Run `full_pipeline` once (or turn on the `raw_dump_sensor`); retraining needs it."
            )
        scheduled = context.scheduled_execution_time
        stamp = scheduled.isoformat() if scheduled is not None else "manual"
        return dg.RunRequest(
            run_key=f"retrain-{stamp}",
            tags={"convrec/trigger": "schedule", "convrec/scheduled_for": stamp},
        )

    try:
        return dg.schedule(
            name="weekly_retrain",
            job=retrain,
            cron_schedule=cron,
            execution_timezone=timezone,
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description=(
                "Retrains and re-evaluates every model on the prepared data (the `retrain` job). "
                f"Cron from {RETRAIN_CRON_ENV} (default {DEFAULT_RETRAIN_CRON!r}: Mondays 03:00), "
                f"time zone from {RETRAIN_TIMEZONE_ENV} (default UTC)."
            ),
        )(weekly_retrain)
    except dg.DagsterInvalidDefinitionError as err:
        raise dg.DagsterInvalidDefinitionError(
            f"{RETRAIN_CRON_ENV}={cron!r} / {RETRAIN_TIMEZONE_ENV}={timezone!r} cannot make a "
            f"schedule: {err}. Use five cron fields (minute hour day-of-month month day-of-week), "
            f"e.g. {DEFAULT_RETRAIN_CRON!r}, and an IANA time zone such as 'Europe/Berlin'; or "
            "unset both variables for the weekly default."
        ) from err


weekly_retrain = build_retrain_schedule()
