"""The embedded sample dump: a small, seeded, Amazon-2014-format dump with real sequential structure.

Files written to ``out_dir``:

- ``reviews_Sample.json.gz``: strict JSON lines (``reviewerID, asin, reviewerName, helpful,
  reviewText, overall, summary, unixReviewTime, reviewTime``), grouped by item like the real dumps.
- ``meta_Sample.json.gz``: Python-literal lines with single quotes (``asin, title, price, imUrl,
  brand, categories [[...]], related, salesRank, description``), like the 2014 metadata.
- ``images/<ASIN>.jpg``: one small product picture per item; colours and shapes follow the
  category, sub-category and brand, so image features carry signal.
- ``.sample_dump.json``: a marker with the config and its hash (``ensure_sample_dump`` uses it).

How users behave (why a sequence model beats popularity here): items sit in 8 categories x 3
sub-categories; inside a sub-category they form a successor chain (collection / refill order). A
user's next item is the chain successor of the last item with probability ``p_successor``; else, with
``p_revisit``, the successor of the latest item of an earlier sub-category on the user's trajectory
(repeat purchases); else a popular item (Zipf, preferring the user's brands) of the next
sub-category on a fixed category transition matrix (shampoo -> conditioner -> styling -> ...).

Realistic defects: a few items without metadata, duplicate metadata lines (the first one wins), one
malformed review line, one malformed metadata line, one corrupt JPEG and two items without a picture.

CLI: ``python -m convrec_dagster.data.sample_dump OUT_DIR [--users N --items N --seed S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shutil
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 1
REVIEWS_FILENAME = "reviews_Sample.json.gz"
META_FILENAME = "meta_Sample.json.gz"
IMAGES_DIRNAME = "images"
MARKER_FILENAME = ".sample_dump.json"

TOP_CATEGORY = "Beauty"
CATEGORY_TREE: list[tuple[str, list[str]]] = [
    ("Hair Care", ["Shampoo", "Conditioner", "Styling"]),
    ("Skin Care", ["Cleanser", "Toner", "Moisturizer"]),
    ("Makeup", ["Primer", "Foundation", "Mascara"]),
    ("Fragrance", ["Perfume", "Body Mist", "Deodorant"]),
    ("Bath & Body", ["Body Wash", "Body Scrub", "Body Lotion"]),
    ("Nail Care", ["Base Coat", "Nail Polish", "Top Coat"]),
    ("Oral Care", ["Toothpaste", "Mouthwash", "Floss"]),
    ("Tools & Accessories", ["Brushes", "Sponges", "Mirrors"]),
]
# Where a user goes after finishing a category: (next category index, weight); the rest is uniform.
CATEGORY_NEXT: dict[int, list[tuple[int, float]]] = {
    0: [(4, 0.5), (1, 0.3)],
    1: [(2, 0.5), (4, 0.3)],
    2: [(7, 0.5), (3, 0.3)],
    3: [(4, 0.5), (0, 0.3)],
    4: [(1, 0.5), (6, 0.3)],
    5: [(2, 0.5), (7, 0.3)],
    6: [(0, 0.5), (5, 0.3)],
    7: [(5, 0.5), (2, 0.3)],
}
BRAND_NAMES = [
    "Aurelle",
    "Bellamy",
    "Cordova",
    "Dunmore",
    "Elvira",
    "Fenwick",
    "Galloway",
    "Hartley",
    "Isolde",
    "Juniper & Co",
    "Kestrel",
    "Laurel's",
    "Marchetti",
    "Nordby",
    "Orsay",
    "Pemberton",
    "Quill",
    "Rosewater",
    "Saffron Lane",
    "Thistle",
]
ADJECTIVES = ["Gentle", "Daily", "Intense", "Classic", "Fresh", "Pure", "Silk", "Radiant", "Velvet"]
SIZES = ["1 oz", "2 oz", "3.4 oz", "8 oz", "12 oz", "16 oz", "Travel Size", "Value Pack"]
FIRST_NAMES = [
    "Anna",
    "Ben",
    "Carla",
    "Dev",
    "Elena",
    "Femi",
    "Grace",
    "Hiro",
    "Ines",
    "Jon",
    "Kira",
    "Luis",
    "Maya",
    "Nils",
    "Olu",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tess",
]
OPINIONS = {
    5: ["Love it, will buy again.", "Exactly what I wanted.", "Best one I have tried."],
    4: ["Works well, nice smell.", "Good value for the price.", "Does the job."],
    3: ["It is okay.", "Nothing special but fine.", "Average, as expected."],
    2: ["Not great, a bit disappointing.", "Did not work for me."],
    1: ["Would not recommend.", "Broke after a week, returning it."],
}
SUMMARIES = {5: "Five Stars", 4: "Four Stars", 3: "Three Stars", 2: "Two Stars", 1: "One Star"}

START = int(dt.datetime(2012, 1, 1, tzinfo=dt.UTC).timestamp())
END = int(dt.datetime(2014, 7, 20, tzinfo=dt.UTC).timestamp())
DAY = 86_400


@dataclass(frozen=True)
class SampleDumpConfig:
    """Sizes and behaviour of the sample dump; every field goes into the marker's hash."""

    n_users: int = 600
    n_items: int = 240
    seed: int = 20140723
    min_history: int = 5
    max_history: int = 40
    mean_extra_history: float = 9.0  # history length = min_history + geometric extra (mean this)
    p_successor: float = 0.55  # next item = chain successor of the last one
    p_revisit: float = 0.12  # next item = successor in an earlier sub-category of the trajectory
    p_stay_in_category: float = 0.8  # after a fresh pick: next sub-category of the same category
    zipf_exponent: float = 1.0
    mean_gap_days: float = 20.0  # per-user mean gap is drawn around this (log-normal)
    image_size: int = 64
    items_without_meta: float = 0.03  # share of items with no metadata line
    duplicate_meta_lines: int = 4
    malformed_review_lines: int = 1
    malformed_meta_lines: int = 1
    corrupt_images: int = 1
    missing_images: int = 2

    def config_hash(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class CatalogItem:
    index: int
    asin: str
    category: int
    subcategory: int  # 0..2 inside the category
    brand: int
    chain_pos: int  # position in the sub-category's successor chain
    popularity: float
    successor: int = -1  # item index of the chain successor


@dataclass
class Catalog:
    items: list[CatalogItem]
    by_subcat: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # chain order

    def successor_asin(self) -> dict[str, str]:
        return {it.asin: self.items[it.successor].asin for it in self.items}


def _ids(rng: np.random.Generator, n: int, prefix: str, length: int, taken: set[str]) -> list[str]:
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    out: list[str] = []
    while len(out) < n:
        cand = prefix + "".join(rng.choice(alphabet, size=length - len(prefix)))
        if cand not in taken:
            taken.add(cand)
            out.append(cand)
    return out


def _pick(rng: np.random.Generator, weights: np.ndarray) -> int:
    cum = np.cumsum(weights)
    return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), len(weights) - 1))


