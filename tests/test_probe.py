import json
import os

import numpy as np
import pytest

from llmimg_jax.data.shapes.grammar import describe
from llmimg_jax.data.shapes.render import render
from llmimg_jax.data.shapes.scene import Scene, ShapeObject, sample_scene
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation import probe as probe_lib
from llmimg_jax.evaluation.diversity import (diversity, distinct_scene_fraction, feature_diversity,
                                             mean_pairwise_distance)
from llmimg_jax.evaluation.frechet import frechet_distance_from_features
from llmimg_jax.evaluation.probe import load_or_train_probe, probe_accuracy, random_scenes, scene_targets
from llmimg_jax.evaluation.rerank import BREAKS_TEXT, ProbeReranker, _log_softmax, scene_log_likelihood

S = 32


@pytest.fixture(scope="module")
def tiny_probe(tmp_path_factory):
    """A barely trained probe: enough for plumbing, caching and diversity (features differ between images)."""
    return load_or_train_probe(str(tmp_path_factory.mktemp("tiny_probe")), S, steps=3, batch=8)


def test_cache_round_trip(tmp_path, monkeypatch):
    cache = str(tmp_path / "probe")
    first = load_or_train_probe(cache, S, steps=2, batch=4)
    settings = json.load(open(os.path.join(cache, "settings.json")))
    assert settings["image_size"] == S and settings["steps"] == 2 and set(settings["validation_accuracy"]) == {
        "presence", "shape", "colour", "size", "background"}
    images, _ = random_scenes(5, S, np.random.default_rng(0))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached probe should have been loaded, not retrained")

    monkeypatch.setattr(probe_lib, "train_probe", no_training)
    second = load_or_train_probe(cache, S, steps=2, batch=4)
    np.testing.assert_array_equal(first.features(images), second.features(images))
    with pytest.raises(AssertionError, match="not retrained"):  # other settings: retrained
        load_or_train_probe(cache, S, steps=3, batch=4)


