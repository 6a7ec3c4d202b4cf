"""`llmimg eval --features`: the Fréchet distance on a non-Shapes (folder) data set with a user's feature extractor,
checked against a float64 scipy reference; one-line errors for a missing or bad extractor."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from llmimg_jax.cli.main import main
from llmimg_jax.config import base_config, load_workdir_config, save_config
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.features import CHUNK, extract_features, load_feature_extractor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "shapes_diffusion.py") + ":tiny"
EXTRACTOR = '''
import numpy as np

def colour_stats(images):
    """Mean of each channel and the spread of the grey level: features [N, 4]."""
    x = images.astype(np.float64) / 255.0
    return np.concatenate([x.mean(axis=(1, 2)), x.mean(axis=-1).std(axis=(1, 2))[:, None]], axis=1)

NOT_A_FUNCTION = 3

def wrong_shape(images):
    return np.zeros((len(images) + 1, 2))

def with_nan(images):
    return np.full((len(images), 2), np.nan)
'''


@pytest.fixture
def extractor_file(tmp_path):
    path = tmp_path / "my_features.py"
    path.write_text(EXTRACTOR)
    return str(path)


def test_load_and_extract(extractor_file):
    f = load_feature_extractor(f"{extractor_file}:colour_stats")
    images = np.random.default_rng(0).integers(0, 256, (CHUNK + 7, 8, 8, 3), dtype=np.uint8)
    features = extract_features(f, images)  # two calls: CHUNK images, then 7
    assert features.shape == (CHUNK + 7, 4) and features.dtype == np.float64
    np.testing.assert_allclose(features[:, :3], images.mean(axis=(1, 2)) / 255.0, rtol=1e-12)
    assert load_feature_extractor("json:dumps") is json.dumps  # an importable module works too
    with pytest.raises(UserError, match=r"returned float64 \(8, 2\) for 7 images"):
        extract_features(load_feature_extractor(f"{extractor_file}:wrong_shape"), images[:7])
    with pytest.raises(UserError, match="non-finite"):
        extract_features(load_feature_extractor(f"{extractor_file}:with_nan"), images[:7])


@pytest.mark.parametrize("spec, message", [
    ("colour_stats", "should be MODULE:FUNCTION or path/to/file.py:FUNCTION"),
    ("{file}:", "should be MODULE:FUNCTION"),
    ("missing_dir/feats.py:f", "file 'missing_dir/feats.py' not found"),
    ("llmimg_no_such_module:f", "cannot import module 'llmimg_no_such_module'"),
    ("{file}:missing", "has no 'missing'"),
    ("{file}:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is a int, not a function"),
])
def test_bad_specs(spec, message, extractor_file):
    with pytest.raises(UserError, match=message):
        load_feature_extractor(spec.format(file=extractor_file))


def _run(*args):
    proc = subprocess.run([sys.executable, "-m", "llmimg_jax.cli.main", *args], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr


def test_cli_errors_before_loading_a_model(tmp_path, extractor_file):
    # A workdir of a run on a folder data set (no checkpoint needed: the checks come first).
    config = base_config()
    config.task, config.data.source, config.data.folder = "diffusion", "folder", str(tmp_path / "images")
    workdir = tmp_path / "run"
    save_config(config, str(workdir))
    for extra, message in (([], "alignment is measured on the Shapes world only, and the Fréchet distance needs a "
                                "feature extractor: pass --features MODULE:FUNCTION"),
                           (["--features", "llmimg_no_such_module:f"], "cannot import module"),
                           (["--features", f"{extractor_file}:missing"], "has no 'missing'"),
                           (["--captioner-workdir", str(workdir)], "the captioner is measured on the Shapes world")):
        code, err = _run("eval", "--workdir", str(workdir), *extra)
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    config.data.source = "shapes"
    save_config(config, str(tmp_path / "shapes_run"))
    code, err = _run("eval", "--workdir", str(tmp_path / "shapes_run"), "--captioner-workdir", str(workdir))
    assert code == 2 and "is not a captioner run" in err and err.count("\n") == 1, err


def write_folder(folder, num, rng):
    """Coloured squares of random sizes and places on white, captioned with their colour."""
    colours = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 60, 230), "yellow": (230, 210, 40)}
    folder.mkdir(parents=True)
    lines = []
    for i in range(num):
        name = list(colours)[i % len(colours)]
        image = np.full((32, 32, 3), 255, np.uint8)
        side = int(rng.integers(6, 16))
        y, x = rng.integers(1, 32 - side, 2)
        image[y:y + side, x:x + side] = colours[name]
        Image.fromarray(image).save(folder / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "text": f"a {name} square"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


def reference_frechet(a, b):
    """The FID formula with scipy's general matrix square root, float64."""
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root))


@pytest.mark.slow
def test_eval_on_a_folder_data_set(tmp_path, monkeypatch, capsys, extractor_file):
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    rng = np.random.default_rng(0)
    write_folder(tmp_path / "images" / "train", 8, rng)
    write_folder(tmp_path / "images" / "validation", 16, rng)
    workdir = str(tmp_path / "run")
    assert main(["train", "--config", TINY, "--workdir", workdir, "--config.train.steps=2",
                 "--config.train.sample_every=0", "--config.data.source=folder",
                 f"--config.data.folder={tmp_path / 'images'}"]) == 0
    spec = f"{extractor_file}:colour_stats"
    num = 8
    capsys.readouterr()
    assert main(["eval", "--workdir", workdir, "--num", str(num), "--features", spec, "--best-of", "2"]) == 2
    assert "ranks images with the Shapes probe" in capsys.readouterr().err  # refused before anything is drawn
    assert main(["eval", "--workdir", workdir, "--num", str(num), "--steps", "2", "--features", spec]) == 0
    out = capsys.readouterr().out
    assert "alignment: not measured: Shapes world only (data.source='folder')" in out
    report = json.load(open(os.path.join(workdir, "eval", "report.json")))
    assert "alignment" not in report and report["settings"]["features"] == spec
    for name in ("report.md", "loss.png", "eval_samples.png"):
        assert os.path.isfile(os.path.join(workdir, "eval", name)), name

    # The reference: the same images (the first 8 validation captions drawn with the same seed) and the real
    # validation images, 0..7 to compare with and 8..15 for the baseline.
    from llmimg_jax.data.sources import make_source
    from llmimg_jax.pipeline import TextToImagePipeline

    source = make_source(load_workdir_config(workdir).data, "validation")
    real = np.stack([source[i]["image"] for i in range(2 * num)])
    captions = [source[i]["text"] for i in range(num)]
    generated = TextToImagePipeline.from_workdir(workdir).generate_arrays(captions, seed=0, steps=2)
    f = load_feature_extractor(spec)
    expected = {
        f"generated (without expansion) vs real (features {spec})": reference_frechet(f(generated), f(real[:num])),
        f"real vs real (baseline, same N) (features {spec})": reference_frechet(f(real[num:]), f(real[:num])),
    }
    assert report["frechet"].keys() == expected.keys()
    for key, value in expected.items():
        assert report["frechet"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert expected[f"real vs real (baseline, same N) (features {spec})"] > 0
    assert report["diversity"]["without expansion"]["feature_distance"] >= 0
