import json
import os

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.plots import accuracy_bar_chart, loss_curve, read_loss
from llmimg_jax.evaluation.report import write_report

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two default colours


def _pixels(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _has_colour(pixels, rgb, min_count=50):
    return int(np.all(np.abs(pixels.astype(int) - rgb) <= 2, axis=-1).sum()) >= min_count


def test_accuracy_bar_chart_one_and_two_conditions(tmp_path):
    without = {"explicit": 0.9, "attribute": 0.8, "count": 0.3, "relation": 0.5, "row/column": 0.2}
    with_expansion = {"explicit": 0.95, "attribute": 0.9, "count": 0.6, "relation": 0.7, "row/column": 0.5}
    one = _pixels(accuracy_bar_chart(without, str(tmp_path / "one.png"), title="one"))
    assert one.shape[0] > 200 and one.shape[1] > 400
    assert _has_colour(one, BLUE) and not _has_colour(one, ORANGE)
    two = _pixels(accuracy_bar_chart([without, with_expansion], str(tmp_path / "sub" / "two.png")))
    assert _has_colour(two, BLUE) and _has_colour(two, ORANGE)
    # Taller bars for higher accuracy: the blue bar of 'explicit' (0.9) has more pixels than that of 'count' (0.3).
    blue_cols = np.all(np.abs(one.astype(int) - BLUE) <= 2, axis=-1).sum(axis=0)
    heights = [h for h in blue_cols if h > 0]
    assert max(heights) > 2.5 * min(heights)
    with pytest.raises(UserError, match="no accuracies"):
        accuracy_bar_chart({}, str(tmp_path / "empty.png"))


def test_loss_curve_reads_step_and_loss_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": float(2.0 * np.exp(-s / 40) + 0.1), "lr": 1e-3} for s in range(1, 201)]
    lines.insert(10, {"step": 10, "eval_accuracy": 0.5})  # a line without loss is not a loss point
    lines.insert(20, {"step": 20, "loss": None})          # a non-finite loss, logged as null
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 1 lines"):
        steps, values = read_loss(str(path))
    assert len(steps) == 200 and values[0] == pytest.approx(2.0 * np.exp(-1 / 40) + 0.1)
    with pytest.warns(UserWarning):
        pixels = _pixels(loss_curve(str(path), str(tmp_path / "loss.png")))
    faded_blue = tuple(round(0.5 * c + 0.5 * 255) for c in BLUE)  # the raw curve, drawn at alpha 0.5
    assert _has_colour(pixels, faded_blue, 20) and _has_colour(pixels, ORANGE, 20)  # and its moving average
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1, "lr": 0.1}) + "\n")
    with pytest.raises(UserError, match="no line with 'step' and 'loss'"):
        loss_curve(str(empty), str(tmp_path / "x.png"))
    with pytest.raises(UserError, match="not found"):
        loss_curve(str(tmp_path / "missing.jsonl"), str(tmp_path / "x.png"))


def test_write_report(tmp_path):
    alignment = {"accuracy": 0.5, "num": 4, "unreadable": 1, "per_kind": {"count": 0.5, "relation": 0.5},
                 "per_kind_num": {"count": 2, "relation": 2}, "per_attribute": {"colour": 0.75, "count": 0.5},
                 "per_attribute_num": {"colour": 4, "count": 4}, "correct": [True, False, True, False]}
    png = accuracy_bar_chart(alignment["per_kind"], str(tmp_path / "accuracy.png"))
    results = {"title": "tiny", "settings": {"seed": 0}, "frechet": {"generated vs real": np.float64(12.5)},
               "alignment": {"without expansion": alignment, "with expansion": {**alignment, "accuracy": 0.75}},
               "diversity": {"with expansion": {"distinct_scenes": 0.5, "feature_distance": float("nan")}},
               "plots": [png]}
    md_path = write_report(results, str(tmp_path))
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["frechet"]["generated vs real"] == 12.5
    assert data["diversity"]["with expansion"]["feature_distance"] is None  # NaN is not JSON
    assert data["alignment"]["without expansion"]["correct"] == [True, False, True, False]
    md = open(md_path).read()
    assert "# tiny" in md
    assert "| count | 50.0 % (2) | 50.0 % (2) |" in md
    assert "| **overall** | **50.0 %** (4) | **75.0 %** (4) |" in md
    assert "| colour | 75.0 % | 75.0 % |" in md
    assert "| generated vs real | 12.5 |" in md
    assert "![accuracy](accuracy.png)" in md
    assert os.path.isfile(tmp_path / "accuracy.png")