def build_catalog(config: SampleDumpConfig, rng: np.random.Generator | None = None) -> Catalog:
    """Items with categories, brands, Zipf popularity and successor chains (deterministic)."""
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    n_cat = len(CATEGORY_TREE)
    n_sub = n_cat * 3
    if config.n_items < 2 * n_sub:
        raise ValueError(f"n_items must be at least {2 * n_sub} (two per sub-category)")
    asins = _ids(rng, config.n_items, "B00", 10, set())
    # Each brand serves two or three categories; each category gets the brands that serve it.
    brand_cats = {
        b: set(rng.choice(n_cat, size=2 + (b % 2), replace=False).tolist()) for b in range(len(BRAND_NAMES))
    }
    for c in range(n_cat):  # every category needs at least two brands
        serving = [b for b, cats in brand_cats.items() if c in cats]
        for b in rng.choice(len(BRAND_NAMES), size=max(0, 2 - len(serving)), replace=False):
            brand_cats[int(b)].add(c)
    ranks = rng.permutation(config.n_items)
    popularity = 1.0 / (ranks + 1.0) ** config.zipf_exponent
    items: list[CatalogItem] = []
    for i in range(config.n_items):
        sub_global = i % n_sub
        c, s = divmod(sub_global, 3)
        brands = sorted(b for b, cats in brand_cats.items() if c in cats)
        items.append(CatalogItem(i, asins[i], c, s, int(rng.choice(brands)), -1, float(popularity[i])))
    catalog = Catalog(items)
    for c in range(n_cat):
        for s in range(3):
            members = [it.index for it in items if it.category == c and it.subcategory == s]
            order = [members[k] for k in rng.permutation(len(members))]
            catalog.by_subcat[(c, s)] = order
            for pos, idx in enumerate(order):
                items[idx].chain_pos = pos
                items[idx].successor = order[(pos + 1) % len(order)]
    return catalog


def _next_subcat(rng: np.random.Generator, cfg: SampleDumpConfig, c: int, s: int) -> tuple[int, int]:
    if s < 2 and rng.random() < cfg.p_stay_in_category:
        return c, s + 1
    n_cat = len(CATEGORY_TREE)
    weights = np.full(n_cat, 0.2 / (n_cat - 1))
    weights[c] = 0.0
    for nxt, w in CATEGORY_NEXT[c]:
        weights[nxt] += w
    c2 = _pick(rng, weights)
    return c2, 0 if rng.random() < 0.7 else int(rng.integers(3))


