"""ResNet-50 image features (2,048-d pooled output) for items, with a content-hash cache.

Pure PyTorch / torchvision / PIL, no Dagster. Steps:

1. ``locate_images``: each item's image is ``<raw_dir>/images/<item_id>.{jpg,jpeg,png}`` or, failing
   that, ``items.image_ref`` when it is a local file (absolute, or relative to the dump folder).
   URLs are never fetched (no network at run time): they are counted as ``remote``.
2. ``compute_image_features``: read each found file once, hash its bytes (sha256), look the hash up
   in the cache, decode + resize + ImageNet-normalise the misses, run them through ResNet-50 without
   its classifier in batches (bf16 autocast and channels_last on CUDA), and store the new vectors.
   Items with no image get a zero vector and ``has_image=False``; files PIL cannot decode are
   reported as ``corrupt`` with the reason (the asset quarantines them) and get the same zero vector.

Cache: one Parquet file per (weights identity, input size) under the cache folder (the asset uses
``CONVREC_HOME/artifacts/features/image_cache/``), columns ``content_hash`` and ``feature``
(float32 list). The key is therefore (content sha256, weights identity, image size); a changed file
has a new hash and is recomputed, an unchanged one is read back. Old entries are kept, so going back
to an earlier image version is free too.

Weights come only from a local file: a torchvision ResNet-50 ``state_dict`` loaded with
``torch.load(path, weights_only=True)``. Without one the network is randomly initialised with a
fixed seed and the result carries ``pretrained=False`` and a warning for the caller to log.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from convrec_dagster.data.outcome import CheckOutcome
from convrec_dagster.data.tables import item_coverage

FEATURE_DIM = 2048
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
RANDOM_WEIGHTS_WARNING = (
    "NO PRETRAINED WEIGHTS: ResNet-50 image features come from a RANDOMLY INITIALISED network "
    f"(seed {RANDOM_INIT_SEED}); they carry little visual meaning. Set weights_path to a local "
    "torchvision ResNet-50 state_dict (.pth) to get real features."
)

OUTSIDE_DUMP = "image_path_outside_dump"
ProgressCallback = Callable[[int, int, float], None]  # (images done, images total, images/s)


@dataclass
class ImageLocation:
    item_id: str
    status: str  # "found", "missing", "remote", "outside" (resolves outside the dump: never opened)
    path: str | None = None  # local path when found; the URL when remote


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``root`` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop, a path that cannot be resolved
        return False


def locate_images(
    item_ids: Sequence[str], raw_dir: Path | str, image_refs: dict[str, str | None] | None = None
) -> list[ImageLocation]:
    """Where each item's image is. The dump's ``images/`` folder wins over ``image_ref``.

    File access is confined to the dump folder: a reference (absolute, ``~``, ``file://``, ``..``)
    or a symlink that resolves outside it gets status ``outside`` and is never opened.
    """
    raw_dir = Path(raw_dir)
    images_dir = raw_dir / "images"
    listing: dict[str, Path] = {}
    if images_dir.is_dir():
        for entry in os.scandir(images_dir):  # one directory listing instead of 3 stats per item
            stem, suffix = os.path.splitext(entry.name)
            if suffix in IMAGE_SUFFIXES and entry.is_file() and stem not in listing:
                listing[stem] = Path(entry.path)
    image_refs = image_refs or {}
    out = []
    for item_id in item_ids:
        if _SAFE_ID.match(item_id) and item_id in listing:
            path = listing[item_id]
            status = "found" if _inside(path, raw_dir) else "outside"  # a symlink out of the dump
            out.append(ImageLocation(item_id, status, str(path)))
            continue
        ref = image_refs.get(item_id)
        ref = ref.strip() if isinstance(ref, str) else None
        if ref and _URL.match(ref) and not ref.lower().startswith("file://"):
            out.append(ImageLocation(item_id, "remote", ref))
            continue
        if ref:
            local = Path(ref[len("file://") :] if ref.lower().startswith("file://") else ref)
            if ref.startswith("~") or local.is_absolute() or not _inside(raw_dir / local, raw_dir):
                out.append(ImageLocation(item_id, "outside", ref))
                continue
            local = raw_dir / local
            if local.is_file():
                out.append(ImageLocation(item_id, "found", str(local)))
                continue
        out.append(ImageLocation(item_id, "missing", None))
    return out


# --- model -----------------------------------------------------------------------------------


@dataclass
class FeatureModel:
    model: object  # torch.nn.Module
    pretrained: bool
    weights_path: str
    weights_id: str
    warning: str | None = None


def file_sha256(path: Path | str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_identity(weights_path: str | Path | None) -> str:
    """Cache key part for the weights: the file's sha256, or the random-init seed + torch version."""
    import torch

    if weights_path:
        return "sha256-" + file_sha256(weights_path)
    return f"random-seed{RANDOM_INIT_SEED}-torch{torch.__version__}"


def build_feature_model(
    weights_path: str | Path | None = None, weights_id: str | None = None
) -> FeatureModel:
    """torchvision ResNet-50 with ``fc = Identity`` (2,048-d output), in eval mode on CPU.

    ``weights_id``: the file's identity when the caller has already hashed it."""
    import torch
    import torchvision

    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"ResNet-50 weights file {path} does not exist. Set weights_path to a local "
                "torchvision ResNet-50 state_dict (.pth), or to '' for random initialisation."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, non-tensor payloads rejected by weights_only
            raise ValueError(
                f"Could not load {path} with torch.load(weights_only=True): {exc}. Expected a "
                "torchvision ResNet-50 state_dict saved with torch.save(model.state_dict(), path)."
            ) from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict.")
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # classifier unused
        with torch.device("meta"):  # no random init of 25M parameters that are overwritten anyway
            model = torchvision.models.resnet50(weights=None)
        model.fc = torch.nn.Identity()
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except (RuntimeError, TypeError, KeyError) as exc:
            raise ValueError(f"{path} is not a torchvision ResNet-50 state_dict: {exc}") from exc
        result = FeatureModel(model, True, str(path), weights_id or weights_identity(path))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = torchvision.models.resnet50(weights=None)
        model.fc = torch.nn.Identity()
        result = FeatureModel(
            model,
            False,
            "",
            weights_identity(None),
            warning=RANDOM_WEIGHTS_WARNING,
        )
    result.model.eval()
    return result


# --- images ----------------------------------------------------------------------------------


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """Bytes -> float32 (3, S, S) in [0, 1]: RGB, shorter side to S*256/224, centre crop S."""
    from PIL import Image

    resize = max(image_size, round(image_size * 256 / 224))
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (resize, resize))  # JPEG: decode at a reduced scale >= resize (fast)
        img.load()
        img = img.convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


