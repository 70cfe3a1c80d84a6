"""Pictures: landmarks drawn on images, image grids, loss curves and evaluation plots.

Conventions (method.md section 8): images are (B, 3, H, W) float in [0, 1]; points are (x, y)
normalised to [-1, 1], where -1 / +1 are the centres of the border pixels, so pixel column
``u = (x + 1) / 2 * (W - 1)``.

Landmark k always gets colour ``LANDMARK_COLORS[k % len(LANDMARK_COLORS)]``, in every picture
fastlmk writes (training samples, evaluation, detect overlays), so a landmark can be followed
from one picture to the next.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F

# Twenty well-separated colours (matplotlib's tab10 followed by a darker/brighter second set),
# RGB in [0, 1]. Landmark k uses entry k % 20.
LANDMARK_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    for h in (
        "e6194b", "3cb44b", "ffe119", "4363d8", "f58231", "911eb4", "42d4f4", "f032e6",
        "bfef45", "fabed4", "469990", "dcbeff", "9a6324", "fffac8", "800000", "aaffc3",
        "808000", "ffd8b1", "000075", "a9a9a9",
    )
)


def landmark_color(k: int) -> tuple[float, float, float]:
    """RGB colour in [0, 1] of landmark index ``k`` (fixed for the whole package)."""
    return LANDMARK_COLORS[k % len(LANDMARK_COLORS)]


def _check_images(fn: str, name: str, images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"fastlmk.viz.{fn}: {name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"fastlmk.viz.{fn}: {name} must have shape (B, 3, H, W) or (B, 1, H, W), "
                         f"got {tuple(images.shape)}")
    images = images.detach().float()
    if images.shape[1] == 1:  # grey (e.g. heatmaps): show as grey RGB
        images = images.expand(-1, 3, -1, -1)
    return images.clamp(0.0, 1.0)


def draw_landmarks(images: torch.Tensor, points: torch.Tensor, radius: float | None = None,
                   outline: bool = True) -> torch.Tensor:
    """Draw each landmark as an anti-aliased filled disc in its fixed colour.

    Args:
        images: (B, 3, H, W) in [0, 1] (a single (3, H, W) image and (B, 1, H, W) grey images
            are accepted too).
        points: (B, K, 2) (x, y) in [-1, 1]; non-finite points are not drawn. Points outside the
            image are drawn clipped (only the part of the disc inside shows).
        radius: disc radius in pixels; default ``max(1.5, min(H, W) / 50)``.
        outline: draw a 1-pixel dark ring around each disc so it reads on any background.

    Returns:
        (B, 3, H, W) float32 copy of the images with the markers, on the images' device.

    The disc coverage of a pixel at distance d from the point is ``clamp(r + 0.5 - d, 0, 1)``
    (a one-pixel linear ramp), which is what makes the edges smooth.
    """
    images = _check_images("draw_landmarks", "images", images).clone()
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"fastlmk.viz.draw_landmarks: points must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() == 2:
        points = points.unsqueeze(0)
    B, _, H, W = images.shape
    if points.dim() != 3 or points.shape[-1] != 2 or points.shape[0] != B:
        raise ValueError(f"fastlmk.viz.draw_landmarks: points must have shape (B={B}, K, 2), "
                         f"got {tuple(points.shape)}")
    if radius is None:
        radius = max(1.5, min(H, W) / 50.0)
    radius = float(radius)
    if not radius > 0:
        raise ValueError(f"fastlmk.viz.draw_landmarks: radius must be > 0, got {radius}")
    ring = 1.0 if outline else 0.0

    dev = images.device
    pts = points.detach().to(dev, torch.float32)
    px = (pts[..., 0] + 1) * 0.5 * (W - 1)  # (B, K) pixel column
    py = (pts[..., 1] + 1) * 0.5 * (H - 1)  # (B, K) pixel row
    ok = torch.isfinite(px) & torch.isfinite(py)
    px = torch.where(ok, px, torch.full_like(px, -1e6))  # far away: zero coverage
    py = torch.where(ok, py, torch.full_like(py, -1e6))
    xs = torch.arange(W, device=dev, dtype=torch.float32).view(1, 1, W)
    ys = torch.arange(H, device=dev, dtype=torch.float32).view(1, H, 1)
    for k in range(pts.shape[1]):
        d = torch.sqrt((xs - px[:, k].view(B, 1, 1)) ** 2 + (ys - py[:, k].view(B, 1, 1)) ** 2)  # (B, H, W)
        fill = (radius + 0.5 - d).clamp(0.0, 1.0).unsqueeze(1)  # (B, 1, H, W) coverage
        if ring > 0:
            edge = (radius + ring + 0.5 - d).clamp(0.0, 1.0).unsqueeze(1)
            images = images * (1 - edge) + 0.05 * edge  # near-black ring under the disc
        color = torch.tensor(landmark_color(k), device=dev).view(1, 3, 1, 1)
        images = images * (1 - fill) + color * fill
    return images


def _to_uint8_hwc(image: torch.Tensor):
    """(3, H, W) in [0, 1] -> numpy uint8 (H, W, 3)."""
    return (image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def save_grid(rows: list[torch.Tensor], path, points: list[torch.Tensor | None] | None = None,
              row_titles: list[str] | None = None, max_cols: int = 8, pad: int = 2,
              cell_size: int | None = None, radius: float | None = None) -> Path:
    """Write a PNG with one row per image batch, optionally with landmarks drawn per row.

    Args:
        rows: list of (B, 3, H, W) (or (B, 1, H, W)) tensors in [0, 1]; rows may differ in B and
            in H, W: every image is resized (bilinear, anti-aliased) to one cell size.
        path: output file (".png"); parent folders are created.
        points: None, or one entry per row: (B, K, 2) in [-1, 1] or None for no landmarks.
        row_titles: None, or one title per row, written in a left margin.
        max_cols: show at most this many images per row (the first ones).
        pad: white pixels between cells.
        cell_size: side of a cell in pixels; default the largest H/W among the rows (at least 64).
        radius: marker radius in pixels of the cell (default as in :func:`draw_landmarks`).

    Returns:
        The path written.
    """
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(rows, torch.Tensor):
        rows = [rows]
    if not isinstance(rows, (list, tuple)) or len(rows) == 0:
        raise ValueError("fastlmk.viz.save_grid: rows must be a non-empty list of (B, 3, H, W) tensors")
    rows = [_check_images("save_grid", f"rows[{i}]", r) for i, r in enumerate(rows)]
    if points is not None and len(points) != len(rows):
        raise ValueError(f"fastlmk.viz.save_grid: points must have one entry per row ({len(rows)}), got {len(points)}")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"fastlmk.viz.save_grid: row_titles must have one entry per row ({len(rows)}), "
                         f"got {len(row_titles)}")
    if isinstance(max_cols, bool) or not isinstance(max_cols, int) or max_cols < 1:
        raise ValueError(f"fastlmk.viz.save_grid: max_cols must be an int >= 1, got {max_cols!r}")
    cell = cell_size or max(64, max(max(r.shape[-2:]) for r in rows))
    ncols = min(max_cols, max(r.shape[0] for r in rows))

    font = None
    margin = 0
    if row_titles is not None:
        font_px = max(10, min(18, cell // 7))
        try:
            font = ImageFont.load_default(size=font_px)  # scalable font (Pillow >= 10.1)
        except TypeError:
            font = ImageFont.load_default()
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        widest = max((probe.textbbox((0, 0), str(t), font=font)[2] for t in row_titles), default=0)
        margin = min(widest + 2 * pad + 6, 3 * cell)

    width = margin + ncols * (cell + pad) + pad
    height = len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        row = row[:ncols].cpu()
        if row.shape[0] == 0:
            continue
        if row.shape[-2:] != (cell, cell):
            row = F.interpolate(row, size=(cell, cell), mode="bilinear", align_corners=False,
                                antialias=True).clamp(0, 1)
        pts = points[i] if points is not None else None
        if pts is not None:
            row = draw_landmarks(row, pts[:ncols].cpu(), radius=radius)
        top = pad + i * (cell + pad)
        for j in range(row.shape[0]):
            canvas.paste(Image.fromarray(_to_uint8_hwc(row[j])), (margin + pad + j * (cell + pad), top))
        if row_titles is not None:
            text = str(row_titles[i])
            box = draw.textbbox((0, 0), text, font=font)
            draw.text((pad + 2, top + (cell - (box[3] - box[1])) // 2), text, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


# --- plots (matplotlib, Agg backend: works without a display) --------------------------------
def pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


# Columns of a training log that are not losses (matched case-insensitively).
_NON_LOSS = {"step", "iter", "iteration", "epoch", "time", "elapsed", "elapsed_s", "wall", "wall_s",
             "lr", "learning_rate", "images_per_s", "img_per_s", "img/s", "images/s", "it/s", "rank"}


def loss_columns(columns: list[str]) -> list[str]:
    """The columns of a training log that are losses: every column except step / time / learning
    rate / throughput ones (``step, loss, mse, perceptual, lr, images_per_s, elapsed_s`` ->
    ``loss, mse, perceptual``)."""
    return [c for c in columns if c.lower() not in _NON_LOSS]


def ema(values: list[float], alpha: float) -> list[float]:
    """Bias-corrected exponential moving average (like TensorBoard's smoothing); NaN-aware."""
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            acc = alpha * acc + (1 - alpha) * v
            weight = alpha * weight + (1 - alpha)
        out.append(acc / weight if weight > 0 else float("nan"))
    return out


def plot_losses(csv_path, out_png, smoothing: float | None = None, columns: list[str] | None = None) -> Path:
    """Plot the loss columns of a training log CSV on a log-scale y axis.

    Args:
        csv_path: CSV with a header row. The x axis is the ``step`` column (or ``iter`` /
            ``iteration`` / ``epoch``, else the row number). Loss columns are the numeric columns
            that are not step/time/lr/throughput columns (:func:`loss_columns`) and have a
            positive value.
        out_png: output PNG path (parent folders are created).
        smoothing: EMA factor in [0, 1) for the smoothed curve; default picks one from the log
            length (about 1/50th of the run).
        columns: plot exactly these columns instead.

    Each column is drawn faintly as logged and strongly smoothed, in the same colour. Values
    <= 0 cannot be shown on a log axis and are left out.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"fastlmk.viz.plot_losses: no such file: {csv_path}")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        records = list(reader)
    if not header:
        raise ValueError(f"fastlmk.viz.plot_losses: {csv_path} has no header row")

    def numeric(col):
        vals = []
        for r in records:
            try:
                vals.append(float(r.get(col) or "nan"))
            except ValueError:
                return None
        return vals

    table = {c: numeric(c) for c in header}
    table = {c: v for c, v in table.items() if v is not None}
    xcol = next((c for c in header if c.lower() in ("step", "iter", "iteration", "epoch") and c in table), None)
    if columns is not None:
        missing = [c for c in columns if c not in table]
        if missing:
            raise ValueError(f"fastlmk.viz.plot_losses: columns {missing} not numeric columns of {csv_path} "
                             f"(it has {header})")
        ycols = list(columns)
    else:
        ycols = loss_columns([c for c in header if c in table and c != xcol])
        # a column that is never positive (e.g. a disabled loss term) cannot be drawn on a log axis
        ycols = [c for c in ycols if any(v > 0 for v in table[c])]
    if not ycols:
        raise ValueError(f"fastlmk.viz.plot_losses: {csv_path} has no loss column (header: {header})")
    xs = table[xcol] if xcol else list(range(len(records)))
    if smoothing is None:
        smoothing = min(0.98, max(0.0, 1.0 - 50.0 / max(len(records), 1)))
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"fastlmk.viz.plot_losses: smoothing must be in [0, 1), got {smoothing}")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        for i, c in enumerate(ycols):
            color = f"C{i % 10}"
            raw = [v if v > 0 else float("nan") for v in table[c]]
            ax.plot(xs, raw, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, ema(raw, smoothing), color=color, linewidth=1.8, label=c)
        ax.set_yscale("log")
        ax.set_xlabel(xcol or "row")
        ax.set_ylabel("loss (log scale)")
        ax.set_title(f"{csv_path.name}: faint = logged, bold = EMA {smoothing:.2f}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        return _save_figure(fig, out_png)
    finally:
        plt.close(fig)


def _save_figure(fig, out_png) -> Path:
    """tight_layout, create the folder, write the PNG; -> its path."""
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png")
    return out_png


def plot_evaluation(results: dict, out_png, title: str | None = None) -> Path:
    """Plot an evaluation result of :func:`fastlmk.evaluate.evaluate_landmarks`.

    Left: forward error (% of inter-ocular distance) against the number of training images used
    to fit the regressor, both variants, with the spread over random subsets as error bars and
    the mean-shape baseline / supervised upper bound as horizontal lines. Right: error per
    annotated landmark (regressor fitted on all training images), both variants.
    """
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, gridspec_kw={"width_ratios": [1.3, 1]})
    try:
        rows = results["nshot"]
        ns = [r["n"] for r in rows]
        for j, (variant, label) in enumerate((("imm", "IMM: no bias, no ridge"), ("saic", "SAIC: bias + ridge"))):
            means = [r[variant]["mean"] for r in rows]
            stds = [r[variant]["std"] for r in rows]
            ax1.errorbar(ns, means, yerr=stds, marker="o", color=f"C{j}", capsize=3, label=label)
        if "mean_shape" in results:
            ax1.axhline(results["mean_shape"], color="0.4", linestyle="--",
                        label=f"mean shape {results['mean_shape']:.2f}")
        sup = results.get("supervised")
        if sup:
            ax1.axhline(sup["error"], color="C2", linestyle=":", label=f"supervised {sup['error']:.2f}")
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        from matplotlib.ticker import FormatStrFormatter
        ax1.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax1.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax1.set_xlabel("training images used to fit the regressor")
        ax1.set_ylabel("test error, % of inter-ocular distance")
        ax1.set_title("N-shot regression")
        ax1.grid(True, which="both", alpha=0.3)
        ax1.legend(fontsize=8)

        per = results["per_landmark"]
        names = per["names"]
        groups = [("IMM", per["imm"]), ("SAIC", per["saic"])]
        if sup and sup.get("per_landmark"):
            groups.append(("supervised", sup["per_landmark"]))
        width = 0.8 / len(groups)
        xs = list(range(len(names)))
        for j, (label, vals) in enumerate(groups):
            ax2.bar([x + (j - (len(groups) - 1) / 2) * width for x in xs], vals, width=width, color=f"C{j}",
                    label=label)
        ax2.set_xticks(xs)
        ax2.set_xticklabels(names, rotation=20, fontsize=8)
        ax2.set_ylabel("test error, % of inter-ocular distance")
        ax2.set_title("per annotated landmark (all training images)")
        ax2.grid(True, axis="y", alpha=0.3)
        ax2.legend(fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
        return _save_figure(fig, out_png)
    finally:
        plt.close(fig)


__all__ = ["LANDMARK_COLORS", "draw_landmarks", "landmark_color", "loss_columns",
           "plot_evaluation", "plot_losses", "save_grid"]
