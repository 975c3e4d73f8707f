"""benchmarks/scale_curve.py's record of the science: what a command commits never loses or reverts a point."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_curve.py"
spec = importlib.util.spec_from_file_location("scale_curve", SCRIPT)
sc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sc)


def _row(variant: str, seed: int, ret: float) -> dict:
    return dict(task="cheetah-run", variant=variant, updates=1000, trajectories=80, seed=seed, probe_nmse=0.5,
                return_id=ret, return_id_sem=1.0, return_ood=ret, return_ood_sem=1.0, minutes=3.0)


def test_a_run_dirs_stale_copy_never_reverts_a_committed_point_and_its_missing_points_are_added(tmp_path: Path):
    redone = _row("lapo-authors", 0, 92.0)  # committed by another command's --redo
    committed = [redone, _row("masklam-authors", 0, 40.0)]
    local = [_row("lapo-authors", 0, 68.0),  # this run dir's older copy of the redone point
             _row("masklam-mask-target", 0, 120.0)]  # run here without --commit: never committed
    fresh = [_row("masklam-authors", 0, 50.0)]  # what this command just ran: it wins
    merged = {sc.point_id(r): r["return_id"] for r in sc.to_commit(committed, local, fresh)}
    assert merged == {sc.point_id(_row("lapo-authors", 0, 0)): 92.0,
                      sc.point_id(_row("masklam-authors", 0, 0)): 50.0,
                      sc.point_id(_row("masklam-mask-target", 0, 0)): 120.0}
    # through the csv files the script writes and reads
    sc.write_rows(tmp_path / "curve.csv", sc.to_commit(committed, local, fresh))
    again = sc.read_rows(tmp_path / "curve.csv")
    assert [float(r["return_id"]) for r in again] == [92.0, 50.0, 120.0]


def test_the_downstream_ablations_share_their_mask_lams_pretraining_and_change_one_downstream_choice(tmp_path: Path):
    """An ablation is only read against masklam-authors if it trains the same LAM (so the same probe) and differs in
    the latent BC or decoder it names, nothing else."""
    def cfg(variant: str):
        return sc.point_config(tmp_path, "cheetah-run", variant, 1000, 80, 0)

    theirs, ours = cfg("masklam-authors"), cfg("masklam-authors-lam")
    expect = {"masklam-authors-bc": (theirs.bc_latent, ours.decode),
              "masklam-authors-decoder": (ours.bc_latent, theirs.decode),
              "masklam-authors-bc-std": ({**theirs.bc_latent, "standardize": True}, ours.decode),
              "masklam-authors-bc-hidden": ({**theirs.bc_latent, "hidden": 256}, ours.decode)}
    assert set(expect) == set(sc.DOWNSTREAM_ABLATIONS)
    for variant, (bc_latent, decode) in expect.items():
        c = cfg(variant)
        assert (c.bc_latent, c.decode) == (bc_latent, decode), variant
        # everything else, the LAM's pretraining included, is their MaskLAM's
        assert dataclasses.replace(c, bc_latent=theirs.bc_latent, decode=theirs.decode) == theirs, variant
        assert (c.bc_latent, c.decode) not in ((theirs.bc_latent, theirs.decode), (ours.bc_latent, ours.decode))


def test_a_point_collects_the_distractor_free_data_only_for_the_method_that_trains_on_them(tmp_path: Path):
    """The curve's methods train on the distracted data only: collecting their clean twin too cost every new run
    directory a second collection. The distracted data's spec is the same either way (so its stage key)."""
    def data(variant: str) -> dict:
        return sc.point_config(tmp_path, "cheetah-run", variant, 1000, 320, 0).data["cheetah-run"]

    assert set(data("lapo-clean")) == {"collect", "collect_clean"}
    assert data("lapo-clean")["collect_clean"]["distractors"] == "none"
    for variant in ("lapo-authors", "masklam-authors", "masklam-mask-target", "lapo"):
        assert set(data(variant)) == {"collect"}, variant
        assert data(variant)["collect"] == data("lapo-clean")["collect"]
        assert data(variant)["collect"]["episodes"] == 320


def test_the_thread_count_is_in_the_lams_stage_key_and_nowhere_else(tmp_path: Path):
    """A LAM's numbers depend on its torch threads: --threads 2 must train a LAM of its own, never resume or reuse
    a one-thread one; the data and the downstream stages' tables stay the same."""
    from masklam.downstream.cache import stage_key
    from masklam.downstream.stages import pretrain_conf

    one, two = (sc.point_config(tmp_path, "cheetah-run", "masklam-authors", 4000, 80, 0, n) for n in (1, 2))
    lam_key = [stage_key("pretrain", pretrain_conf("masklam", ["d.h5"], 16, 0, 0, c.pretrain)) for c in (one, two)]
    assert lam_key[0] != lam_key[1]
    assert dataclasses.replace(two, pretrain=one.pretrain) == one  # the rest of the point, unchanged
    assert {k: v for k, v in two.pretrain.items() if k != "threads"} == {
        k: v for k, v in one.pretrain.items() if k != "threads"}


