"""Preflight: what can be checked in seconds before a run does any work (no Dagster).

The `preflight` asset (``assets/preflight.py``) calls these at the root of `full_pipeline`:

- the home (``CONVREC_HOME``) is a writable folder, with free disk space;
- the raw dump folder exists and holds files whose formats are known (review files needed);
- every path named in config exists: the ResNet-50 weights file, DuckDB's temp directory;
- the device (CUDA asked for but absent fails the resource already);
- the training time: per model, its budget, epochs and a time per epoch, *measured* by timing a
  few training batches of the real model class on synthetic data of your data's size (catalogue,
  window, batch, loss) on the run's device, times the batches of one epoch. The data's size comes
  from the prepared data in DuckDB when an earlier run left it, else it is estimated from the raw
  files' sizes: an upper bound, since the 5-core filter drops many users and items.

Each problem comes with what to do; the asset fails with all of them at once.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOUR_S = 3600.0
LOW_DISK_BYTES = 2 << 30
TIMED_BATCHES = 3  # after one warm-up batch
MAX_ESTIMATE_S = 30.0  # stop timing a model once this much has gone into it


@dataclass
class Problem:
    what: str
    what_to_do: str

    def __str__(self) -> str:
        return f"{self.what}. What to do: {self.what_to_do}."


@dataclass
class Findings:
    """What preflight found: problems fail the run; notes and warnings are logged."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # for asset metadata

    def extend(self, other: Findings) -> None:
        self.problems += other.problems
        self.notes += other.notes
        self.warnings += other.warnings
        self.facts.update(other.facts)

    def failure_text(self) -> str:
        lines = [f"preflight found {len(self.problems)} problem(s) before any step did work:"]
        lines += [f"  {i}. {p}" for i, p in enumerate(self.problems, 1)]
        return "\n".join(lines)


# --- paths ----------------------------------------------------------------------------------------


def check_home(home: Path) -> Findings:
    """The home exists (or can be made), is writable, and has room."""
    out = Findings()
    fix = "set CONVREC_HOME (or resources.paths.config.home) to a folder you can write, e.g. ./.convrec"
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".preflight-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        out.problems.append(Problem(f"the home {home} is not writable ({type(err).__name__}: {err})", fix))
        return out
    database = home / "convrec.duckdb"
    if database.exists() and not database.is_file():
        out.problems.append(
            Problem(f"{database} is not a file", "move it away; the pipeline creates the DuckDB file there")
        )
    free = shutil.disk_usage(home).free
    out.facts["home"] = str(home)
    out.facts["home_free_gb"] = round(free / 2**30, 1)
    out.notes.append(f"home {home}: writable, {free / 2**30:.1f} GB free")
    if free < LOW_DISK_BYTES:
        out.warnings.append(
            f"only {free / 2**30:.1f} GB free under {home}: a real dump with images needs several GB"
        )
    return out


def check_weights(weights_path: str) -> Findings:
    """``item_image_features.weights_path``: empty (random weights) or a readable torch file."""
    out = Findings()
    if not weights_path:
        out.notes.append(
            "image weights: none configured, so ResNet-50 starts from random weights (the run warns; "
            "`features: auto` then leaves image vectors out of training)"
        )
        out.facts["image_weights"] = "none (random init)"
        return out
    path = Path(weights_path).expanduser()
    fix = (
        "point ops.item_image_features.config.weights_path at a local torchvision ResNet-50 state_dict "
        "(e.g. resnet50-11ad3fa6.pth, downloaded once by hand), or remove the setting to use random weights"
    )
    if not path.exists():
        out.problems.append(Problem(f"item_image_features.weights_path {str(path)!r} does not exist", fix))
    elif not path.is_file():
        out.problems.append(Problem(f"item_image_features.weights_path {str(path)!r} is not a file", fix))
    else:
        try:
            with open(path, "rb") as fh:
                head = fh.read(4)
        except OSError as err:
            out.problems.append(
                Problem(f"item_image_features.weights_path {str(path)!r} cannot be read ({err})", fix)
            )
            return out
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch.save: a zip archive, or legacy pickle
            out.problems.append(
                Problem(
                    f"item_image_features.weights_path {str(path)!r} is not a file written by torch.save", fix
                )
            )
        else:
            out.notes.append(f"image weights: {path} ({path.stat().st_size / 2**20:.0f} MB)")
            out.facts["image_weights"] = str(path)
    return out


