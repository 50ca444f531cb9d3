"""Images/s of the ResNet-50 feature extractor (convrec_dagster.data.images), end to end and model only.

    python -m benchmarks.images --device cpu --n-images 64 --image-size 64 \
        --out benchmarks/results/images.json

Generates N random JPEGs (at the input size) in a temporary folder and runs
``compute_image_features`` on them without a cache (random weights: speed does not depend on the
weight values). Variants: CPU fp32 (the pipeline's path) and fp32 + channels_last (model only);
CUDA fp32 and bf16 autocast, each with and without channels_last (the pipeline uses channels_last).
Reports end-to-end images/s (read + hash + decode + model) and model-only images/s, plus machine
info; writes JSON and a PNG bar plot beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info


def make_images(folder: Path, n: int, size: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    ids = [f"B{k:08d}" for k in range(n)]
    for item in ids:
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{item}.jpg", quality=90)
    return ids


def model_only(device: str, precision: str, channels_last: bool, size: int, batch: int, reps: int) -> float:
    """Forward passes on a fixed batch already on the device: images/s of the network alone."""
    import torch

    from convrec_dagster.data.images import build_feature_model, embed_batch

    model = build_feature_model(None).model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    for _ in range(2):  # warm-up (cuDNN autotune, oneDNN primitive creation)
        embed_batch(model, x, device, precision)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        embed_batch(model, x, device, precision)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return reps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64, help="network input size (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--reps", type=int, default=5, help="timed batches for the model-only figure")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    parser.add_argument("--out", default="benchmarks/results/images.json")
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)

    from convrec_dagster.data.images import compute_image_features, locate_images

    cuda = args.device.startswith("cuda")
    # (precision, channels_last, is the pipeline's own path -> also measured end to end)
    if cuda:
        variants = [
            ("fp32", False, False),
            ("fp32", True, True),
            ("bf16", False, False),
            ("bf16", True, True),
        ]
    else:
        variants = [("fp32", False, True), ("fp32", True, False)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        ids = make_images(Path(tmp), args.n_images, args.image_size)
        locations = locate_images(ids, tmp)
        for precision, channels_last, pipeline_path in variants:
            name = precision + (" + channels_last" if channels_last else "")
            # end to end only for what the pipeline runs (channels_last exactly when on CUDA)
            end_to_end = None
            if pipeline_path:
                t0 = time.perf_counter()
                result = compute_image_features(
                    locations,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    device=args.device,
                    precision=precision,
                    num_workers=args.num_workers,
                )
                wall = time.perf_counter() - t0
                end_to_end = {
                    "images_per_s": round(result.images_per_s, 2),
                    "model_images_per_s_in_pipeline": round(result.model_images_per_s, 2),
                    "wall_s_including_model_build": round(wall, 2),
                }
            per_s = model_only(
                args.device, precision, channels_last, args.image_size, args.batch_size, args.reps
            )
            runs.append(
                {"variant": name, "model_only_images_per_s": round(per_s, 2), "end_to_end": end_to_end}
            )
            print(
                f"{name:>22}: model {per_s:8.1f} images/s"
                + (f", end to end {end_to_end['images_per_s']:8.1f} images/s" if end_to_end else "")
            )

    report = {
        "benchmark": "images",
        "machine": machine_info(args.device),
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot_path = out.with_suffix(".png")
    _plot(report, plot_path)
    print(f"wrote {out} and {plot_path}")
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    labels = [r["variant"] for r in runs]
    model = [r["model_only_images_per_s"] for r in runs]
    e2e = [(r["end_to_end"] or {}).get("images_per_s", 0.0) for r in runs]
    x = np.arange(len(runs))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, model, 0.4, label="model only")
    ax.bar(x + 0.2, e2e, 0.4, label="end to end (read, hash, decode, model)")
    ax.set_xticks(x, labels)
    ax.set_ylabel("images / s")
    p = report["params"]
    m = report["machine"]
    ax.set_title(
        f"ResNet-50 features, {p['image_size']}px, batch {p['batch_size']}, {m['device_name']}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
