"""Post-processing: impulse denoising against a loop + scipy reference, the contrast stretch against its formula,
and what it does for the Shapes reader (salt-and-pepper noise removed; clean renders left alone)."""

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import median_filter

from llmimg_jax.cli.main import main
from llmimg_jax.config import base_config
from llmimg_jax.data.shapes.reader import read_image
from llmimg_jax.data.shapes.render import render
from llmimg_jax.data.shapes.scene import sample_scene
from llmimg_jax.data.shapes.spec import ShapesError
from llmimg_jax.errors import UserError
from llmimg_jax.generator.load import LoadedGenerator
from llmimg_jax.generator.postprocess import denoise, postprocess_images, stretch_contrast
from llmimg_jax.pipeline import TextToImagePipeline


def salt_and_pepper(image, rng, density):
    noisy = image.copy()
    u = rng.random(image.shape[:2])
    noisy[u < density / 2] = 0
    noisy[(u >= density / 2) & (u < density)] = 255
    return noisy


def reads_as(image, scene):
    try:
        return read_image(image) == scene
    except ShapesError:
        return False


def test_denoise_matches_reference():
    rng = np.random.default_rng(0)
    images = np.repeat(np.repeat(rng.integers(0, 256, (2, 4, 4, 3)), 3, axis=1), 3, axis=2).astype(np.uint8)
    images = salt_and_pepper(images, rng, 0.15)
    images[0, 0, 0] = 255 - images[0, 0, 1]  # a speck in a corner
    tolerance, min_similar = 64, 2
    expected = images.copy()
    n, h, w, _ = images.shape
    for b in range(n):
        median = np.stack([median_filter(images[b, ..., c].astype(float), size=3, mode="nearest")
                           for c in range(3)], axis=-1)
        for y in range(h):
            for x in range(w):
                similar = sum(np.abs(images[b, y + dy, x + dx].astype(int) - images[b, y, x]).max() <= tolerance
                              for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                              if (dy or dx) and 0 <= y + dy < h and 0 <= x + dx < w)
                if similar < min_similar:
                    expected[b, y, x] = np.round(median[y, x])
    out = denoise(images, tolerance=tolerance, min_similar=min_similar)
    assert (out != images).any(axis=-1).sum() >= 5  # the reference did replace specks
    np.testing.assert_array_equal(out, expected)


def test_stretch_contrast_formula():
    ramp = np.linspace(60, 160, 12 * 12 * 3).reshape(1, 12, 12, 3)
    low = np.round(ramp).astype(np.uint8)
    lo, hi = float(low.min()), float(low.max())  # 60, 160: width 100 -> 192 (gain 1.92 < 2)
    new_lo = lo * (255 - 192) / (lo + 255 - hi)  # the slack shared 60 : 95
    expected = np.clip(np.round(new_lo + (low.astype(np.float64) - lo) * 192 / (hi - lo)), 0, 255)
    out = stretch_contrast(low)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == round(new_lo) and out.max() == round(new_lo + 192)
    # The gain is capped: a range of 40 becomes 80, not 192; a flat image and a contrasted one stay as they are.
    narrow = np.round(np.linspace(100, 140, 12 * 12 * 3).reshape(1, 12, 12, 3)).astype(np.uint8)
    assert np.ptp(stretch_contrast(narrow).astype(int)) == 80
    flat = np.full((1, 8, 8, 3), 37, np.uint8)
    np.testing.assert_array_equal(stretch_contrast(flat), flat)
    wide = np.round(np.linspace(20, 230, 8 * 8 * 3).reshape(1, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(stretch_contrast(wide), wide)
    # A black background stays black.
    dark = np.zeros((1, 8, 8, 3), np.uint8)
    dark[0, 2:5, 2:5] = (120, 20, 20)
    assert (stretch_contrast(dark)[0, 0, 0] == 0).all() and stretch_contrast(dark)[0, 3, 3, 0] == 192


def test_bad_input():
    with pytest.raises(UserError, match="uint8 images"):
        postprocess_images(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(UserError, match="uint8 images"):
        postprocess_images(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("S", [32, 64])
def test_salt_and_pepper_removed_for_the_reader(S):
    rng = np.random.default_rng(S)
    scenes = [sample_scene(rng) for _ in range(40)]
    clean = np.stack([render(scene, S, rng) for scene in scenes])
    noisy = np.stack([salt_and_pepper(image, rng, 0.1) for image in clean])
    raw = [reads_as(image, scene) for image, scene in zip(noisy, scenes)]
    fixed = [reads_as(image, scene) for image, scene in zip(postprocess_images(noisy), scenes)]
    print(f"S={S}: read correctly {sum(raw)} noisy, {sum(fixed)} post-processed of {len(scenes)}")
    assert sum(fixed) >= 36 and sum(raw) <= 32
    assert any(f and not r for f, r in zip(fixed, raw))  # images the reader gets right only after cleaning


@pytest.mark.parametrize("S", [32, 64])
def test_clean_renders_stay_readable(S):
    rng = np.random.default_rng(S + 1)
    scenes = [sample_scene(rng) for _ in range(60)]
    clean = np.stack([render(scene, S, rng) for scene in scenes])
    out = postprocess_images(clean)
    assert all(reads_as(image, scene) for image, scene in zip(out, scenes))
    np.testing.assert_array_equal(stretch_contrast(clean), clean)  # drawn colours have contrast enough
    if S == 64:  # at 32 a small triangle's 1-pixel tip can count as a speck; at 64 nothing moves
        np.testing.assert_array_equal(out, clean)


def test_pipeline_and_cli_option(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    noisy = salt_and_pepper(render(sample_scene(rng), 32, rng), rng, 0.1)

    def generate(prompts, *, seed=0, **options):
        return np.stack([noisy] * len(prompts))

    def from_workdir(workdir, **kw):
        return TextToImagePipeline(LoadedGenerator("diffusion", base_config(), workdir, 0, generate),
                                   blocklist=kw.get("blocklist"))

    pipe = from_workdir("w")
    np.testing.assert_array_equal(np.asarray(pipe("a red circle").images[0]), noisy)  # off by default
    expected = postprocess_images(noisy[None])[0]
    np.testing.assert_array_equal(np.asarray(pipe("a red circle", postprocess=True).images[0]), expected)
    monkeypatch.setattr(TextToImagePipeline, "from_workdir", staticmethod(from_workdir))
    for flag, image in (([], noisy), (["--postprocess"], expected)):
        out = tmp_path / f"x{len(flag)}.png"
        assert main(["generate", "--workdir", "w", "a red circle", "--out", str(out), *flag]) == 0
        np.testing.assert_array_equal(np.asarray(Image.open(out)), image)
