"""`slidemap demo --fast` runs the whole pipeline end to end through the real CLI."""

import pytest

from slidemap.cli import main
from slidemap.formats.prediction import SceneMetrics

pytestmark = pytest.mark.slow  # runs whole commands and grids: `pytest -m 'not slow'` leaves it out

# Measured 0.787 pooled test F1 (0.840 test_a, 0.734 test_b) on 2 cores; the floor leaves slack for
# thread-count and platform noise in the float arithmetic.
F1_FLOOR = 0.60


def test_demo_fast_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test_a" in printed and "test_b" in printed
    for name in ("probability.tif", "mask.tif", "landslides.gpkg", "metrics.json", "metrics.csv",
                 "error_map_test_a.png", "error_map_test_b.png"):
        assert (out / "prediction" / name).is_file(), name
    metrics = SceneMetrics.load(out / "prediction" / "metrics.json")
    assert {a.area for a in metrics.areas} == {"test_a", "test_b"}
    assert metrics.all.scores.f1 >= F1_FLOOR
