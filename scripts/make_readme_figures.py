"""Render the README's synthetic-data figure: one SEM, its LOM and its labels side by side.

Usage: python scripts/make_readme_figures.py [--config config/config.yaml] [--sample NAME]
       [--out docs/img/synthetic_pair.png] [--tiles DIR]

``--tiles DIR`` also writes one full-resolution 192-px SEM tile per class (the network's view),
for checking by eye that the textures look like their caricatures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from mvfcnn.core.config import ClassSet  # noqa: E402
from mvfcnn.data.synthetic import render_sample  # noqa: E402


def colour_labels(labels: np.ndarray, classes: ClassSet) -> np.ndarray:
    """Labels in the configured class colours; ignore pixels white."""
    lut = np.full((256, 3), 255, np.uint8)
    lut[: classes.num_classes] = classes.rgb()
    return lut[labels]


def pair_figure(cfg: dict, classes: ClassSet, sample: str, seed: int, out: Path) -> None:
    result = render_sample(sample, cfg["synthetic"], classes, seed)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), dpi=110)
    axes[0].imshow(result.sem, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[0].set_title(f"SEM ({result.sem.shape[1]}x{result.sem.shape[0]})")
    lom = result.lom
    axes[1].imshow(lom, cmap=None if lom.ndim == 3 else "gray", interpolation="nearest")
    tf = result.transform
    axes[1].set_title(f"LOM ({lom.shape[1]}x{lom.shape[0]}), rot {tf['rotation_deg']:+.1f}°, "
                      f"shift ({tf['shift_px'][0]:+.0f}, {tf['shift_px'][1]:+.0f}) px")
    axes[2].imshow(colour_labels(result.labels, classes), interpolation="nearest")
    axes[2].set_title("labels (white = ignore ring)")
    for ax in axes:
        ax.set_axis_off()
    handles = [Patch(color=np.array(rgb) / 255, label=name)
               for name, rgb in zip(classes.names, classes.rgb(), strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"synthetic sample {sample!r} (seed {seed})")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def class_tiles(cfg: dict, classes: ClassSet, seed: int, outdir: Path, size: int = 192) -> None:
    """For each class, the 192-px tile of its single-class image with the most of that class."""
    outdir.mkdir(parents=True, exist_ok=True)
    from skimage import io as skio

    for index in classes.foreground:
        name = classes.names[index]
        sample = f"train_{name}_0"
        result = render_sample(sample, cfg["synthetic"], classes, seed)
        share = (result.labels == index).astype(np.float32)
        best, where = -1.0, (0, 0)
        for y in range(0, share.shape[0] - size + 1, size // 4):
            for x in range(0, share.shape[1] - size + 1, size // 4):
                value = share[y:y + size, x:x + size].mean()
                if value > best:
                    best, where = value, (y, x)
        y, x = where
        tile = result.sem[y:y + size, x:x + size]
        skio.imsave(outdir / f"{name}.png", np.kron(tile, np.ones((3, 3), np.uint8)),
                    check_contrast=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--sample", default="train_mixed_0")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default="docs/img/synthetic_pair.png")
    parser.add_argument("--tiles", default=None)
    args = parser.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    classes = ClassSet.from_config(cfg)
    seed = int(cfg.get("seed", 0)) if args.seed is None else args.seed
    pair_figure(cfg, classes, args.sample, seed, Path(args.out))
    if args.tiles:
        class_tiles(cfg, classes, seed, Path(args.tiles))


if __name__ == "__main__":
    main()
