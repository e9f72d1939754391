"""The chip map: per chip, each parameter's posterior mean and 90 % interval over its neurons.

This is the figure a lab puts on the wall after characterising a chip: one row of panels per
chip, one panel per parameter, neurons along x. A dot is the posterior mean, its vertical line
the 5-95 % interval (so a tall line is a poorly identified parameter), and a red cross marks a
neuron whose trace the misspecification check flagged (its answer is not to be trusted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Chips drawn at most; larger runs draw the first ones (in id order) and say so in the title.
MAX_CHIPS = 8


def plot_chip_map(posteriors: Any, out: str | Path, max_chips: int = MAX_CHIPS) -> Path:
    """Draw the chip map of a `farm infer` store to a PNG.

    Args:
        posteriors: the store's path, or its dataset (``open_posteriors``).
        out: the PNG to write; max_chips: rows drawn at most.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from inference.batch.store import open_posteriors

    ds = open_posteriors(posteriors) if isinstance(posteriors, (str, Path)) else posteriors
    names = [str(p) for p in ds["parameter"].values]
    chip = np.asarray(ds["chip"].values)
    chips = np.unique(chip)
    shown = chips[:max_chips]
    fig, axes = plt.subplots(
        len(shown),
        len(names),
        figsize=(2.6 * len(names), 2.0 * len(shown) + 0.8),
        squeeze=False,
        sharex="row",
    )
    mean, lo, hi = (np.asarray(ds[k].values) for k in ("mean", "q05", "q95"))
    flagged = np.asarray(ds["misspecification_flagged"].values)
    neuron = np.asarray(ds["neuron"].values)
    for r, c in enumerate(shown):
        rows = np.flatnonzero(chip == c)
        x = neuron[rows]
        for j, name in enumerate(names):
            ax = axes[r, j]
            ok, bad = rows[~flagged[rows]], rows[flagged[rows]]
            ax.vlines(neuron[ok], lo[ok, j], hi[ok, j], color="tab:blue", lw=0.6, alpha=0.5)
            ax.plot(neuron[ok], mean[ok, j], ".", color="tab:blue", ms=2.5)
            ax.plot(neuron[bad], mean[bad, j], "x", color="tab:red", ms=3.5, mew=0.8)
            if r == 0:
                ax.set_title(name, fontsize=9)
            if j == 0:
                label = "chip ?" if c < 0 else f"chip {c}"
                ax.set_ylabel(f"{label}\nLSB", fontsize=8)
            ax.tick_params(labelsize=7)
            if x.size:
                ax.set_xlim(x.min() - 1, x.max() + 1)
        axes[r, len(names) // 2].set_xlabel("neuron", fontsize=8)
    more = f" (first {len(shown)} of {len(chips)} chips)" if len(chips) > len(shown) else ""
    fig.suptitle(
        f"posterior mean (dot) and 90 % interval (line) per neuron; x: flagged "
        f"({int(flagged.sum())} of {flagged.size}){more}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
