"""Asset checks: how the pipeline declares and runs its data checks, and the one adapter from the
data layer's outcomes and errors to Dagster's.

A check is a pure function (in the data layer, ``convrec_dagster/data/``, or beside its asset): it
takes an open DuckDB connection (and whatever else it needs) and returns a
``convrec_dagster.data.outcome.CheckOutcome``. The asset lists it in
``check_specs=blocking_checks(...)`` and runs it with ``run_checks`` on its own connection right
after writing its table; ``run_checks`` turns each outcome into ``dg.AssetCheckResult``. So

- a check costs a query, not a step: the multiprocess executor starts one process per step (0.5-1 s
  each on 2 cores, see BENCHMARKS.md), and DuckDB steps run one after the other anyway;
- a failing check fails its asset's step after the materialization is recorded (the checks are
  blocking), so nothing downstream runs on bad data;
- the UI shows every check on its asset, as separately defined checks would; re-running a check
  re-materializes its asset.

Tests call the check functions directly on hand-made tables.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from convrec_dagster.data.outcome import CheckOutcome, Markdown
from convrec_dagster.data.tables import DataError

CheckFn = Callable[..., CheckOutcome]


def blocking_checks(asset: str, *checks: CheckFn) -> list[dg.AssetCheckSpec]:
    """One blocking ``AssetCheckSpec`` per check function, named after it, its docstring as description."""
    return [
        dg.AssetCheckSpec(fn.__name__, asset=asset, blocking=True, description=inspect.getdoc(fn))
        for fn in checks
    ]


def _metadata_value(value):
    if isinstance(value, Markdown):
        return dg.MetadataValue.md(str(value))
    if isinstance(value, (dict, list, tuple)):
        return dg.MetadataValue.json(list(value) if isinstance(value, tuple) else value)
    return value


def metadata_values(values: dict, md: tuple = (), json: tuple = (), path: tuple = ()) -> dict:
    """A data-layer metadata dict for ``MaterializeResult``: the named keys as markdown, JSON or path
    metadata values, the rest as they are."""
    kinds = {
        **dict.fromkeys(md, dg.MetadataValue.md),
        **dict.fromkeys(json, dg.MetadataValue.json),
        **dict.fromkeys(path, dg.MetadataValue.path),
    }
    return {k: kinds[k](v) if k in kinds else v for k, v in values.items()}


def check_result(outcome: CheckOutcome, name: str) -> dg.AssetCheckResult:
    """The adapter: a data-layer ``CheckOutcome`` as the ``dg.AssetCheckResult`` of check ``name``."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=bool(outcome.passed),
        description=outcome.description or None,
        metadata={k: _metadata_value(v) for k, v in outcome.metadata.items()},
    )


def run_checks(checks: list[CheckFn], *args, **kwargs) -> list[dg.AssetCheckResult]:
    """Each check called with the same arguments, its outcome named after the function."""
    return [check_result(fn(*args, **kwargs), fn.__name__) for fn in checks]


@contextmanager
def failures(*never_retried: type[Exception]) -> Iterator[None]:
    """Inside the block, a data-layer ``DataError`` becomes ``dg.Failure`` with its message and metadata.

    An exception of a type in ``never_retried`` becomes a ``dg.Failure`` that the step's retry policy does not
    retry: assets with ``TRANSIENT_RETRY_POLICY`` pass ``ValueError`` and ``TypeError`` (a setting, or a file, the
    code cannot take fails the same way every time, so a retry only delays the message)."""
    try:
        yield
    except DataError as err:
        raise dg.Failure(description=str(err), metadata=err.metadata, allow_retries=err.retry) from err
    except never_retried as err:
        raise dg.Failure(description=f"{type(err).__name__}: {err}", allow_retries=False) from err
