"""Shapes world geometry, rendering and the image reader, against SPEC.md and independent float64 masks."""

import numpy as np
import pytest

from llmimg_jax.data.shapes.reader import read_image
from llmimg_jax.data.shapes.render import check_image_size, place, render
from llmimg_jax.data.shapes.scene import Scene, ShapeObject, sample_scene
from llmimg_jax.data.shapes.spec import BACKGROUNDS, COLOURS, ShapesError, box_side, cell_span, jitter_max

SIZES_S = (32, 64)


def test_geometry_constants_follow_the_spec():
    assert [box_side("small", 32), box_side("large", 32), jitter_max(32)] == [5, 8, 1]
    assert [box_side("small", 64), box_side("large", 64), jitter_max(64)] == [10, 16, 2]
    assert [cell_span(c, 32) for c in range(3)] == [(0, 10), (10, 21), (21, 32)]
    assert [cell_span(c, 64) for c in range(3)] == [(0, 21), (21, 42), (42, 64)]
    with pytest.raises(ShapesError):
        check_image_size(16)  # a large box (4 px) plus margins does not fit a 5 px cell


@pytest.mark.parametrize("S", SIZES_S)
def test_boxes_centred_jittered_and_clipped_inside_cells(S):
    rng = np.random.default_rng(0)
    J, seen = jitter_max(S), {}
    for _ in range(1500):
        scene = sample_scene(rng)
        for obj, (x0, y0, side) in zip(scene.objects, place(scene, S, rng)):
            assert side == box_side(obj.size, S)
            for c, start in ((obj.col, x0), (obj.row, y0)):
                lo, hi = cell_span(c, S)
                assert lo + 1 <= start and start + side <= hi - 1  # 1-pixel margin inside the cell
                seen.setdefault((lo, hi, side), []).append(start)
    for (lo, hi, side), starts in seen.items():
        centred = lo + (hi - lo - side) // 2
        # Every jitter value in [-J, J], clipped, occurs, and nothing else does.
        expected = {min(max(centred + j, lo + 1), hi - 1 - side) for j in range(-J, J + 1)}
        assert set(starts) == expected, (lo, hi, side)
        unclipped = [s - centred for s in starts if lo + 1 < s < hi - 1 - side]
        if len(set(unclipped)) == 2 * J + 1:  # uniform where no clipping happens (loose binomial bound)
            counts = np.bincount(np.array(unclipped) + J)
            assert counts.min() > 0.5 * counts.mean()


def _independent_mask(shape: str, side: int) -> np.ndarray:
    """float64 point-in-shape at pixel centres: disc by distance, triangle by the signs of three edge functions."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        return np.hypot(xx - side / 2, yy - side / 2) <= side / 2
    verts = [(side / 2, 0.0), (side, float(side)), (0.0, float(side))]  # apex, base right, base left (clockwise)
    inside = np.ones((side, side), bool)
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1]):
        inside &= (bx - ax) * (yy - ay) - (by - ay) * (xx - ax) >= 0
    return inside


@pytest.mark.parametrize("S", SIZES_S)
def test_render_pixels_match_independent_masks_palette_and_background(S):
    rng = np.random.default_rng(1)
    for seed in range(300):
        scene = sample_scene(rng)
        image = render(scene, S, np.random.default_rng(seed))
        boxes = place(scene, S, np.random.default_rng(seed))  # the same draws as inside render
        assert image.dtype == np.uint8 and image.shape == (S, S, 3)
        bg = np.array(BACKGROUNDS[scene.background], np.uint8)
        expected = np.broadcast_to(bg, (S, S, 3)).copy()
        for obj, (x0, y0, side) in zip(scene.objects, boxes):
            expected[y0:y0 + side, x0:x0 + side][_independent_mask(obj.shape, side)] = COLOURS[obj.colour]
        np.testing.assert_array_equal(image, expected)
        colours = {tuple(c) for c in image.reshape(-1, 3)}
        assert colours == {tuple(bg)} | {COLOURS[o.colour] for o in scene.objects}


@pytest.mark.parametrize("S", SIZES_S)
def test_objects_never_touch(S):
    rng = np.random.default_rng(2)
    for _ in range(300):
        scene = sample_scene(rng, 3)
        owner = np.full((S + 2, S + 2), -1)  # padded: which object each pixel belongs to
        image = render(scene, S, rng)
        fg = np.any(image != BACKGROUNDS[scene.background], axis=-1)
        for i, obj in enumerate(scene.objects):
            (y0, y1), (x0, x1) = cell_span(obj.row, S), cell_span(obj.col, S)
            cell_fg = np.zeros_like(fg)
            cell_fg[y0:y1, x0:x1] = fg[y0:y1, x0:x1]
            owner[1:-1, 1:-1][cell_fg] = i
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = owner[1 + dy:S + 1 + dy, 1 + dx:S + 1 + dx]
                here = owner[1:-1, 1:-1]
                assert not np.any((here >= 0) & (shifted >= 0) & (here != shifted))


def test_square_triangle_circle_pixel_counts_small_S32():
    scene = Scene((ShapeObject("circle", "red", "small", 0, 0), ShapeObject("square", "red", "small", 0, 2),
                   ShapeObject("triangle", "red", "small", 2, 2)), "black")
    image = render(scene, 32, np.random.default_rng(0))
    counts = [int(np.any(image[cell_span(r, 32)[0]:cell_span(r, 32)[1], cell_span(c, 32)[0]:cell_span(c, 32)[1]]
                         > 0, axis=-1).sum()) for r, c in ((0, 0), (0, 2), (2, 2))]
    assert counts == [21, 25, 13]  # disc of diameter 5 loses its 4 corners; triangle rows 1, 1, 3, 3, 5


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    k = np.exp(-np.arange(-2, 3) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    x = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(2, 2) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(x, pad, mode="edge")
        x = sum(w * np.take(p, np.arange(i, i + image.shape[axis]), axis=axis) for i, w in enumerate(k))
    return x


@pytest.mark.parametrize("S", SIZES_S)
def test_reader_exact_on_clean_renders(S):
    rng = np.random.default_rng(3)
    for _ in range(300):
        scene = sample_scene(rng)
        assert read_image(render(scene, S, rng)) == scene


@pytest.mark.parametrize("S", SIZES_S)
def test_reader_tolerates_noise_and_blur(S):
    rng = np.random.default_rng(4)
    exact = 0
    for _ in range(200):
        scene = sample_scene(rng)
        noisy = _blur(render(scene, S, rng), sigma=0.6) + rng.normal(0, 20, (S, S, 3))
        exact += read_image(np.clip(np.round(noisy), 0, 255).astype(np.uint8)) == scene
    assert exact >= 0.95 * 200


def test_reader_ignores_specks_and_rejects_empty_images():
    scene = Scene((ShapeObject("triangle", "cyan", "small", 1, 1),), "white")
    image = render(scene, 32, np.random.default_rng(0))
    image[3:5, 3] = COLOURS["red"]  # a 2-pixel speck in the empty top-left cell
    assert read_image(image) == scene
    with pytest.raises(ShapesError, match="found 0 objects"):
        read_image(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ShapesError):
        read_image(np.zeros((32, 32), np.uint8))
