"""The embedded sample dump: deterministic, sequentially structured, with its realistic defects."""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from convrec_dagster.data.sample_dump import (
    MARKER_FILENAME,
    SampleDumpConfig,
    build_catalog,
    ensure_sample_dump,
    generate_sample_dump,
    main,
    read_marker,
)

SMALL = SampleDumpConfig(n_users=80, n_items=96, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _reviews(dump: Path) -> tuple[list[dict], int]:
    rows, bad = [], 0
    with gzip.open(dump / "reviews_Sample.json.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except ValueError:
                bad += 1
    return rows, bad


def _histories(rows: list[dict]) -> dict[str, list[str]]:
    by_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in rows:
        by_user[r["reviewerID"]].append((r["unixReviewTime"], r["asin"]))
    return {u: [a for _, a in sorted(h)] for u, h in by_user.items()}


def test_two_generations_are_byte_identical_and_seed_matters(tmp_path):
    a = generate_sample_dump(tmp_path / "a", SMALL)
    b = generate_sample_dump(tmp_path / "b", SMALL)
    c = generate_sample_dump(tmp_path / "c", dataclasses.replace(SMALL, seed=8))
    files_a, files_b = _files(a), _files(b)
    assert len(files_a) > 90 and files_a == files_b
    assert files_a["reviews_Sample.json.gz"] != _files(c)["reviews_Sample.json.gz"]


def test_histories_follow_successor_chains_far_more_than_popularity(sample_dump):
    rows, _ = _reviews(sample_dump)
    histories = _histories(rows)
    successor = build_catalog(SampleDumpConfig()).successor_asin()
    pairs = [(a, b) for h in histories.values() for a, b in zip(h, h[1:])]
    follow = sum(successor[a] == b for a, b in pairs) / len(pairs)
    assert 0.45 <= follow <= 0.7, follow
    # Next-item guess from the last item vs the most popular item, on each user's last item.
    top = Counter(r["asin"] for r in rows).most_common(1)[0][0]
    chain_hits = sum(successor[h[-2]] == h[-1] for h in histories.values())
    pop_hits = sum(top == h[-1] for h in histories.values())
    assert chain_hits > 5 * max(pop_hits, 1)


def test_sizes_lengths_and_time_span(sample_dump):
    rows, _ = _reviews(sample_dump)
    histories = _histories(rows)
    lengths = [len(h) for h in histories.values()]
    assert len(histories) == 600 and len({r["asin"] for r in rows}) == 240
    assert min(lengths) >= 5 and max(lengths) <= 40 and 11 <= sum(lengths) / len(lengths) <= 15
    assert all(len(set(h)) == len(h) for h in histories.values())  # no (user, item) twice
    years = {int(r["reviewTime"][-4:]) for r in rows}
    assert years <= {2012, 2013, 2014} and len(years) == 3
    assert all(r["unixReviewTime"] % 86_400 == 0 for r in rows)


def test_defects_are_present_and_few(sample_dump):
    marker = read_marker(sample_dump)
    rows, bad_reviews = _reviews(sample_dump)
    assert bad_reviews == 1 and len(rows) == marker["reviews"]
    metas, bad_meta = [], 0
    with gzip.open(sample_dump / "meta_Sample.json.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            assert line.startswith("{'asin': ")  # Python literal, single quotes
            try:
                metas.append(ast.literal_eval(line))
            except (ValueError, SyntaxError):
                bad_meta += 1
    assert bad_meta == 1
    asins = Counter(m["asin"] for m in metas)
    assert sum(n - 1 for n in asins.values()) == 4  # duplicate lines
    reviewed = {r["asin"] for r in rows}
    assert (
        reviewed - set(asins) == set(marker["items_without_meta"]) and len(marker["items_without_meta"]) == 7
    )
    images = sorted((sample_dump / "images").glob("*.jpg"))
    assert len(images) == 238 and not {p.stem for p in images} & set(marker["missing_images"])
    broken = []
    for p in images:
        try:
            with Image.open(p) as im:
                im.load()
                assert im.size == (64, 64)
        except OSError:
            broken.append(p.stem)
    assert broken == marker["corrupt_images"]


def test_images_carry_category_signal(sample_dump):
    catalog = build_catalog(SampleDumpConfig())
    colours: dict[int, list[tuple]] = defaultdict(list)
    for it in catalog.items:
        p = sample_dump / "images" / f"{it.asin}.jpg"
        try:
            with Image.open(p) as im:
                colours[it.category].append(im.convert("RGB").getpixel((1, 62)))  # background corner
        except (OSError, FileNotFoundError):
            continue
    means = [tuple(sum(c[k] for c in cs) / len(cs) for k in range(3)) for cs in colours.values()]
    assert len({tuple(round(v / 10) for v in m) for m in means}) == len(means) == 8


def test_ensure_is_idempotent_regenerates_on_config_change_and_keeps_other_files(tmp_path):
    out = tmp_path / "dump"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    ensure_sample_dump(out, SMALL)
    stamp = (out / MARKER_FILENAME).stat().st_mtime_ns
    ensure_sample_dump(out, SMALL)
    assert (out / MARKER_FILENAME).stat().st_mtime_ns == stamp
    other = dataclasses.replace(SMALL, n_users=90)
    ensure_sample_dump(out, other)
    assert read_marker(out)["config_hash"] == other.config_hash() != SMALL.config_hash()
    assert (out / "notes.txt").read_text() == "mine"


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--users" in capsys.readouterr().out
    assert main([str(tmp_path / "cli"), "--users", "50", "--items", "48", "--seed", "3"]) == 0
    assert read_marker(tmp_path / "cli")["config"]["n_users"] == 50
    with pytest.raises(ValueError, match="n_items"):
        main([str(tmp_path / "tiny"), "--items", "10"])