def test_features_accept_uint8_and_float(tiny_probe):
    probe = tiny_probe
    images, _ = random_scenes(7, S, np.random.default_rng(1))
    f_uint8 = probe.features(images)
    f_float = probe.features(images.astype(np.float32) / 127.5 - 1.0)
    assert f_uint8.shape == (7, 9 * probe.model.cell_features) and f_uint8.dtype == np.float64
    np.testing.assert_allclose(f_uint8, f_float, atol=1e-5)
    # Batching does not change a row's features.
    np.testing.assert_allclose(probe.features(images[3:4]), f_uint8[3:4], atol=1e-5)
    with pytest.raises(UserError, match="image size 32"):
        probe.features(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(UserError, match="too small"):
        load_or_train_probe(None, 8)


def test_diversity_identical_vs_different(tiny_probe):
    probe = tiny_probe
    rng = np.random.default_rng(2)
    scenes = [Scene((ShapeObject(shape, colour, "large", row, 1),), "black")
              for shape, colour, row in (("circle", "red", 0), ("square", "blue", 1), ("triangle", "green", 2),
                                         ("circle", "cyan", 1))]
    different = np.stack([render(s, S, rng) for s in scenes])
    identical = np.repeat(different[:1], 4, axis=0)
    assert distinct_scene_fraction([identical]) == 0.25
    assert distinct_scene_fraction([different]) == 1.0
    assert distinct_scene_fraction([identical, different]) == pytest.approx(0.625)
    assert feature_diversity(probe, [identical]) == pytest.approx(0.0, abs=1e-6)
    assert feature_diversity(probe, [different]) > 1e-3
    both = diversity([identical, different], probe)
    assert both["distinct_scenes"] == pytest.approx(0.625)
    assert both["feature_distance"] == pytest.approx(feature_diversity(probe, [different]) / 2, rel=1e-6)
    # Two blank images cannot be read: together they count as one scene.
    assert distinct_scene_fraction([np.zeros((2, S, S, 3), np.uint8)]) == 0.5
    with pytest.raises(UserError, match="2 or more images"):
        distinct_scene_fraction([different[:1]])


def test_mean_pairwise_distance_reference():
    x = np.random.default_rng(3).normal(size=(6, 5))
    want = np.mean([np.linalg.norm(x[i] - x[j]) for i in range(6) for j in range(i + 1, 6)])
    assert mean_pairwise_distance(x) == pytest.approx(want, rel=1e-12)


@pytest.fixture(scope="module")
def trained_probe(tmp_path_factory):
    """The probe at its default settings, trained into a temporary cache once for this module."""
    return load_or_train_probe(str(tmp_path_factory.mktemp("probe")), S)


@pytest.mark.slow
def test_trained_probe_accuracy_and_frechet(trained_probe):
    probe = trained_probe
    # Held-out images from a seed stream that neither training nor the probe's own validation uses.
    images, scenes = random_scenes(500, S, np.random.default_rng([7, 2 * 10**6]))
    accuracy = probe_accuracy(probe, images, scenes)
    assert min(accuracy.values()) >= 0.99, accuracy
    predicted = probe.predict(images)
    assert np.mean([p == s for p, s in zip(predicted, scenes)]) >= 0.97
    assert probe.predict(np.zeros((1, S, S, 3), np.uint8)) == [None]  # no object: not a scene
    # Fréchet distance in probe space: two real sets are closer than real vs noisy images, or vs a shifted
    # distribution (circles only; one object each). The estimator's small-sample bias (real vs real) is large
    # in 288 dimensions unless N is in the thousands.
    n, rng = 2000, np.random.default_rng([8, 2 * 10**6])
    real_a, real_b = random_scenes(n, S, rng)[0], random_scenes(n, S, rng)[0]
    noisy = np.clip(real_b + rng.normal(0, 20, real_b.shape), 0, 255).astype(np.uint8)
    circles = np.stack([render(sample_scene(rng, fixed={"shape": "circle"}), S, rng) for _ in range(n)])
    single = np.stack([render(sample_scene(rng, 1), S, rng) for _ in range(n)])
    reference = probe.features(real_a)
    same, noise, circle, one = (frechet_distance_from_features(reference, probe.features(x))
                                for x in (real_b, noisy, circles, single))
    assert min(noise, circle, one) > 2 * same, (same, noise, circle, one)


@pytest.mark.slow
def test_best_of_picks_the_image_that_shows_the_text(trained_probe):
    reranker = ProbeReranker(trained_probe)
    rng = np.random.default_rng(0)
    red_circle = Scene((ShapeObject("circle", "red", "large", 0, 0),), "black")
    blue_square = Scene((ShapeObject("square", "blue", "large", 1, 1), ShapeObject("triangle", "green", "small", 2, 2)),
                        "white")
    a, b = render(red_circle, S, rng), render(blue_square, S, rng)
    blank = np.zeros_like(a)
    candidates = np.stack([np.stack([b, a, blank])] * 4)
    texts = [describe(red_circle), "a red circle", "draw one red object please", describe(blue_square)]
    chosen, index = reranker.choose(candidates, texts)
    assert index.tolist() == [1, 1, 1, 0]
    np.testing.assert_array_equal(chosen[0], a)
    # An image the probe reads as breaking the instruction ranks below every one that keeps it, and an unreadable
    # one (no object) below both.
    scores = reranker.scores(np.stack([b, a, blank]), ["a red circle"] * 3)
    assert scores[2] < scores[0] < scores[1] and scores[0] < BREAKS_TEXT / 2 < scores[1]
    with pytest.raises(UserError, match="one text per image"):
        reranker.scores(np.stack([a, b]), ["a red circle"])


@pytest.mark.slow
def test_scene_likelihood_ranks_the_true_scene_first(trained_probe):
    """On real images the true scene is more likely than random ones; the sum matches a float64 computation."""
    reranker = ProbeReranker(trained_probe)
    rng = np.random.default_rng(1)
    images, scenes = random_scenes(6, S, rng)
    logits = reranker.probe.logits(images)
    log_probs = {k: _log_softmax(v) for k, v in logits.items()}
    for i, scene in enumerate(scenes):
        mine = scene_log_likelihood(log_probs, i, scene)
        assert all(mine >= scene_log_likelihood(log_probs, i, sample_scene(rng)) for _ in range(20))
        # Reference: the probability of each named label under a float64 softmax, multiplied out.
        probs = {k: np.exp(v.astype(np.float64)) / np.exp(v.astype(np.float64)).sum(-1, keepdims=True)
                 for k, v in logits.items()}
        t = scene_targets([scene])
        want = np.log(probs["background"][i, t["background"][0]])
        for j in range(9):
            want += np.log(probs["presence"][i, j, t["presence"][0, j]])
            if t["presence"][0, j]:
                want += sum(np.log(probs[h][i, j, t[h][0, j]]) for h in ("shape", "colour", "size"))
        assert mine == pytest.approx(want, rel=1e-9, abs=1e-9)
