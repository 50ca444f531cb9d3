"""Small matplotlib figures as markdown images (object API on the Agg canvas, no pyplot state).

The one place that turns a figure into PNG bytes (:func:`png`) and PNG bytes into a markdown image
(:func:`markdown_image`); the report (``report.py``) and the assets' metadata plots use both.
"""

from __future__ import annotations

import base64
import io

import numpy as np


def figure(
    width: float, height: float, ncols: int = 1, nrows: int = 1, dpi: int = 100, layout: str | None = None
):
    """A Figure on the Agg canvas and its axes (a flat list)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def png(fig, dpi: int | None = None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi if dpi is not None else fig.dpi)
    return buffer.getvalue()


def markdown_image(data: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"


def training_curves_markdown(history: list[dict], title: str) -> str:
    """Training loss and validation NDCG@10 / HR@10 per epoch (and full-ranking NDCG@10 where logged)."""
    fig, (ax,) = figure(6, 3.2, dpi=90)
    epochs = [h["epoch"] for h in history]
    losses = [h["loss"] for h in history]
    if any(v is not None for v in losses):
        ax.plot(epochs, losses, color="tab:blue", marker=".", label="train loss")
        ax.set_ylabel("train loss", color="tab:blue")
    other = ax.twinx()
    other.plot(
        epochs, [h["valid_NDCG@10"] for h in history], color="tab:orange", marker=".", label="valid NDCG@10"
    )
    other.plot(
        epochs, [h["valid_HR@10"] for h in history], color="tab:green", marker=".", label="valid HR@10"
    )
    if any("valid_full_NDCG@10" in h for h in history):  # valid_protocol full: what picked the epoch
        other.plot(
            epochs,
            [h.get("valid_full_NDCG@10") for h in history],
            color="tab:red",
            marker=".",
            label="valid full-ranking NDCG@10",
        )
    other.set_ylabel("validation metric")
    other.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    fig.tight_layout()
    return markdown_image(png(fig), title)


def length_histogram_markdown(lengths, bins: int, title: str, log_tail: bool = True) -> str:
    """Users per history length; with ``log_tail``, log-spaced bins and log axes past ``bins`` lengths."""
    lengths = np.asarray(lengths)
    fig, (ax,) = figure(6, 3.2, dpi=90)
    hi = max(int(lengths.max(initial=0)), 1)
    if log_tail:
        edges = (
            np.unique(np.geomspace(1, hi + 1, num=bins + 1).round()) if hi > bins else np.arange(1, hi + 2)
        )
    else:
        edges = min(bins, max(5, len(set(lengths.tolist()))))
    ax.hist(lengths, bins=edges, color="#4C72B0")
    if log_tail and hi > bins:  # long tail: log axes
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("interactions per user")
    ax.set_ylabel("users")
    ax.set_title(title)
    fig.tight_layout()
    return markdown_image(png(fig), title)
