"""Sliding-window inference: exact tiling, exact stitching, precision paths, memmap input, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mvfcnn.core.errors import InputError
from mvfcnn.inference import cli as inference_cli
from mvfcnn.inference import predict as inference
from mvfcnn.inference.predict import axis_windows, predict_image, tile_grid

SIZES = [1, 5, 31, 32, 33, 47, 48, 63, 64, 65, 96, 97, 100, 129, 257]


def _float_input(batch: torch.Tensor) -> torch.Tensor:
    """Test preprocessing: raw 0..255 values as float, grey repeated to 3 channels."""
    batch = batch.float()
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


class TileCounter(nn.Module):
    """Scores one-hot in class (n % K) for the n-th tile seen: shows which tile each pixel
    of the stitched map came from."""

    def __init__(self, num_classes: int = 250) -> None:
        super().__init__()
        self.k = num_classes
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ids = (torch.arange(b) + self.seen) % self.k
        self.seen += b
        out = torch.zeros(b, self.k, h, w)
        out[torch.arange(b), ids] = 1.0
        return out


def _integer_conv(radius: int = 2, in_ch: int = 3, classes: int = 4, seed: int = 0) -> nn.Module:
    """Conv with small integer weights: on 0..255 input every score is an exact fp32 integer,
    so tiled and whole-image outputs can be compared bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(in_ch, classes, 2 * radius + 1, padding=radius, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-2, 3, conv.weight.shape, generator=gen).float())
    return conv


def _reference(model: nn.Module, image: np.ndarray, tile: int | tuple[int, int]) -> np.ndarray:
    """Whole-image forward; bottom/right reflection padding up to one tile, then cropped."""
    h, w = image.shape[:2]
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    pad = [(0, max(th - h, 0)), (0, max(tw - w, 0))] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode="reflect")
    x = torch.from_numpy(padded)
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    with torch.no_grad():
        scores = model(_float_input(x))
    return scores.argmax(1)[0, :h, :w].to(torch.uint8).numpy()


# ---------------------------------------------------------------- tile_grid


def _border_distance(start: int, x: int, tile: int, length: int) -> float:
    """Distance of pixel x to the border of the window at ``start``; image edges don't count."""
    left = x - start if start > 0 else math.inf
    right = start + tile - 1 - x if start + tile < length else math.inf
    return min(left, right)


@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 1), (32, 8), (32, 31), (48, 16),
                                          (64, 17)])
def test_axis_windows_partition_and_farthest_from_border(tile: int, overlap: int) -> None:
    for length in SIZES:
        windows = axis_windows(length, tile, overlap)
        cover = np.zeros(length, dtype=int)
        for start, k0, k1 in windows:
            assert k0 < k1
            cover[k0:k1] += 1
            if length >= tile:  # no padding: every window lies inside the image
                assert 0 <= start and start + tile <= length
                assert start <= k0 and k1 <= start + tile
            else:
                assert (start, k0, k1) == (0, 0, length)
        assert (cover == 1).all(), (length, windows)
        starts = [s for s, _, _ in windows]
        assert starts == sorted(set(starts))
        if length > tile:
            assert starts[-1] == length - tile  # flush with the far edge
            steps = np.diff(starts)
            assert (steps[:-1] == tile - overlap).all()
            assert starts[-1] - starts[-2] <= tile - overlap

        for x in range(length):  # the keeping window is (one of) the farthest from its border
            keeper = next(s for s, k0, k1 in windows if k0 <= x < k1)
            best = max(_border_distance(s, x, tile, length) for s in starts if s <= x < s + tile)
            assert _border_distance(keeper, x, tile, length) == best


@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 8), (48, 20)])
def test_tile_grid_covers_every_pixel_once(tile: int, overlap: int) -> None:
    for height in (5, 32, 33, 100):
        for width in (1, 32, 64, 97):
            cover = np.zeros((height, width), dtype=int)
            grid = tile_grid(height, width, tile, overlap)
            for t in grid:
                assert t.y <= t.keep_y0 < t.keep_y1 <= t.y + tile
                assert t.x <= t.keep_x0 < t.keep_x1 <= t.x + tile
                cover[t.keep_y0:t.keep_y1, t.keep_x0:t.keep_x1] += 1
            assert (cover == 1).all()
            assert len(grid) == len(axis_windows(height, tile, overlap)) * len(
                axis_windows(width, tile, overlap))


