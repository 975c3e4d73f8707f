"""The quickstart's code path at toy size: every stage runs, the table and report come out, a rerun reuses all."""
import csv
import math

import pytest

from masklam.downstream.report import COLUMNS
from masklam.quickstart import QuickstartConfig, format_table, gap_closed, run


def test_gap_closed_and_table_arithmetic():
    s = {"lapo": {"probe_nmse": 0.9, "normalized_id": 0.2, "probe_nmse_std": 0.0},
         "masklam": {"probe_nmse": 0.6, "normalized_id": 0.5, "probe_nmse_std": 0.0},
         "lapo-clean": {"probe_nmse": 0.5, "normalized_id": 0.6, "probe_nmse_std": 0.0}}
    assert gap_closed(s, "probe_nmse", True) == pytest.approx(0.75)
    assert gap_closed(s, "normalized_id", False) == pytest.approx(0.75)
    table = format_table(s)
    assert "1.50x lower" in table and "75% in probe NMSE" in table and "75% in normalised return" in table
    assert table.index("lapo-clean") < table.index("masklam")
    # an upper bound below LAPO leaves no gap to close: not a percentage
    s["lapo-clean"]["normalized_id"] = 0.1
    assert math.isnan(gap_closed(s, "normalized_id", False))
    assert "n/a (the upper bound is not above LAPO) in normalised return" in format_table(s)


@pytest.mark.slow
def test_toy_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    res = run(QuickstartConfig(preset="toy", out=out, progress=False))
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == COLUMNS
    got = {(r["method"], r["split"]) for r in rows}
    for method in ("lapo", "masklam"):
        assert {(method, "id"), (method, "ood")} <= got
    assert ("lapo-clean", "id") in got and ("bc-full", "ood") in got
    assert {r["labels"] for r in rows if r["method"] == "masklam"} == {"1", "2"}
    assert all(r["probe_nmse"] for r in rows if r["method"] in ("lapo", "masklam", "lapo-clean"))
    page = (out / "report.html").read_text()
    assert "<img" in page and "masklam" in page
    assert "MaskLAM vs LAPO" in res["table"] and (out / "table.txt").read_text().strip() == res["table"]
    capsys.readouterr()
    run(QuickstartConfig(preset="toy", out=out, progress=False))  # everything cached
    assert "running" not in capsys.readouterr().out
