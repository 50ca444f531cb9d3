"""Every benchmark script answers ``--help`` with its options, and no option's help reads
``(default: None)`` or ``(default: )`` (``benchmarks.common.HelpFormatter``)."""

import subprocess
import sys

import pytest

from benchmarks.common import REPO_ROOT

SCRIPTS = sorted(
    p.stem
    for p in (REPO_ROOT / "benchmarks").glob("*.py")
    if p.stem not in {"__init__", "common"} and "argparse" in p.read_text()
)


def test_every_benchmark_script_is_listed():
    assert {"accuracy", "convergence", "efficiency", "gpu_check", "pipeline"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_help_names_no_empty_default(script: str):
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
    text = " ".join(done.stdout.split())  # help lines wrap
    assert "(default: None)" not in text and "(default: )" not in text


def test_help_formatter_keeps_real_defaults():
    import argparse

    from benchmarks.common import HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="epoch cap")
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--home", default="", help="home (default: a temporary folder)")
    text = " ".join(parser.format_help().split())
    assert "epoch cap (default: 40)" in text
    assert "learning rate" in text and "learning rate (default" not in text
    assert text.count("(default:") == 2  # 40 and the home's own words