def test_tile_grid_known_layout() -> None:
    # 100 px, tile 40, overlap 10 -> stride 30: starts 0, 30, then flush 60.
    # cuts at (0+40+30)//2 = 35 and (30+40+60)//2 = 65.
    assert axis_windows(100, 40, 10) == [(0, 0, 35), (30, 35, 65), (60, 65, 100)]
    assert axis_windows(40, 40, 10) == [(0, 0, 40)]
    assert axis_windows(41, 40, 10) == [(0, 0, 20), (1, 20, 41)]


@pytest.mark.parametrize("tile,overlap", [(32, 32), (32, -1), (0, 0)])
def test_axis_windows_rejects_bad_parameters(tile: int, overlap: int) -> None:
    with pytest.raises(InputError):
        axis_windows(100, tile, overlap)


# ---------------------------------------------------------------- predict_image


@pytest.mark.parametrize("shape,tile,overlap,batch", [
    ((100, 130), 32, 8, 1), ((100, 130), 32, 8, 3), ((64, 64), 32, 0, 2),
    ((20, 70), 32, 6, 4), ((33, 97), 48, 16, 5),
])
def test_each_pixel_comes_from_its_keeping_tile(shape, tile, overlap, batch) -> None:
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = predict_image(TileCounter(), image, tile_size=tile, overlap=overlap, batch_size=batch,
                        progress=False, preprocess=_float_input)
    expected = np.full(shape, 255, dtype=np.uint8)
    for n, t in enumerate(tile_grid(*shape, tile, overlap)):
        expected[t.keep_y0:t.keep_y1, t.keep_x0:t.keep_x1] = n
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape,tile,overlap,batch", [
    ((70, 101), 32, 6, 2), ((32, 32), 32, 6, 1), ((20, 45), 32, 8, 3), ((97, 33), 48, 16, 2),
    ((130, 90), 32, 5, 4), ((130, 90, 3), 40, 10, 3), ((10, 12, 3), 32, 8, 1),
])
def test_stitching_equals_whole_image_forward(shape, tile, overlap, batch) -> None:
    # A 5x5 conv sees 2 px around each pixel: with overlap >= 5 every kept pixel is >= 2 px from
    # any interior tile border, so the stitched map must equal one forward over the whole image.
    image = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    model = _integer_conv(radius=2)
    out = predict_image(model, image, tile_size=tile, overlap=overlap, batch_size=batch,
                        progress=False, preprocess=_float_input)
    assert out.dtype == np.uint8 and out.shape == shape[:2]
    np.testing.assert_array_equal(out, _reference(model, image, tile))


def test_too_small_overlap_shows_seams() -> None:
    # Sanity check of the test above: without overlap the tile borders do differ.
    image = np.random.default_rng(3).integers(0, 256, (96, 96), dtype=np.uint8)
    model = _integer_conv(radius=2)
    out = predict_image(model, image, tile_size=32, overlap=0, batch_size=4, progress=False,
                        preprocess=_float_input)
    assert (out != _reference(model, image, 32)).any()


def test_bf16_and_fp16_paths_run() -> None:
    image = np.random.default_rng(4).integers(0, 256, (80, 70), dtype=np.uint8)
    model = _integer_conv(radius=1)
    ref = predict_image(model, image, tile_size=32, overlap=8, batch_size=2, progress=False,
                        preprocess=_float_input)
    for precision in ("bf16", "fp16"):
        out = predict_image(model, image, tile_size=32, overlap=8, batch_size=2,
                            precision=precision, progress=False, preprocess=_float_input)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert (out == ref).mean() > 0.9
    with pytest.raises(InputError):
        predict_image(model, image, tile_size=32, overlap=8, batch_size=2, precision="int8",
                      progress=False, preprocess=_float_input)


