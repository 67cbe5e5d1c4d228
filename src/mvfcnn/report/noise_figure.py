"""Fig. 8b: seeded preparation artefacts and noise on SEM test patches, segmented by the
trained model beside the clean patch (the only figure that runs a network).
"""


from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mvfcnn.core.errors import InputError
from mvfcnn.core.io import to_gray, to_unit_float
from mvfcnn.inference.predict import inference_kwargs, predict_image
from mvfcnn.report import figure_kit as kit

# ----------------------------------------------------------------------------------------------
# Figure 8b: noise robustness


def add_artefacts(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Reproducible preparation artefacts on a float [0, 1] grey patch: ``dirt`` (dark soft
    blobs), ``scratch`` (bright and dark lines), ``gaussian`` noise, ``salt`` and pepper."""
    out = image.astype(np.float32).copy()
    h, w = out.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "dirt":
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.03, 0.09) * h, rng.uniform(0.03, 0.09) * w
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            alpha = np.clip(1.5 - d, 0, 1) * rng.uniform(0.6, 0.95)
            out = out * (1 - alpha) + rng.uniform(0.0, 0.15) * alpha
    elif kind == "scratch":
        for shade in (0.95, 0.05):
            y0, y1 = rng.uniform(0, h, size=2)
            a, b, c = y1 - y0, -float(w), float(w) * y0       # line through (0,y0), (w,y1)
            dist = np.abs(a * xx + b * yy + c) / math.hypot(a, b)
            alpha = np.clip(1.0 - dist / max(1.0, 0.006 * w), 0, 1)
            out = out * (1 - alpha) + shade * alpha
    elif kind == "gaussian":
        out = out + rng.normal(0.0, 0.08, size=out.shape).astype(np.float32)
    elif kind == "salt":
        flip = rng.random(out.shape)
        out[flip < 0.02] = 0.0
        out[flip > 0.98] = 1.0
    else:
        raise InputError(f"unknown artefact {kind!r}")
    return np.clip(out, 0.0, 1.0)


def model_predictor(model_path: str | Path, inference: dict[str, Any]) -> kit.Predictor:
    """A patch -> class map function from a trained model file (final FCN stage)."""
    from mvfcnn.models.io import load_model  # lazy: torch for Fig. 8b only

    model, _meta = load_model(model_path)
    # the workflow's own settings; with fit_tiles a patch smaller than one window runs at its
    # own size instead of being padded to the (1500 px) window, ~8x less work for Fig. 8b
    kwargs = {**inference_kwargs(inference), "batch_size": 1}

    def predict(patch: np.ndarray) -> np.ndarray:
        return np.asarray(predict_image(model, patch, **kwargs,
                                        device="auto",  # as `mvfcnn predict`
                                        progress=False))

    return predict


ARTEFACTS = ("dirt", "scratch", "gaussian", "salt")


def noise_patches(ctx: kit.Context, size: int) -> list[tuple[str, str, int, int, int]]:
    """(label, sample, y, x, size): a plain ferrite patch (fewest second-phase pixels) and the
    richest patch of up to three second-phase classes, from the SEM test images."""
    plain = None
    per_class: dict[int, tuple[str, int, int, int, int]] = {}
    for sample in ctx.split("test"):
        labels = kit.read_optional(ctx.labels(sample), labels=True)
        if labels is None:
            continue
        s = min(size, *labels.shape[:2])
        fg = np.isin(labels, [*ctx.classes.foreground, ctx.classes.ignore_index])
        # the plainest window; shrink it (down to 96 px) until it is >= 98 % matrix
        small = s
        y, x, count = kit.best_window(~fg, small)
        while count < 0.98 * small * small and small // 2 >= 96:
            small //= 2
            y, x, count = kit.best_window(~fg, small)
        score = count / (small * small)
        if plain is None or score > plain[3]:
            plain = (sample, y, x, score, small)
        for cls in ctx.classes.foreground:
            y, x, count = kit.best_window(labels == cls, s)
            if count > 0 and (cls not in per_class or count > per_class[cls][3]):
                per_class[cls] = (sample, y, x, count, s)
    out = []
    if plain is not None:
        out.append((ctx.classes.names[0], plain[0], plain[1], plain[2], plain[4]))
    for cls in list(per_class)[:3]:
        sample, y, x, _count, s = per_class[cls]
        out.append((ctx.classes.names[cls], sample, y, x, s))
    return out


def fig8b_noise(ctx: kit.Context, predictor: kit.Predictor | None, *, patch: int = kit.PATCH,
                model_note: str = ""):
    """Seeded artefacts on SEM test patches, segmented by the trained model (paper Fig. 8b)."""

    title = "Fig. 8b: robustness to preparation artefacts and noise"
    if predictor is None:
        return kit.placeholder(title, f"No trained SEM model to run ({model_note or 'not found'}).")
    chosen = noise_patches(ctx, patch)
    if not chosen:
        return kit.placeholder(title, "No labelled SEM test image.")
    rng = np.random.default_rng([ctx.seed, 8])
    fig, axes, grid = kit.figure_grid(len(chosen), 4,
                                      title=f"{title} -- {model_note}" if model_note else title)
    for r, (label, sample, y, x, size) in enumerate(chosen):
        kind = ARTEFACTS[r % len(ARTEFACTS)]
        sem = kit.read_optional(ctx.image(sample, "sem"))
        crop = kit.crop_square(sem, y, x, size)
        if crop.ndim == 3:
            crop = to_gray(crop[..., :3])
        noisy = add_artefacts(to_unit_float(crop), kind, rng)
        noisy_u8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
        clean_u8 = np.clip(np.rint(to_unit_float(crop) * 255), 0, 255).astype(np.uint8)
        truth = kit.crop_square(kit.read_optional(ctx.labels(sample), labels=True), y, x, size)
        pred_noisy = predictor(noisy_u8)
        pred_clean = predictor(clean_u8)
        keep = truth != ctx.classes.ignore_index
        acc = [100.0 * float((p[keep] == truth[keep]).mean()) if keep.any() else math.nan
               for p in (pred_noisy, pred_clean)]
        kit.show_image(axes[r, 0], noisy, f"with {kind}")
        axes[r, 0].set_xlabel(f"{sample} (y={y}, x={x})", fontsize=7)
        kit.row_label(axes[r, 0], label)
        kit.show_image(axes[r, 1], kit.colorize(pred_noisy, ctx.classes),
                       f"prediction, acc. {acc[0]:.1f}%")
        kit.show_image(axes[r, 2], kit.colorize(pred_clean, ctx.classes),
                       f"without artefacts, acc. {acc[1]:.1f}%")
        kit.show_image(axes[r, 3], kit.colorize(truth, ctx.classes), "ground truth")
    kit.add_legend(fig, grid, ctx.classes, [("ignore", kit.NO_TRUTH_RGB)])
    return fig


def default_model(ctx: kit.Context) -> tuple[Path | None, str]:
    variant, why = kit.best_sem_variant(ctx)
    if variant is None:
        return None, why
    stage = ctx.config["fcn"]["stages"][-1]
    path = ctx.run_dir(variant, "sem") / f"fcn{stage}.pt"
    return (path if path.exists() else None), f"{variant} / SEM, FCN-{stage}"
