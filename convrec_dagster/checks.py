"""Asset checks: how the pipeline declares and runs its data checks.

A check is a plain function beside the asset it guards (``assets/<stage>.py``): it takes an open
DuckDB connection (and whatever else it needs) and returns ``dg.AssetCheckResult``. The asset lists
it in ``check_specs=blocking_checks(...)`` and runs it with ``run_checks`` on its own connection right
after writing its table. So

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

from convrec_dagster.data.store import DataError

CheckFn = Callable[..., dg.AssetCheckResult]


def blocking_checks(asset: str, *checks: CheckFn) -> list[dg.AssetCheckSpec]:
    """One blocking ``AssetCheckSpec`` per check function, named after it, its docstring as description."""
    return [dg.AssetCheckSpec(fn.__name__, asset=asset, blocking=True, description=inspect.getdoc(fn))
            for fn in checks]


def run_checks(checks: list[CheckFn], *args, **kwargs) -> list[dg.AssetCheckResult]:
    """Each check called with the same arguments, its result named after the function."""
    return [fn(*args, **kwargs)._replace(check_name=fn.__name__) for fn in checks]



@contextmanager
def failures() -> Iterator[None]:
    """Inside the block, a data-layer ``DataError`` becomes ``dg.Failure`` with its message and metadata."""
    try:
        yield
    except DataError as err:
        raise dg.Failure(description=str(err), metadata=err.metadata, allow_retries=err.retry) from err