def test_memmap_input_and_probs(tmp_path) -> None:
    shape = (90, 75)
    data = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    mm = np.memmap(tmp_path / "img.raw", dtype=np.uint8, mode="w+", shape=shape)
    mm[:] = data
    mm.flush()
    mm = np.memmap(tmp_path / "img.raw", dtype=np.uint8, mode="r", shape=shape)
    model = _integer_conv(radius=1, classes=3)
    out, probs = predict_image(model, mm, tile_size=32, overlap=6, batch_size=3,
                               return_probs=True, progress=False, preprocess=_float_input)
    np.testing.assert_array_equal(out, predict_image(model, data, tile_size=32, overlap=6,
                                                     batch_size=3, progress=False,
                                                     preprocess=_float_input))
    assert probs is not None and probs.dtype == np.float16 and probs.shape == (3, *shape)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
    assert (probs.astype(np.float32).argmax(0) == out).mean() > 0.99
    only_map = predict_image(model, data, tile_size=32, overlap=6, batch_size=3,
                             return_probs=False, progress=False, preprocess=_float_input)
    assert isinstance(only_map, np.ndarray) and only_map.shape == shape


def test_tta_rotations_with_rotation_equivariant_model() -> None:
    # A 1x1 conv commutes with rotations, so TTA must give the same map and probabilities.
    image = np.random.default_rng(6).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    model = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        model.weight.mul_(0.05)
    plain, p_plain = predict_image(model, image, tile_size=32, overlap=8, batch_size=2,
                                   return_probs=True, progress=False, preprocess=_float_input)
    tta, p_tta = predict_image(model, image, tile_size=32, overlap=8, batch_size=2,
                               tta_rotations=True, return_probs=True, progress=False,
                               preprocess=_float_input)
    assert (plain == tta).mean() > 0.999
    np.testing.assert_allclose(p_plain.astype(np.float32), p_tta.astype(np.float32), atol=2e-3)


