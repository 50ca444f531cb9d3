"""The retrain schedule and the raw-dump sensor, evaluated as the Dagster daemon would evaluate them."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from convrec_dagster.resources import ConvRecPaths
from convrec_dagster.schedules import DEFAULT_RETRAIN_CRON, build_retrain_schedule
from convrec_dagster.sensors import fingerprint_key, raw_dump_sensor

HOUR_AGO = time.time() - 3600


# --- schedule -------------------------------------------------------------------------------------


def test_schedule_defaults_weekly_retrain_and_ships_stopped():
    schedule = build_retrain_schedule()
    assert schedule.name == "weekly_retrain"
    assert schedule.job_name == "retrain"
    assert schedule.cron_schedule == DEFAULT_RETRAIN_CRON == "0 3 * * 1"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_schedule_cron_and_timezone_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONVREC_RETRAIN_CRON", "30 1 * * *")
    monkeypatch.setenv("CONVREC_RETRAIN_TIMEZONE", "Europe/Berlin")
    schedule = build_retrain_schedule()
    assert schedule.cron_schedule == "30 1 * * *"
    assert schedule.execution_timezone == "Europe/Berlin"


def test_invalid_cron_names_the_environment_variable(monkeypatch):
    monkeypatch.setenv("CONVREC_RETRAIN_CRON", "every monday")
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="CONVREC_RETRAIN_CRON='every monday'"):
        build_retrain_schedule()


def test_schedule_requests_retrain_once_data_is_prepared():
    schedule = build_retrain_schedule()
    tick_time = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        before = schedule.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time)
        )
        assert before.run_requests == []
        assert "sequences" in before.skip_message and "full_pipeline" in before.skip_message

        instance.report_runless_asset_event(dg.AssetMaterialization("sequences"))
        after = schedule.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time)
        )
    assert len(after.run_requests) == 1
    request = after.run_requests[0]
    assert request.job_name in (None, "retrain")  # None: the schedule's own job
    assert request.run_key == f"retrain-{tick_time.isoformat()}"
    assert request.tags["convrec/trigger"] == "schedule"


# --- sensor ---------------------------------------------------------------------------------------


@pytest.fixture
def raw_dir(tmp_path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


def _write(path: Path, text: str, mtime: float = HOUR_AGO) -> Path:
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def _tick(raw_dir: Path | str, cursor: str | None = None, home: Path | None = None):
    paths = ConvRecPaths(home=str(home or Path(raw_dir).parent / "home"), raw_dir=str(raw_dir))
    context = dg.build_sensor_context(cursor=cursor, resources={"paths": paths})
    return raw_dump_sensor.evaluate_tick(context)


def test_sensor_targets_full_pipeline_and_ships_stopped():
    assert raw_dump_sensor.job_name == "full_pipeline"
    assert raw_dump_sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_new_file_requests_a_run_and_the_same_file_again_does_not(raw_dir):
    _write(raw_dir / "Magazine_5.json.gz", "x" * 100)

    first = _tick(raw_dir)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    cursor = json.loads(first.cursor)
    assert cursor["Magazine_5.json.gz"]["size"] == 100
    assert request.run_key == fingerprint_key(cursor)
    assert request.tags["convrec/new_or_changed"] == "Magazine_5.json.gz"
    assert request.run_config["resources"]["paths"]["config"]["raw_dir"] == str(raw_dir.resolve())

    again = _tick(raw_dir, cursor=first.cursor)
    assert again.run_requests == []
    assert "No new or changed dump files" in again.skip_message


def test_changed_size_or_mtime_requests_a_new_run(raw_dir):
    dump = _write(raw_dir / "reviews.json", "a" * 10)
    first = _tick(raw_dir)

    _write(dump, "a" * 20)  # appended: size changes
    grown = _tick(raw_dir, cursor=first.cursor)
    assert len(grown.run_requests) == 1
    assert grown.run_requests[0].run_key != first.run_requests[0].run_key

    os.utime(dump, (HOUR_AGO + 60, HOUR_AGO + 60))  # re-copied: same size, new mtime
    touched = _tick(raw_dir, cursor=grown.cursor)
    assert len(touched.run_requests) == 1
    assert touched.run_requests[0].run_key not in {
        first.run_requests[0].run_key,
        grown.run_requests[0].run_key,
    }


def test_added_second_file_names_only_the_new_one(raw_dir):
    _write(raw_dir / "reviews.json", "r")
    first = _tick(raw_dir)
    _write(raw_dir / "meta.json", "m")
    second = _tick(raw_dir, cursor=first.cursor)
    assert len(second.run_requests) == 1
    assert second.run_requests[0].tags["convrec/new_or_changed"] == "meta.json"
    assert set(json.loads(second.cursor)) == {"reviews.json", "meta.json"}


def test_missing_or_empty_folder_skips_with_a_reason(raw_dir):
    missing = _tick(raw_dir / "not_there")
    assert missing.run_requests == []
    assert "does not exist" in missing.skip_message

    empty = _tick(raw_dir)
    assert empty.run_requests == [] and "holds no dump files" in empty.skip_message

    _write(raw_dir / ".DS_Store", "x")
    _write(raw_dir / "reviews.json.gz.part", "x")
    (raw_dir / "images").mkdir()
    only_ignored = _tick(raw_dir)
    assert only_ignored.run_requests == [] and "holds no dump files" in only_ignored.skip_message


def test_embedded_sample_is_not_watched(tmp_path):
    paths = ConvRecPaths(home=str(tmp_path / "home"), raw_dir="")  # conftest unsets CONVREC_RAW_DIR
    result = raw_dump_sensor.evaluate_tick(dg.build_sensor_context(resources={"paths": paths}))
    assert result.run_requests == []
    assert "CONVREC_RAW_DIR is unset" in result.skip_message
    assert not (tmp_path / "home" / "sample_dump").exists()  # the sensor generates nothing


def test_watches_the_folder_named_by_the_environment(monkeypatch, raw_dir):
    monkeypatch.setenv("CONVREC_RAW_DIR", str(raw_dir))
    _write(raw_dir / "Video.txt", "1 1\n")
    paths = ConvRecPaths(home=str(raw_dir.parent / "home"))
    result = raw_dump_sensor.evaluate_tick(dg.build_sensor_context(resources={"paths": paths}))
    assert len(result.run_requests) == 1


def test_file_still_copying_waits_without_moving_the_cursor(raw_dir):
    _write(raw_dir / "reviews.json", "r", mtime=time.time())
    result = _tick(raw_dir)
    assert result.run_requests == []
    assert "settle" in result.skip_message and "reviews.json" in result.skip_message
    assert result.cursor is None


def test_removed_file_alone_does_not_run_but_updates_the_cursor(raw_dir):
    _write(raw_dir / "reviews.json", "r")
    _write(raw_dir / "meta.json", "m")
    first = _tick(raw_dir)
    (raw_dir / "meta.json").unlink()
    result = _tick(raw_dir, cursor=first.cursor)
    assert result.run_requests == []
    assert "meta.json removed" in result.skip_message
    assert set(json.loads(result.cursor)) == {"reviews.json"}


def test_unreadable_cursor_treats_files_as_new(raw_dir):
    _write(raw_dir / "reviews.json", "r")
    result = _tick(raw_dir, cursor="not json")
    assert len(result.run_requests) == 1
