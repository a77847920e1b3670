"""Plots: figures of a run's numbers (matplotlib, imported when drawing)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np



def plot_heatmap(
    matrix: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | os.PathLike[str],
    title: str,
    colorbar_label: str,
    size: tuple[float, float] | None = None,
    dpi: int = 100,
    annotate: bool | None = None,
) -> None:
    """Save a layer x head heatmap (rows: layers, columns: heads) as an image file.

    Args:
        matrix: [layers, heads] values; NaN cells are drawn grey.
        layers: the layer id of each row.
        heads: the head id of each column.
        path: where to save (the format follows the suffix, ``.png`` usually).
        title: the figure title.
        colorbar_label: the colour bar's label.
        size: (width, height) in inches; default grows with the grid.
        dpi: pixels per inch; the image is ``size * dpi`` pixels.
        annotate: write each cell's value; default for grids of at most 16 x 16.
    """
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    n_layers, n_heads = matrix.shape
    if size is None:
        size = (min(16.0, max(5.0, 0.55 * n_heads + 2.5)),
                min(14.0, max(3.5, 0.4 * n_layers + 1.8)))
    if annotate is None:
        annotate = n_layers <= 16 and n_heads <= 16
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    masked = np.ma.masked_invalid(matrix)
    image = ax.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    if n_heads <= 32:
        ax.set_xticks(range(n_heads), [str(h) for h in heads])
    if n_layers <= 48:
        ax.set_yticks(range(n_layers), [str(layer) for layer in layers])
    fig.colorbar(image, ax=ax, label=colorbar_label)
    if annotate and masked.count():
        lo, hi = float(masked.min()), float(masked.max())
        mid = (lo + hi) / 2
        for i in range(n_layers):
            for j in range(n_heads):
                value = matrix[i, j]
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7,
                            color="black" if value > mid else "white")
    fig.savefig(os.fspath(path), dpi=dpi)