def test_each_point_records_how_its_lam_ran_and_the_table_shows_it(tmp_path: Path):
    """precision and torch threads come from the point's LAM (its metrics.json); rows from before the columns
    existed read back without them and show "-", never a guess."""
    from masklam.files import write_json

    write_json(tmp_path / "stages" / "pretrain" / "abc" / "metrics.json", {"precision": "fp32", "torch_threads": 2})
    assert sc.lam_run(tmp_path, "abc") == {"precision": "fp32", "threads": 2}
    old = _row("masklam-authors", 0, 90.0)  # written before the columns existed
    new = {**_row("masklam-authors", 1, 100.0), **sc.lam_run(tmp_path, "abc")}
    sc.write_rows(tmp_path / "curve.csv", [old, new])
    back = sc.read_rows(tmp_path / "curve.csv")
    assert [(r["precision"], r["threads"]) for r in back] == [("", ""), ("fp32", "2")]
    line = sc.markdown(back).splitlines()[-1]
    assert line.endswith("| -, fp32 x2 |") and "| 0,1 |" in line
    assert sc.markdown(back[1:]).splitlines()[-1].endswith("| fp32 x2 |")


def test_a_point_finished_earlier_never_overwrites_a_newer_commit_and_committed_points_are_not_rerun(
        tmp_path: Path, monkeypatch, capsys):
    commit = tmp_path / "dir"
    commit.mkdir()
    sc.write_rows(commit / "curve.csv", [_row("lapo-authors", 0, 92.0)])  # another curve's --redo, committed
    mine = [_row("lapo-authors", 0, 68.0), _row("masklam-authors", 0, 50.0)]  # P1 run here earlier, P2 just now
    monkeypatch.setattr(sc, "figure", lambda rows, path: None)
    sc.commit_point(commit, mine, mine[1], "a message")  # outside a git repository: git fails quietly
    assert {r["variant"]: float(r["return_id"]) for r in sc.read_rows(commit / "curve.csv")} == {
        "lapo-authors": 92.0, "masklam-authors": 50.0}
    # a run directory holding other points: a point only the commit holds is done all the same
    (tmp_path / "run").mkdir()
    sc.write_rows(tmp_path / "run" / "curve.csv", [_row("masklam-mask-target", 1, 120.0)])
    ran = []
    monkeypatch.setattr(sc, "point", lambda *a, **k: ran.append(a) or {})
    monkeypatch.setattr("sys.argv", ["scale_curve.py", "--out", str(tmp_path / "run"), "--commit", str(commit),
                                     "--updates", "1000", "--episodes", "80", "--seeds", "0",
                                     "--variants", "lapo-authors"])
    assert sc.main() == 0 and ran == []
    # --table over several files: a point in two of them counts once
    sc.write_rows(tmp_path / "a.csv", [_row("lapo-authors", 0, 90.0), _row("lapo-authors", 1, 110.0)])
    sc.write_rows(tmp_path / "b.csv", [_row("lapo-authors", 1, 110.0)])
    monkeypatch.setattr("sys.argv", ["scale_curve.py", "--table", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert sc.main() == 0
    assert "| 0,1 | 0.500 ± 0.000 | 100 ± 10 |" in capsys.readouterr().out


def test_the_figure_labels_every_variant_even_where_a_run_dir_lacks_the_reference_point(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """A run directory with only a 320-trajectory point: no main-curve point and no 80-trajectory reference bar,
    yet the bar chart's legend names the variant drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{**_row("lapo-authors", 1, 70.0), "updates": 4000, "trajectories": 320}]
    seen: list[list[str]] = []
    real_savefig = plt.Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen.extend([t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend())
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    sc.figure(rows, tmp_path / "curve.png")
    assert seen == [["lapo-authors"]] and (tmp_path / "curve.png").stat().st_size > 0


def test_a_missing_table_is_an_error_and_writes_no_figure(tmp_path: Path, monkeypatch) -> None:
    import sys

    from masklam.errors import MasklamError

    monkeypatch.setattr(sys, "argv", ["scale_curve.py", "--table", str(tmp_path / "typo.csv")])
    with pytest.raises(MasklamError, match="no such curve: .*typo.csv"):
        sc.main()
    assert not (tmp_path / "curve.png").exists()  # an empty figure over a committed one, before