def _d4_symmetric_conv() -> nn.Module:
    """3x3 convolutions whose kernels are symmetric under all 8 flips/rotations of the square
    (centre, edge and corner weights), zero-padded: equivariant to the dihedral group D4."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        centre, edge, corner = (torch.randn(4, 3) * 0.05 for _ in range(3))
        kernel = torch.empty(4, 3, 3, 3)
        kernel[..., 1, 1] = centre
        for y, x in ((0, 1), (1, 0), (1, 2), (2, 1)):
            kernel[..., y, x] = edge
        for y, x in ((0, 0), (0, 2), (2, 0), (2, 2)):
            kernel[..., y, x] = corner
        model.weight.copy_(kernel)
    return model


@pytest.mark.parametrize("rotations, flips", [(False, True), (True, True)])
def test_tta_flips_and_rotations_equal_plain_for_an_equivariant_model(rotations, flips) -> None:
    """The 8 views of issue 22 item 6: a D4-equivariant model gives its plain softmax back."""
    image = np.random.default_rng(7).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    model = _d4_symmetric_conv()
    kwargs = {"tile_size": 32, "overlap": 8, "batch_size": 2, "return_probs": True,
              "progress": False, "preprocess": _float_input}
    plain, p_plain = predict_image(model, image, **kwargs)
    tta, p_tta = predict_image(model, image, tta_rotations=rotations, tta_flips=flips, **kwargs)
    assert (plain == tta).mean() > 0.999
    np.testing.assert_allclose(p_plain.astype(np.float32), p_tta.astype(np.float32), atol=2e-3)


def test_tta_views_average_a_non_equivariant_model() -> None:
    """For a direction-sensitive model TTA differs from the plain map and equals the mean of
    the 8 views computed by hand, each mapped back to the image frame."""
    from mvfcnn.inference.predict import tta_scores, tta_transforms

    assert len(tta_transforms(True, True)) == 8 and tta_transforms(False, False) == [(False, 0)]
    torch.manual_seed(1)
    model = nn.Conv2d(3, 4, 3, padding=1).eval()
    batch = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        averaged = tta_scores(model, batch, rotations=True, flips=True)
        by_hand = torch.zeros_like(averaged)
        for flip in (False, True):
            for r in range(4):
                x = torch.rot90(torch.flip(batch, (3,)) if flip else batch, r, (2, 3))
                p = torch.rot90(torch.softmax(model(x), 1), -r, (2, 3))
                by_hand += (torch.flip(p, (3,)) if flip else p) / 8
        plain = torch.softmax(model(batch), 1)
    torch.testing.assert_close(averaged, by_hand)
    assert (averaged - plain).abs().max() > 1e-3


def test_uint16_image_is_rescaled_to_8_bit() -> None:
    seen: list[torch.Tensor] = []

    def grab(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return _float_input(batch)

    image = np.full((40, 40), 65535, dtype=np.uint16)
    image[:, :20] = 0
    predict_image(_integer_conv(1), image, tile_size=32, overlap=8, batch_size=4,
                  progress=False, preprocess=grab)
    assert all(b.dtype == torch.uint8 for b in seen)
    assert {int(v) for b in seen for v in b.unique()} == {0, 255}


def test_wrong_model_output_is_reported() -> None:
    class Shrinks(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 2, x.shape[2] // 2, x.shape[3] // 2)

    with pytest.raises(ValueError, match="expected"):
        predict_image(Shrinks(), np.zeros((40, 40), np.uint8), tile_size=32, overlap=8,
                      batch_size=1, progress=False, preprocess=_float_input)


def test_default_preprocess_from_models_package() -> None:
    preprocess = pytest.importorskip("mvfcnn.models.preprocess")
    image = np.random.default_rng(7).integers(0, 256, (40, 50), dtype=np.uint8)
    out = predict_image(_integer_conv(1), image, tile_size=32, overlap=8, batch_size=2,
                        progress=False, preprocess=preprocess.normalize_batch)
    assert out.shape == image.shape


# ---------------------------------------------------------------- CLI


def _cli_on_integer_conv(tmp_path, monkeypatch, shape: tuple[int, int], seed: int):
    """A grey image at tmp_path/sem.tif and the 5-class integer conv that `mvfcnn predict`
    will load whatever --model says (with the float preprocessing the tests compare against)."""
    import tifffile

    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "sem.tif", image)
    model = _integer_conv(radius=1, classes=5)
    monkeypatch.setattr(inference_cli, "_load_model", lambda path: (model, {"path": path}))
    monkeypatch.setattr(inference, "_default_preprocess", lambda: _float_input)
    return image, model


def test_cli_predict_writes_class_map(tmp_path, monkeypatch) -> None:
    import tifffile

    from mvfcnn.cli import main

    image, model = _cli_on_integer_conv(tmp_path, monkeypatch, (70, 60), seed=8)
    params = {"tile_size": 32, "overlap": 8, "batch_size": 2, "precision": "fp32",
              "tta_rotations": False}
    argv = ["predict", "--model", str(tmp_path / "m.pt"), "--image", str(tmp_path / "sem.tif"),
            "--sample", "s1", "--params-json", json.dumps(params), "--device", "cpu",
            "--out", str(tmp_path / "pred" / "s1.tif"), "--out-probs",
            str(tmp_path / "pred" / "s1_probs.tif")]
    assert main(argv) == 0
    written = tifffile.imread(tmp_path / "pred" / "s1.tif")
    assert written.dtype == np.uint8
    expected = predict_image(model, image, tile_size=32, overlap=8, batch_size=2,
                             progress=False, preprocess=_float_input)
    np.testing.assert_array_equal(written, expected)
    probs = tifffile.imread(tmp_path / "pred" / "s1_probs.tif")
    assert probs.shape == (5, 70, 60) and probs.dtype == np.float16

    bad = argv.copy()
    bad[bad.index("--params-json") + 1] = json.dumps({**params, "overlap": 40})
    assert main(bad) == 1
    missing = argv.copy()
    missing[missing.index("--params-json") + 1] = json.dumps({"tile_size": 32})
    assert main(missing) == 1


# ---------------------------------------------------------------- fitted windows, timings


@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 8), (48, 16), (1500, 100)])
def test_fitted_size_keeps_window_count_and_covers(tile: int, overlap: int) -> None:
    lengths = SIZES + [7000, 8000, 1501, 2900] if tile > 100 else SIZES
    for length in lengths:
        size = inference.fitted_size(length, tile, overlap)
        n = len(axis_windows(length, tile, overlap))
        assert size <= tile
        if length > tile:  # same number of windows, the smallest size that still covers
            assert len(axis_windows(length, size, overlap)) == n
            assert n * size - (n - 1) * overlap >= length
            if size > inference.MIN_TILE:  # one pixel less would not cover
                assert n * (size - 1) - (n - 1) * overlap < length
        else:  # a short axis runs at its own length (no reflection) unless below MIN_TILE
            assert size == min(tile, max(length, inference.MIN_TILE))


def test_fitted_grid_partitions_and_saves_area() -> None:
    for height, width, tile, overlap in [(100, 130, 32, 8), (7000, 8000, 1500, 100),
                                         (7000, 8000, 1000, 100), (33, 97, 48, 16)]:
        grid = tile_grid(height, width, tile, overlap, fit=True)
        th, tw = inference.tile_shape(height, width, tile, overlap, fit=True)
        cover = np.zeros((height, width), dtype=np.uint8)
        for t in grid:
            assert t.y <= t.keep_y0 < t.keep_y1 <= t.y + th
            assert t.x <= t.keep_x0 < t.keep_x1 <= t.x + tw
            cover[t.keep_y0:t.keep_y1, t.keep_x0:t.keep_x1] += 1
        assert (cover == 1).all()
        plain = tile_grid(height, width, tile, overlap)
        assert len(grid) == len(plain)
        assert th * tw <= tile * tile
    # the motivating case: 7000 px in 1500 px windows -> 5 windows of 1480 px
    assert inference.tile_shape(7000, 8000, 1500, 100, fit=True) == (1480, 1417)


@pytest.mark.parametrize("shape,tile,overlap,batch", [
    ((70, 101), 32, 6, 2), ((130, 90, 3), 40, 10, 3), ((20, 45), 32, 8, 3), ((97, 33), 48, 16, 2),
])
def test_fitted_stitching_equals_whole_image_forward(shape, tile, overlap, batch) -> None:
    image = np.random.default_rng(9).integers(0, 256, shape, dtype=np.uint8)
    model = _integer_conv(radius=2)
    out = predict_image(model, image, tile_size=tile, overlap=overlap, batch_size=batch,
                        progress=False, preprocess=_float_input, fit_tiles=True)
    # an axis shorter than the tile runs at its own length: no reflection padding on that axis
    shape2d = inference.tile_shape(*shape[:2], tile, overlap, fit=True)
    np.testing.assert_array_equal(out, _reference(model, image, shape2d))


def test_fitted_small_image_runs_at_its_own_size_and_reports_timings() -> None:
    seen: list[tuple[int, ...]] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return torch.cat([x[:, :1], 255.0 - x[:, :1]], dim=1)

    image = np.random.default_rng(10).integers(0, 256, (40, 50), dtype=np.uint8)
    timings: dict[str, float] = {}
    out = predict_image(Recorder(), image, tile_size=64, overlap=8, batch_size=1,
                        progress=False, preprocess=_float_input, fit_tiles=True, timings=timings)
    assert seen == [(1, 3, 40, 50)]  # not reflected up to 64 x 64
    np.testing.assert_array_equal(out, (image < 127.5).astype(np.uint8))  # 1 where 255-x > x
    assert timings["tiles"] == 1 and (timings["tile_h"], timings["tile_w"]) == (40, 50)
    assert all(timings[k] >= 0 for k in ("read_s", "forward_s", "stitch_s"))
    seen.clear()
    predict_image(Recorder(), image, tile_size=64, overlap=8, batch_size=1, progress=False,
                  preprocess=_float_input)
    assert seen == [(1, 3, 64, 64)]  # the default keeps the square, reflected window


def test_channels_first_and_bf16_agree_with_default() -> None:
    image = np.random.default_rng(11).integers(0, 256, (90, 80), dtype=np.uint8)
    model = _integer_conv(radius=1)
    ref = predict_image(model, image, tile_size=32, overlap=8, batch_size=2, progress=False,
                        preprocess=_float_input)
    plain = predict_image(_integer_conv(radius=1), image, tile_size=32, overlap=8, batch_size=2,
                          progress=False, preprocess=_float_input, channels_last=False)
    np.testing.assert_array_equal(plain, ref)
    bf16 = predict_image(model, image, tile_size=32, overlap=8, batch_size=2, progress=False,
                         preprocess=_float_input, precision="bf16")
    assert (bf16 == ref).mean() > 0.9


def test_cli_accepts_fit_tiles_and_threads(tmp_path, monkeypatch) -> None:
    import tifffile

    from mvfcnn.cli import main

    image = np.random.default_rng(12).integers(0, 256, (70, 60), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "sem.tif", image)
    model = _integer_conv(radius=1, classes=5)
    monkeypatch.setattr(inference_cli, "_load_model", lambda path: (model, {"path": path}))
    monkeypatch.setattr(inference, "_default_preprocess", lambda: _float_input)
    params = {"tile_size": 48, "overlap": 8, "batch_size": 2, "precision": "fp32",
              "fit_tiles": True}
    threads_before = torch.get_num_threads()
    assert main(["predict", "--model", "m.pt", "--image", str(tmp_path / "sem.tif"),
                 "--sample", "s1", "--params-json", json.dumps(params), "--device", "cpu",
                 "--out", str(tmp_path / "s1.tif"), "--no-progress", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads_before)
    expected = predict_image(model, image, tile_size=48, overlap=8, batch_size=2,
                             progress=False, preprocess=_float_input, fit_tiles=True)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s1.tif"), expected)


def test_progress_lines_when_stderr_is_a_log(monkeypatch, capsys) -> None:
    monkeypatch.setenv("MVFCNN_PROGRESS_INTERVAL", "0")  # a line per batch
    image = np.random.default_rng(3).integers(0, 256, (64, 96), dtype=np.uint8)
    n = len(tile_grid(64, 96, 32, 8))
    predict_image(_integer_conv(radius=1, classes=3), image, tile_size=32, overlap=8,
                  batch_size=n, progress=True, preprocess=_float_input, precision="fp32")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"predict: 0/{n} window"
    assert lines[1].startswith(f"predict: {n}/{n} window (100%), ") and "ETA 0s" in lines[1]
    assert lines[2].startswith(f"predict: done {n}/{n} window in ")


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (16, 400), (400, 5)])
@pytest.mark.parametrize("fit", [True, False])
def test_images_smaller_or_thinner_than_a_window_run_as_one_padded_window(shape, fit):
    """Issue 21 item 5: an image under the window (or under the overlap) is predicted at its
    own size, not refused with a message about settings the user never touched."""
    import torch

    from mvfcnn.inference.predict import predict_image, tile_grid
    from mvfcnn.models.fcn import fcn8s

    torch.manual_seed(0)
    model = fcn8s(num_classes=3, width=1 / 16, fc_channels=8)
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    out = predict_image(model, image, tile_size=128, overlap=100, batch_size=1,
                        progress=False, fit_tiles=fit)
    assert out.shape == shape and out.dtype == np.uint8
    tiles = tile_grid(*shape, 128, 100, fit=fit)
    covered = np.zeros(shape, dtype=int)
    for t in tiles:
        covered[t.keep_y0:t.keep_y1, t.keep_x0:t.keep_x1] += 1
    assert (covered == 1).all()  # the keep regions still partition the image


@pytest.mark.parametrize("tta", [False, True])
def test_decision_offsets_move_the_argmax_of_the_log_probabilities(tta) -> None:
    """Offsets act on log-probabilities: with logits (no TTA) or averaged softmax (TTA) the
    class map equals the argmax of log(probabilities) + offsets; zero offsets change nothing."""
    image = np.random.default_rng(8).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    model = _d4_symmetric_conv()
    kwargs = {"tile_size": 32, "overlap": 8, "batch_size": 2, "progress": False,
              "preprocess": _float_input, "tta_rotations": tta, "tta_flips": tta}
    plain, probs = predict_image(model, image, return_probs=True, **kwargs)
    np.testing.assert_array_equal(predict_image(model, image, decision_offsets=[0.0] * 4,
                                                **kwargs), plain)
    logs = np.log(probs.astype(np.float32))
    # class 1 raised by the median of its gap to the winning class: pixels switch to it
    offsets = np.array([0.0, np.median(logs.max(0) - logs[1]), -0.3, 0.1], np.float32)
    shifted = predict_image(model, image, decision_offsets=offsets, **kwargs)
    expected = (logs + offsets[:, None, None]).argmax(0)
    assert (shifted == expected).mean() > 0.999  # float16 probabilities: ties may differ
    assert (shifted != plain).any()
    # a large enough offset makes one class win everywhere
    only = predict_image(model, image, decision_offsets=[0.0, 0.0, 1.0e4, 0.0], **kwargs)
    assert (only == 2).all()
    with pytest.raises(InputError, match="3 class offsets for a model of 4 classes"):
        predict_image(model, image, decision_offsets=[0.0, 1.0, 0.0], **kwargs)


# ---------------------------------------------------------------- second-phase map (object_vote)


@pytest.mark.parametrize("tile,overlap,tta", [(32, 8, False), (64, 0, False), (32, 8, True)])
def test_second_phase_map_is_the_best_non_matrix_class(tile, overlap, tta) -> None:
    """Integer scores, no TTA, windows inside the image: exactly the argmax over classes 1.. of
    the whole-image scores. Always: 1..K-1, equal to the class map wherever that is not
    matrix, offsets included."""
    image = np.random.default_rng(3).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    model = _integer_conv(radius=1, classes=4, seed=5) if not tta else _d4_symmetric_conv()
    kwargs = {"tile_size": tile, "overlap": overlap, "batch_size": 2, "progress": False,
              "preprocess": _float_input, "tta_rotations": tta, "tta_flips": tta}
    for offsets in (None, [0.0, 0.5, -0.4, 0.2]):
        second = np.full(image.shape[:2], 9, np.uint8)
        class_map = predict_image(model, image, decision_offsets=offsets,
                                  second_phase_out=second, **kwargs)
        assert 1 <= second.min() and second.max() <= 3
        foreground = class_map > 0
        np.testing.assert_array_equal(second[foreground], class_map[foreground])
        assert (class_map == 0).any() and (second != class_map).any()
    if not tta and tile <= min(image.shape[:2]):  # windows inside the image: no padding
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        with torch.no_grad():
            scores = model(_float_input(x))[0]
        expected = (scores[1:].argmax(0) + 1).to(torch.uint8).numpy()
        second = np.empty(image.shape[:2], np.uint8)
        predict_image(model, image, second_phase_out=second, **kwargs)
        np.testing.assert_array_equal(second, expected)
    with pytest.raises(InputError, match=r"second_phase_out must be a \(45, 70\) uint8 array"):
        predict_image(model, image, second_phase_out=np.empty((45, 70), np.int64), **kwargs)


def test_cli_predict_writes_the_second_phase_map(tmp_path, monkeypatch) -> None:
    import tifffile

    from mvfcnn.cli import main

    image, model = _cli_on_integer_conv(tmp_path, monkeypatch, (50, 40), seed=4)
    params = {"tile_size": 32, "overlap": 8, "batch_size": 2, "precision": "fp32"}
    out = tmp_path / "pred" / "s.tif"
    second_out = tmp_path / "pred_second_phase" / "s.tif"
    assert main(["predict", "--model", "m.pt", "--image", str(tmp_path / "sem.tif"), "--sample",
                 "s", "--params-json", json.dumps(params), "--device", "cpu", "--out", str(out),
                 "--out-second-phase", str(second_out)]) == 0
    expected = np.empty(image.shape, np.uint8)
    class_map = predict_image(model, image, tile_size=32, overlap=8, batch_size=2,
                              progress=False, preprocess=_float_input, second_phase_out=expected)
    np.testing.assert_array_equal(tifffile.imread(out), class_map)
    np.testing.assert_array_equal(tifffile.imread(second_out), expected)