def simulate_histories(
    config: SampleDumpConfig, catalog: Catalog, rng: np.random.Generator
) -> list[list[tuple[int, int]]]:
    """Per user, a list of (item index, unix day timestamp) in true order."""
    items = catalog.items
    pop = np.array([it.popularity for it in items])
    n_brands = len(BRAND_NAMES)
    histories: list[list[tuple[int, int]]] = []
    sub_pop = {key: pop[idx].sum() for key, idx in catalog.by_subcat.items()}
    sub_keys = sorted(sub_pop)
    for _ in range(config.n_users):
        length = min(
            config.max_history,
            config.min_history + int(rng.geometric(1.0 / (1.0 + config.mean_extra_history))) - 1,
        )
        liked = set(rng.choice(n_brands, size=int(rng.integers(1, 4)), replace=False).tolist())
        boost = np.array([4.0 if it.brand in liked else 1.0 for it in items])
        seen: set[int] = set()
        seq: list[int] = []
        last_in_sub: dict[tuple[int, int], int] = {}

        # the two helpers read this user's `seen` and `boost`; they are called only in this iteration
        def fresh_pick(key: tuple[int, int]) -> int | None:
            cands = [i for i in catalog.by_subcat[key] if i not in seen]  # noqa: B023
            if not cands:
                return None
            return cands[_pick(rng, pop[cands] * boost[cands])]  # noqa: B023

        def successor_of(i: int) -> int | None:
            j = items[i].successor
            for _ in range(len(catalog.by_subcat[(items[i].category, items[i].subcategory)])):
                if j not in seen:  # noqa: B023
                    return j
                j = items[j].successor
            return None

        key = sub_keys[_pick(rng, np.array([sub_pop[k] for k in sub_keys]))]
        while len(seq) < length:
            nxt: int | None = None
            if seq:
                r = rng.random()
                last = seq[-1]
                if r < config.p_successor:
                    nxt = successor_of(last)
                elif r < config.p_successor + config.p_revisit and len(last_in_sub) > 1:
                    earlier = [k for k in last_in_sub if k != key]
                    key = earlier[int(rng.integers(len(earlier)))]
                    nxt = successor_of(last_in_sub[key])
                if nxt is None:
                    key = _next_subcat(rng, config, *key)
            if nxt is None:
                for _ in range(8):
                    nxt = fresh_pick(key)
                    if nxt is not None:
                        break
                    key = _next_subcat(rng, config, *key)
            if nxt is None:  # everything nearby consumed: most popular unseen item anywhere
                rest = [i for i in range(len(items)) if i not in seen]
                nxt = rest[_pick(rng, pop[rest])]
            seen.add(nxt)
            seq.append(nxt)
            key = (items[nxt].category, items[nxt].subcategory)
            last_in_sub[key] = nxt
        mean_gap = config.mean_gap_days * float(rng.lognormal(0.0, 0.6))
        gaps = 1 + np.floor(rng.exponential(mean_gap, size=len(seq) - 1)).astype(np.int64)
        span_days = (END - START) // DAY
        total = int(gaps.sum())
        if total > span_days - 1:
            gaps = np.maximum(1, gaps * (span_days - 1) // max(total, 1))
            total = int(gaps.sum())
        start_day = START // DAY + int(rng.integers(0, max(1, span_days - total)))
        days = start_day + np.concatenate([[0], np.cumsum(gaps)])
        histories.append([(i, int(d) * DAY) for i, d in zip(seq, days)])
    return histories


def _review_time(ts: int) -> str:
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return f"{d.month:02d} {d.day}, {d.year}"


def _gzip_bytes(lines: list[str]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write("".join(line + "\n" for line in lines).encode("utf-8"))
    return buf.getvalue()


def _title(it: CatalogItem) -> str:
    cat, subs = CATEGORY_TREE[it.category]
    return (
        f"{BRAND_NAMES[it.brand]} {ADJECTIVES[it.index % len(ADJECTIVES)]} {subs[it.subcategory]}, "
        f"{SIZES[it.index % len(SIZES)]}"
    )


def _draw_image(it: CatalogItem, size: int, rng: np.random.Generator) -> bytes:
    import colorsys

    from PIL import Image, ImageDraw

    def rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
        return tuple(int(255 * x) for x in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore

    bg = rgb(it.category / len(CATEGORY_TREE), 0.35, 0.95)
    fg = rgb(it.brand / len(BRAND_NAMES) + 0.03, 0.85, 0.75)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for k in range(it.brand % 4):  # brand stripes along the top
        y = 2 + 4 * k
        draw.rectangle([0, y, size - 1, y + 1], fill=fg)
    jitter = rng.integers(-3, 4, size=2)
    cx, cy = size // 2 + int(jitter[0]), size // 2 + 6 + int(jitter[1])
    r = size // 4 + it.chain_pos % 3
    box = [cx - r, cy - r, cx + r, cy + r]
    if it.subcategory == 0:
        draw.ellipse(box, fill=fg)
    elif it.subcategory == 1:
        draw.rectangle(box, fill=fg)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def generate_sample_dump(out_dir: Path, config: SampleDumpConfig | None = None) -> Path:
    """Write the sample dump into ``out_dir`` (created; previous sample files replaced); returns it."""
    config = config or SampleDumpConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    catalog = build_catalog(config, rng)
    histories = simulate_histories(config, catalog, rng)
    items = catalog.items
    user_ids = _ids(rng, config.n_users, "A", 14, {it.asin for it in items})

    # Reviews, grouped by item and then by time (the order of the real dumps).
    rows = []
    for u, hist in enumerate(histories):
        for i, ts in hist:
            rows.append((items[i].asin, ts, u, i))
    rows.sort()
    ratings = rng.choice([5, 4, 3, 2, 1], size=len(rows), p=[0.55, 0.22, 0.1, 0.06, 0.07])
    helpful_b = rng.integers(0, 6, size=len(rows))
    helpful_a = (helpful_b * rng.random(len(rows))).astype(int)
    review_lines = []
    for k, (asin, ts, u, i) in enumerate(rows):
        it, rating = items[i], int(ratings[k])
        sub = CATEGORY_TREE[it.category][1][it.subcategory].lower()
        opinions = OPINIONS[rating]
        review_lines.append(
            json.dumps(
                {
                    "reviewerID": user_ids[u],
                    "asin": asin,
                    "reviewerName": f"{FIRST_NAMES[u % len(FIRST_NAMES)]} {string.ascii_uppercase[u % 26]}.",
                    "helpful": [int(helpful_a[k]), int(helpful_b[k])],
                    "reviewText": f"This {sub} from {BRAND_NAMES[it.brand]}: {opinions[(u + i) % len(opinions)]}",
                    "overall": float(rating),
                    "summary": SUMMARIES[rating],
                    "unixReviewTime": ts,
                    "reviewTime": _review_time(ts),
                }
            )
        )
    for _ in range(config.malformed_review_lines):  # a write cut short in the middle of a line
        pos = int(rng.integers(1, len(review_lines)))
        broken = review_lines[pos - 1][: len(review_lines[pos - 1]) // 2]
        review_lines.insert(pos, broken)

    # Metadata as Python literals (str(dict) writes single quotes, like the 2014 dumps).
    n_no_meta = int(round(config.items_without_meta * len(items)))
    by_pop = sorted(range(len(items)), key=lambda j: -items[j].popularity)
    middle = by_pop[len(items) // 4 : 3 * len(items) // 4]
    no_meta = set(int(j) for j in rng.choice(middle, size=n_no_meta, replace=False))
    meta_lines = []
    for j in rng.permutation(len(items)):
        it = items[int(j)]
        if it.index in no_meta:
            continue
        cat, subs = CATEGORY_TREE[it.category]
        succ = items[it.successor]
        meta: dict = {
            "asin": it.asin,
            "description": f"{ADJECTIVES[it.index % len(ADJECTIVES)]} {subs[it.subcategory].lower()} "
            f"by {BRAND_NAMES[it.brand]}.",
            "title": _title(it),
            "imUrl": f"http://ecx.images-amazon.com/images/I/{it.asin[3:]}L.jpg",
            "related": {
                "also_bought": [succ.asin, items[succ.successor].asin],
                "bought_together": [succ.asin],
            },
            "salesRank": {TOP_CATEGORY: int(by_pop.index(it.index) * 37 + 11)},
            "categories": [[TOP_CATEGORY, cat, subs[it.subcategory]]],
        }
        if it.index % 19 != 7:
            meta["price"] = round(3.0 + 2.0 * it.category + (it.index % 7) * 1.25, 2)
        if it.index % 23 != 5:
            meta["brand"] = BRAND_NAMES[it.brand]
        if it.index % 5 == 0:
            meta["categories"].append([TOP_CATEGORY, cat])
        meta_lines.append(str(meta))
    for k in range(config.duplicate_meta_lines):
        src = int(rng.integers(len(meta_lines)))
        line = meta_lines[src]
        if k == 0:  # one duplicate disagrees on the price; the first line wins
            line = line.replace("'price': ", "'price': 1", 1)
        meta_lines.insert(int(rng.integers(src + 1, len(meta_lines) + 1)), line)
    for _ in range(config.malformed_meta_lines):
        pos = int(rng.integers(1, len(meta_lines)))
        meta_lines.insert(pos, meta_lines[pos - 1][: len(meta_lines[pos - 1]) // 2])

    (out_dir / REVIEWS_FILENAME).write_bytes(_gzip_bytes(review_lines))
    (out_dir / META_FILENAME).write_bytes(_gzip_bytes(meta_lines))

    images_dir = out_dir / IMAGES_DIRNAME
    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir()
    img_rng = np.random.default_rng([config.seed, 1])
    order = img_rng.permutation(len(items))
    missing = {int(j) for j in order[: config.missing_images]}
    corrupt = {int(j) for j in order[config.missing_images : config.missing_images + config.corrupt_images]}
    for it in items:
        data = _draw_image(it, config.image_size, img_rng)
        if it.index in missing:
            continue
        if it.index in corrupt:  # a download cut short: header only
            data = data[: min(len(data) // 3, 120)]
        (images_dir / f"{it.asin}.jpg").write_bytes(data)

    marker = {
        "generator_version": GENERATOR_VERSION,
        "config_hash": config.config_hash(),
        "config": dataclasses.asdict(config),
        "reviews": len(rows),
        "review_lines": len(review_lines),
        "meta_lines": len(meta_lines),
        "items_without_meta": sorted(items[j].asin for j in no_meta),
        "missing_images": sorted(items[j].asin for j in missing),
        "corrupt_images": sorted(items[j].asin for j in corrupt),
    }
    (out_dir / MARKER_FILENAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / MARKER_FILENAME).read_text())
    except (OSError, ValueError):
        return None


def _is_current(out_dir: Path, config: SampleDumpConfig) -> bool:
    marker = read_marker(out_dir)
    return (
        marker is not None
        and marker.get("config_hash") == config.config_hash()
        and (out_dir / REVIEWS_FILENAME).is_file()
        and (out_dir / META_FILENAME).is_file()
        and (out_dir / IMAGES_DIRNAME).is_dir()
    )


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_sample_dump(out_dir: Path, config: SampleDumpConfig | None = None) -> Path:
    """The sample dump in ``out_dir``; generated only when missing or made with another config.

    Safe when several processes ask at once (a file lock; the dump is written to a temporary folder
    and moved into place).
    """
    config = config or SampleDumpConfig()
    out_dir = Path(out_dir).resolve()
    if _is_current(out_dir, config):
        return out_dir
    with _lock(out_dir.parent / f".{out_dir.name}.lock"):
        if _is_current(out_dir, config):
            return out_dir
        tmp = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        generate_sample_dump(tmp, config)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MARKER_FILENAME).unlink(missing_ok=True)
        # Move only the dump's own entries, so other files in out_dir are left alone.
        if (out_dir / IMAGES_DIRNAME).exists():
            shutil.rmtree(out_dir / IMAGES_DIRNAME)
        for name in (IMAGES_DIRNAME, REVIEWS_FILENAME, META_FILENAME, MARKER_FILENAME):
            os.replace(tmp / name, out_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    defaults = SampleDumpConfig()
    parser = argparse.ArgumentParser(
        prog="python -m convrec_dagster.data.sample_dump",
        description="Write the embedded Amazon-2014-format sample dump (reviews_Sample.json.gz, "
        "meta_Sample.json.gz, images/<ASIN>.jpg). Deterministic: the same sizes and "
        "seed give byte-identical files. Point CONVREC_RAW_DIR at OUT_DIR to ingest it.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (created)")
    parser.add_argument(
        "--users", type=int, default=defaults.n_users, help=f"number of users (default {defaults.n_users})"
    )
    parser.add_argument(
        "--items",
        type=int,
        default=defaults.n_items,
        help=f"number of items, at least 48 (default {defaults.n_items})",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if the marker matches")
    args = parser.parse_args(argv)
    config = dataclasses.replace(defaults, n_users=args.users, n_items=args.items, seed=args.seed)
    if args.force:
        generate_sample_dump(args.out_dir, config)
    else:
        ensure_sample_dump(args.out_dir, config)
    marker = read_marker(args.out_dir) or {}
    print(
        f"sample dump in {args.out_dir.resolve()}: {marker.get('reviews')} reviews, "
        f"{config.n_users} users, {config.n_items} items (config {config.config_hash()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