def check_temp_directory(temp_directory: str) -> Findings:
    out = Findings()
    if not temp_directory:
        return out
    path = Path(temp_directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        out.problems.append(
            Problem(
                f"resources.duckdb.config.temp_directory {str(path)!r} cannot be used ({err})",
                "point it at a writable folder, or leave it empty (next to the database)",
            )
        )
    return out


# --- the raw folder -------------------------------------------------------------------------------


@dataclass
class RawSize:
    """An upper bound on the data's size from the raw files (before de-duplication and k-core)."""

    interactions: int = 0
    items: int = 0
    users: int = 0
    has_timestamps: bool = False
    has_metadata: bool = False


def estimate_records(path: Path, sample_bytes: int = 4 << 20) -> tuple[int, float]:
    """(estimated lines, items per line) of a raw file, from its first ``sample_bytes``
    (decompressed) and the share of the file they came from."""
    from convrec_dagster.data.rawdata import is_gzip

    size = path.stat().st_size
    lines = tokens = read = 0
    with open(path, "rb") as raw:
        fh = gzip.GzipFile(fileobj=raw) if is_gzip(path) else raw
        for line in fh:
            read += len(line)
            if line.strip():
                lines += 1
                tokens += max(len(line.split()) - 1, 1)
            if read >= sample_bytes:
                break
        consumed = raw.tell() if fh is not raw else read  # compressed bytes behind the lines read
    if lines == 0:
        return 0, 1.0
    share = min(consumed / size, 1.0) if size else 1.0
    return int(round(lines / share)), tokens / lines


def check_raw_dir(raw_dir: Path) -> tuple[Findings, RawSize]:
    """The raw folder exists and holds at least one review file of a known format."""
    from convrec_dagster.data import rawdata

    out, size = Findings(), RawSize()
    fix = (
        "set CONVREC_RAW_DIR (or resources.paths.config.raw_dir) to a folder holding Amazon review dumps "
        "(e.g. reviews_<Cat>.json.gz and meta_<Cat>.json.gz), or unset it to use the embedded sample dump"
    )
    if not raw_dir.exists():
        out.problems.append(Problem(f"the raw dump folder {raw_dir} does not exist", fix))
        return out, size
    if not raw_dir.is_dir():
        out.problems.append(Problem(f"the raw dump folder {raw_dir} is not a folder", fix))
        return out, size
    files, skipped = rawdata.list_raw_files(raw_dir)
    kinds: dict[str, list[str]] = {}
    for path in files:
        try:
            ff = rawdata.sniff(path)
        except rawdata.RawDataError as err:
            out.problems.append(Problem(f"{err.path}: {err.problem}", err.fix))
            continue
        if ff.kind in ("unknown", "empty"):
            out.warnings.append(f"{path.name} will be skipped: {ff.note}")
            continue
        kinds.setdefault(ff.kind, []).append(f"{path.name} ({ff.format}, {ff.compression})")
        try:
            lines, per_line = estimate_records(path)
        except (OSError, EOFError) as err:
            out.problems.append(
                Problem(
                    f"{path}: cannot be read ({err})",
                    "check that the file is complete "
                    "(`gzip -t FILE` for .gz files); re-download it or remove it",
                )
            )
            continue
        if ff.kind == "reviews":
            size.interactions += int(lines * (per_line if ff.format == "s3rec_sequences" else 1))
            size.users += lines if ff.format == "s3rec_sequences" else 0
            size.has_timestamps = size.has_timestamps or ff.has_timestamps
        elif ff.kind == "meta":
            size.items += lines
            size.has_metadata = True
    if not files:
        out.problems.append(Problem(f"the raw dump folder {raw_dir} holds no files", fix))
    elif "reviews" not in kinds and not out.problems:
        out.problems.append(
            Problem(
                f"no review file in {raw_dir} (files: {', '.join(p.name for p in files)})",
                "add a review dump (JSON lines with reviewerID/asin or user_id/parent_asin, or SASRec/S3-Rec id lines), "
                "or point CONVREC_RAW_DIR at the right folder",
            )
        )
    images = len(rawdata.local_images(raw_dir))
    described = (
        "; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items()) or "no readable file"
    )
    out.notes.append(
        f"raw folder {raw_dir}: {described}" + (f"; {images:,} images in images/" if images else "")
    )
    out.facts.update(
        raw_dir=str(raw_dir),
        raw_files={k: v for k, v in kinds.items()},
        images=images,
        skipped=[f"{n}: {why}" for n, why in skipped],
    )
    if size.interactions:
        size.users = size.users or max(size.interactions // 5, 1)  # a 5-core user has >= 5 interactions
        size.items = min(size.items or size.interactions // 5, max(size.interactions // 5, 1)) or 1
    return out, size


# --- the time estimate ----------------------------------------------------------------------------


IMAGE_DIM = 2048  # a ResNet-50 image vector


@dataclass
class DataSize:
    """What the time of one epoch depends on."""

    users: int
    items: int
    train_rows: int
    has_context: bool
    has_attributes: bool
    source: str  # where the numbers come from, in words
    lengths: np.ndarray | None = None  # training history length per user, when known
    has_images: bool = False  # item image vectors that ConvRec's ``features: auto`` would read


def size_from_duckdb(conn) -> DataSize | None:
    """The prepared data an earlier run left in DuckDB (this run rebuilds it), or None."""
    from convrec_dagster.data.dataset import images_available
    from convrec_dagster.data.tables import table_exists

    if not all(table_exists(conn, t) for t in ("user_index", "item_index", "sequences")):
        return None
    users, items = (
        int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ("user_index", "item_index")
    )
    train_rows, rows, with_ts = conn.execute(
        "SELECT count(*) FILTER (WHERE split = 'train'), count(*), count(ts) FROM sequences"
    ).fetchone()
    lengths = conn.execute(
        "SELECT count(*) FILTER (WHERE split = 'train') FROM sequences GROUP BY user_idx"
    ).fetchnumpy()
    attributes = (
        table_exists(conn, "item_attributes")
        and int(conn.execute("SELECT count(*) FROM item_attributes WHERE attribute_id > 0").fetchone()[0]) > 0
    )
    if not users or not items:
        return None
    return DataSize(
        users,
        items,
        int(train_rows),
        bool(rows) and with_ts == rows,
        attributes,
        "the data an earlier run prepared in DuckDB (this run rebuilds it from the raw files)",
        next(iter(lengths.values())),
        images_available(conn),
    )


def size_from_raw(raw: RawSize, pretrained_weights: bool = False) -> DataSize:
    """``pretrained_weights``: a ResNet-50 weights file is configured, so items with metadata are
    taken to have image vectors that ConvRec reads (without one ``features: auto`` leaves images out)."""
    return DataSize(
        raw.users,
        max(raw.items, 2),
        max(raw.interactions - 2 * raw.users, raw.users),
        raw.has_timestamps,
        raw.has_metadata,
        "an upper bound from the raw files' sizes (the 5-core filter keeps fewer users, "
        "items and interactions)",
        has_images=raw.has_metadata and pretrained_weights,
    )


def _synthetic(size: DataSize, n_users: int, seed: int = 0):
    """A RecData with the catalogue and features of ``size`` and ``n_users`` users of 4 interactions
    (2 training rows, validation, test): one training example each, whatever the scheme."""
    from models.data import RecData

    rng = np.random.default_rng(seed)
    n_items = int(size.items)
    items = rng.integers(1, n_items + 1, 4 * n_users).astype(np.int64)
    data = RecData(
        n_users=n_users,
        n_items=n_items,
        user_ptr=np.concatenate([[0], np.arange(0, 4 * n_users + 1, 4)]),
        items=items,
        is_eval_user=np.concatenate([[False], np.ones(n_users, bool)]),
        eval_negatives=rng.integers(1, n_items + 1, (n_users + 1, 100)),
        proxy_ids=np.arange(n_items + 1, dtype=np.int64),
        n_proxy=n_items + 2,
        info={"fingerprint": "preflight"},
    )
    if size.has_context:
        data.context = rng.random((len(items), 6)).astype(np.float32)
        ymd = np.stack(
            [
                rng.integers(2010, 2015, len(items)),
                rng.integers(1, 13, len(items)),
                rng.integers(1, 29, len(items)),
            ],
            1,
        ).astype(np.float32)
        data.ymd = ymd
    if size.has_attributes:  # 5 attributes per item, as on the Amazon dumps
        per_item = 5
        data.attr_ptr = np.concatenate([[0], np.arange(0, (n_items + 1) * per_item, per_item)]).astype(
            np.int64
        )
        data.n_attrs = max(10, n_items // 50)
        data.attr_ids = rng.integers(1, data.n_attrs + 1, n_items * per_item).astype(np.int64)
    if size.has_images:  # ResNet-50's 2,048-dim vectors
        data.image_features = rng.standard_normal((n_items + 1, IMAGE_DIM)).astype(np.float32)
        data.image_features[0] = 0.0
    return data


def time_batches(
    name: str, settings: dict, size: DataSize, device, precision: str = "fp32"
) -> tuple[float, float]:
    """(seconds per training batch, seconds of validation per evaluated user) of model ``name`` with
    ``settings`` (a resolved training config) on synthetic data of ``size``: one warm-up batch, then the
    mean of TIMED_BATCHES; then validation under the config's ``valid_protocol``, timed on its first users
    (``models.train.validation_seconds``; a full-ranking validation scores the whole catalogue per user)."""
    import torch

    from convrec_dagster.data.training_setup import mutual_partner, train_config
    from models.registry import build_model, spec
    from models.train import mutual_pair, step_times, validation_seconds

    batch = int(settings["batch_size"])
    data = _synthetic(size, batch * (TIMED_BATCHES + 1))
    if spec(name).item_features:
        features = {(True, True): "both", (True, False): "attributes", (False, True): "image"}
        settings = {**settings, "features": features.get((size.has_attributes, size.has_images), "none")}
    model_config = spec(name).config.from_settings(settings)
    config = train_config(settings)
    torch.manual_seed(0)
    model = build_model(name, data, model_config).to(device)
    partner = mutual_partner(name, data, model_config, config, log=lambda _: None)
    trained = mutual_pair(model, partner, config).to(device)  # under mutual learning two copies train
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr)
    marks = step_times(
        trained, optimizer, data, config, torch.device(device), precision,
        lambda done, spent: spent > MAX_ESTIMATE_S and done >= 2,
    )  # fmt: skip
    steps = marks[1:]
    if len(steps) >= 2:
        per_batch = (steps[-1] - steps[0]) / (len(steps) - 1)
    else:
        per_batch = steps[0] - marks[0] if steps else 0.0
    valid_s = validation_seconds(model, data, torch.device(device), precision, config)
    return per_batch, valid_s / max(len(data.eval_users()), 1)


def examples_per_epoch(name: str, settings: dict, size: DataSize) -> int:
    positionwise = name == "sasrec"
    if settings["scheme"] == "all_cuts" and not positionwise:
        return max(size.train_rows - size.users, 1)
    return max(size.users, 1)


def fmt_minutes(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * HOUR_S:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / HOUR_S:.1f} h"


def estimate_model(name: str, budget: str, settings: dict, size: DataSize, device, precision: str) -> dict:
    """The expected training time of one model: measured seconds per batch x batches per epoch x
    epochs, capped by the time budget; early stopping can end it sooner. An ensemble of seeds
    (``ensemble_size`` > 1) is timed at each member's share of the threads where its members train side by
    side (``ensemble_training.member_threads``), and takes that many times as long where they take turns."""
    import torch

    from convrec_dagster.data.ensemble_training import member_threads

    members = int(settings.get("ensemble_size") or 1)
    side_by_side, threads = member_threads(members, device, int(settings.get("num_threads") or 0))
    before = torch.get_num_threads()
    try:
        if members > 1 and side_by_side:
            torch.set_num_threads(threads)
        per_batch, valid_per_user = time_batches(name, settings, size, device, precision)
    finally:
        torch.set_num_threads(before)
    batches = math.ceil(examples_per_epoch(name, settings, size) / int(settings["batch_size"]))
    from convrec_dagster.data.training_setup import train_config
    from models.train import validated_user_count

    # every user with a validation target once per epoch, or the sample that max_validation_scores allows
    valid_users = validated_user_count(size.users, size.items, train_config(settings))
    valid_per_epoch = valid_per_user * valid_users
    per_epoch = per_batch * batches + valid_per_epoch
    epochs = int(settings["max_epochs"])
    turns = members if members > 1 and not side_by_side else 1  # each member's time budget is its own
    total = per_epoch * epochs * turns
    cap = float(settings.get("time_budget_s") or 0.0) * turns
    capped = bool(cap) and total > cap
    return {
        "model": name,
        "budget": budget,
        "max_epochs": epochs,
        "patience": int(settings["patience"]),
        "batches_per_epoch": batches,
        "seconds_per_batch": round(per_batch, 4),
        "seconds_per_epoch": round(per_epoch, 1),
        "validation_seconds_per_epoch": round(valid_per_epoch, 1),
        "valid_protocol": settings.get("valid_protocol", "sampled_100"),
        "validated_users": valid_users,
        "expected_s": round(min(total, cap) if capped else total, 1),
        "capped_by_time_budget": capped,
        "max_len": int(settings["max_len"]),
        "loss": settings["loss"],
        "n_negatives": int(settings["n_negatives"]),
        "ensemble_size": members,
        "ensemble_side_by_side": members > 1 and side_by_side,
    }


def estimate_lines(
    estimates: list[dict], size: DataSize, device_type: str
) -> tuple[list[str], list[str], float]:
    """(log lines, advice, total seconds) for the estimates of every model."""
    total = sum(e["expected_s"] for e in estimates)
    lines = [
        f"training time estimate: time per epoch measured by timing {TIMED_BATCHES} training batches of each "
        f"model on synthetic data of this size ({size.items:,} items, {size.users:,} users, {size.train_rows:,} "
        f"training rows: {size.source}), plus one validation pass per epoch timed on a batch of users"
    ]
    for e in estimates:
        lines.append(
            f"  {e['model']}: budget {e['budget']}, at most {e['max_epochs']} epochs x ~{fmt_minutes(e['seconds_per_epoch'])} "
            f"({e['batches_per_epoch']:,} batches of {e['seconds_per_batch'] * 1000:.0f} ms"
            + (
                f" + {fmt_minutes(e['validation_seconds_per_epoch'])} of {e.get('valid_protocol', 'sampled_100')} validation"
                + (
                    f" on a sample of {e['validated_users']:,} users"
                    if e.get("validated_users", size.users) < size.users
                    else ""
                )
                if "validation_seconds_per_epoch" in e
                else ""
            )
            + f") = {fmt_minutes(e['expected_s'])}"
            + (" (capped by the time budget)" if e["capped_by_time_budget"] else "")
            + f"; early stopping after {e['patience']} epochs without gain"
            + (
                f"; an ensemble of {e['ensemble_size']} seeds, "
                + (
                    "side by side (timed at their share of the threads)"
                    if e["ensemble_side_by_side"]
                    else "in turn"
                )
                if e.get("ensemble_size", 1) > 1
                else ""
            )
        )
    lines.append(f"  expected total: at most {fmt_minutes(total)} of training and validation")
    advice = []
    if device_type == "cpu" and total > HOUR_S:
        advice.append(
            f"the training estimate is {fmt_minutes(total)} on CPU. For a quicker first result: set `budget: sample` "
            "on the training steps (minutes; lower accuracy), or lower `max_epochs` / set `time_budget_min` per model, "
            "or train on a GPU (resources.torch_device.config.device: cuda). A finished model is reused by later runs "
            "with unchanged config and data"
        )
    return lines, advice, total
