"""The ``prepare`` step's logic that needs no dataset: the grey-value stretch (exact values,
refusals) and which samples go through ``prepare``. On real MetalDAM images: test_metaldam.py."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mvfcnn.core.errors import InputError


def test_stretch_maps_the_percentiles_to_the_full_range_exactly():
    """Exact values on a hand-made ramp: percentiles 0/100 of 10..50 map 10 -> 0, 50 -> 255,
    30 -> 127.5 rounded to 128; clipping outside [low, high] percentiles; floats to [0, 1]."""
    from mvfcnn.data.prepare import stretch_intensity

    ramp = np.array([[10, 20, 30, 40, 50]], dtype=np.uint8)
    out, grey = stretch_intensity(ramp, (0, 100))
    assert grey == [10.0, 50.0] and out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 64, 128, 191, 255]])
    out, grey = stretch_intensity(ramp, (25, 75))  # 20 and 40: the ends are clipped
    assert grey == [20.0, 40.0]
    np.testing.assert_array_equal(out, [[0, 0, 128, 255, 255]])
    wide = np.array([[1000, 3000]], dtype=np.uint16)
    np.testing.assert_array_equal(stretch_intensity(wide, (0, 100))[0], [[0, 65535]])
    unit = np.array([[0.2, 0.3, 0.4]], dtype=np.float32)
    np.testing.assert_allclose(stretch_intensity(unit, (0, 100))[0], [[0.0, 0.5, 1.0]],
                               atol=1e-6)


@pytest.mark.parametrize("percentiles, message", [
    ((50, 50), "0 <= low < high <= 100"), ((-1, 99), "0 <= low < high <= 100"),
    ((1, 99), "percentiles are both 7 (a flat image)"),
])
def test_stretch_refuses_what_it_cannot_do(percentiles, message):
    from mvfcnn.data.prepare import stretch_intensity

    with pytest.raises(InputError, match=re.escape(message)) as err:
        stretch_intensity(np.full((4, 4), 7, np.uint8), percentiles, sample="s", path="flat.tif")
    assert "flat.tif" in str(err.value)


def test_needs_prepare_decides_from_the_sheet_and_upscale():
    from mvfcnn.core.layout import needs_prepare

    assert not needs_prepare("a.tif", "l.tif", "", "")
    assert needs_prepare("a.jpg", "l.tif", "", "")
    assert needs_prepare("a.tif", "l.png", "", "")
    assert needs_prepare("a.tif", "l.tif", "65", "")
    assert needs_prepare("a.tif", "l.tif", "", "2.0")
    assert needs_prepare("a.tif", "l.tif", "0", "", upscale=2)
    assert needs_prepare("a.tif", "l.tif", "0", "", stretch=True)