class FeatureCache:
    """Parquet cache of feature vectors keyed by content hash, one file per (weights, size)."""

    def __init__(self, cache_dir: Path | str, weights_id: str, image_size: int):
        key = hashlib.sha256(weights_id.encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"resnet50_{key}_s{image_size}.parquet"
        self.entries: dict[str, np.ndarray] = {}
        self.new: dict[str, np.ndarray] = {}
        if self.path.is_file():
            import pyarrow.parquet as pq

            table = pq.read_table(self.path)
            hashes = table.column("content_hash").to_pylist()
            flat = table.column("feature").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vectors = np.asarray(flat, dtype=np.float32).reshape(len(hashes), FEATURE_DIM)
            self.entries = dict(zip(hashes, vectors))

    def get(self, content_hash: str) -> np.ndarray | None:
        return self.entries.get(content_hash)

    def put(self, content_hash: str, vector: np.ndarray) -> None:
        self.entries[content_hash] = vector
        self.new[content_hash] = vector

    def save(self) -> None:
        if not self.new:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        hashes = list(self.entries)
        flat = np.stack([self.entries[h] for h in hashes]).astype(np.float32).ravel()
        table = pa.table(
            {
                "content_hash": pa.array(hashes, pa.string()),
                "feature": pa.FixedSizeListArray.from_arrays(pa.array(flat), FEATURE_DIM),
            }
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(self.path)  # atomic: a crash never leaves a half-written cache
        self.new = {}


@dataclass
class ImageFeatures:
    """One row per requested item, in order; ``features`` is float32 (n, 2048)."""

    item_ids: list[str]
    status: list[str]  # found / missing / remote / corrupt
    image_path: list[str | None]
    content_hash: list[str | None]
    features: np.ndarray
    corrupt: list[tuple[str, str, str]] = field(default_factory=list)  # (item_id, path, reason)
    pretrained: bool = False
    weights_path: str = ""
    weights_id: str = ""
    warning: str | None = None
    image_size: int = 224
    device: str = "cpu"
    precision: str = "fp32"
    cache_hits: int = 0
    computed: int = 0
    compute_seconds: float = 0.0  # model forward passes only
    wall_seconds: float = 0.0  # reading, hashing, decoding and model together
    model_build_seconds: float = 0.0  # building / loading the network (not in images_per_s)

    @property
    def has_image(self) -> np.ndarray:
        return np.array([s == "found" for s in self.status], dtype=bool)

    def counts(self) -> dict[str, int]:
        return {k: self.status.count(k) for k in ("found", "missing", "corrupt", "remote", "outside")}

    @property
    def images_per_s(self) -> float:
        """Found images handled per second, end to end (cache hits included)."""
        handled = self.counts()["found"] + self.counts()["corrupt"]
        seconds = self.wall_seconds - self.model_build_seconds
        return handled / seconds if seconds > 0 else 0.0

    @property
    def model_images_per_s(self) -> float:
        """Images per second through the network alone (cache misses only)."""
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0


def embed_batch(model, batch: np.ndarray, device, precision: str = "fp32") -> np.ndarray:
    """(B, 3, S, S) in [0, 1] -> (B, 2048) float32 on CPU."""
    import torch

    x = torch.from_numpy(batch).to(device, non_blocking=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    cuda = torch.device(device).type == "cuda"
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with (
        torch.inference_mode(),
        torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda and precision == "bf16"),
    ):
        out = model(x)
    return out.float().cpu().numpy()


def prepare_model(model, device):
    """Move to ``device``; channels_last on CUDA (faster convolutions with bf16 tensor cores)."""
    import torch

    model = model.to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def compute_image_features(
    locations: Sequence[ImageLocation],
    *,
    weights_path: str | Path | None = None,
    image_size: int = 224,
    batch_size: int = 64,
    device="cpu",
    precision: str = "fp32",
    cache_dir: Path | str | None = None,
    num_workers: int = 2,
    progress: ProgressCallback | None = None,
    max_image_bytes: int = 20 * 2**20,
) -> ImageFeatures:
    """Feature vectors for ``locations`` (see the module docstring). ``cache_dir=None``: no cache.

    The model is only built when some image actually needs computing, so a dump without images,
    or a re-run where every image hits the cache, finishes in seconds.
    """
    import torch

    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small for ResNet-50; use at least 32.")
    n = len(locations)
    weights_id = weights_identity(weights_path)
    result = ImageFeatures(
        item_ids=[loc.item_id for loc in locations],
        status=[loc.status for loc in locations],
        image_path=[loc.path for loc in locations],
        content_hash=[None] * n,
        features=np.zeros((n, FEATURE_DIM), dtype=np.float32),
        pretrained=bool(weights_path),
        weights_path=str(weights_path or ""),
        weights_id=weights_id,
        image_size=image_size,
        device=str(device),
        precision=precision if torch.device(device).type == "cuda" else "fp32",
    )
    if not weights_path:
        result.warning = RANDOM_WEIGHTS_WARNING
    for i, loc in enumerate(locations):
        if loc.status == "outside":  # never opened, never hashed
            result.image_path[i] = None
            result.corrupt.append((loc.item_id, str(loc.path), OUTSIDE_DUMP))
    cache = FeatureCache(cache_dir, weights_id, image_size) if cache_dir else None
    found = [i for i, loc in enumerate(locations) if loc.status == "found"]
    total = len(found)
    if not total:
        return result

    model = None
    started = time.perf_counter()
    done = 0

    def load(i: int) -> tuple[int, str | None, np.ndarray | None, str | None]:
        """Read, hash and (on a cache miss) decode one image: (index, hash, pixels, error)."""
        try:
            with open(locations[i].path, "rb") as fh:
                data = fh.read(max_image_bytes + 1)
        except OSError as exc:
            return i, None, None, f"unreadable file: {exc}"
        if len(data) > max_image_bytes:
            return (
                i,
                None,
                None,
                f"image_too_large: over max_image_bytes = {max_image_bytes:,}; not read further",
            )
        digest = hashlib.sha256(data).hexdigest()
        if cache is not None and cache.get(digest) is not None:
            return i, digest, None, None
        try:
            return i, digest, decode_image(data, image_size), None
        except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, ValueError, ...
            return (
                i,
                None,
                None,
                f"cannot decode image: {type(exc).__name__}: {exc}",
            )  # no hash of a non-image

    workers = max(1, num_workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without holding the GIL
        for start in range(0, total, batch_size):
            chunk = found[start : start + batch_size]
            pixels, rows = [], []
            for i, digest, image, error in pool.map(load, chunk):
                result.content_hash[i] = digest
                if error is not None:
                    result.status[i] = "corrupt"
                    result.corrupt.append((locations[i].item_id, str(locations[i].path), error))
                elif image is None:
                    result.features[i] = cache.get(digest)
                    result.cache_hits += 1
                else:
                    pixels.append(image)
                    rows.append(i)
            if pixels:
                if model is None:
                    t0 = time.perf_counter()
                    model = prepare_model(build_feature_model(weights_path, weights_id).model, device)
                    result.model_build_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
                vectors = embed_batch(model, np.stack(pixels), device, result.precision)
                result.compute_seconds += time.perf_counter() - t0
                result.computed += len(rows)
                for i, vector in zip(rows, vectors):
                    result.features[i] = vector
                    if cache is not None:
                        cache.put(result.content_hash[i], vector)
            done += len(chunk)
            if progress is not None:
                elapsed = time.perf_counter() - started
                progress(done, total, done / elapsed if elapsed > 0 else 0.0)
    result.wall_seconds = time.perf_counter() - started
    if cache is not None:
        cache.save()
    return result


def item_image_features_cover_items(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """One row per item in `interactions` (no gaps, no duplicates, no strangers); rows without an
    image hold the zero vector and rows with one hold a non-zero vector."""
    uncovered, extra = item_coverage(conn, "item_image_features")
    duplicates = conn.execute(
        "SELECT count(*) - count(DISTINCT item_id) FROM item_image_features"
    ).fetchone()[0]
    bad_vectors = conn.execute(
        "SELECT count(*) FROM (SELECT has_image, "
        "list_max(list_transform(feature::FLOAT[], lambda x: abs(x))) AS m FROM item_image_features) "
        "WHERE (has_image AND (m IS NULL OR m = 0)) OR (NOT has_image AND m <> 0)"
    ).fetchone()[0]
    passed = uncovered == 0 and extra == 0 and duplicates == 0 and bad_vectors == 0
    return CheckOutcome(
        passed=bool(passed),
        metadata={
            "items_without_row": int(uncovered),
            "rows_not_in_interactions": int(extra),
            "duplicate_rows": int(duplicates),
            "rows_with_inconsistent_vector": int(bad_vectors),
        },
    )
