"""Shared fixtures. Tests use tiny generated data, a real DuckDB file and real torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from convrec_dagster.resources import build_resources

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the developer's CONVREC_* settings or writes into the repository."""
    monkeypatch.delenv("CONVREC_RAW_DIR", raising=False)
    monkeypatch.setenv("CONVREC_HOME", str(tmp_path / "convrec_home"))


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread: for tiny tensors on a shared 2-core CPU, two OpenMP threads
    spin-waiting on each other cost more than they compute."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def convrec_home(tmp_path) -> Path:
    home = tmp_path / "convrec_home"
    home.mkdir(exist_ok=True)
    return home


@pytest.fixture
def make_resources(convrec_home):
    """``make_resources(raw_dir)`` -> the Definitions' resources on a temporary CONVREC_HOME."""

    def _make(raw_dir: str | Path = "", device: str = "cpu") -> dict:
        return build_resources(home=convrec_home, raw_dir=raw_dir, device=device)

    return _make


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the calling test is skipped when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives beside the repository, never in it)")
    return path


@pytest.fixture(scope="session")
def sample_dump(tmp_path_factory) -> Path:
    """The embedded sample dump (default config), generated once per session; do not modify it."""
    from convrec_dagster.data.sample_dump import ensure_sample_dump

    return ensure_sample_dump(tmp_path_factory.mktemp("sample") / "sample_dump")
