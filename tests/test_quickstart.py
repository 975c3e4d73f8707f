"""The quickstart's code path at toy size: every stage runs, the table and report come out, a rerun reuses all."""
import csv
import math

import pytest

from masklam.downstream.results import RESULT_COLUMNS, Row
from masklam.downstream.summary import format_table, gap_closed, summarize
from masklam.quickstart import QuickstartConfig, run


def test_gap_closed_and_table_arithmetic():
    s = {"lapo": {"probe_nmse": 0.9, "return_id": 20.0, "recipe": "paper"},
         "masklam": {"probe_nmse": 0.6, "return_id": 50.0, "return_id_sem": 4.0, "recipe": "paper"},
         "lapo-clean": {"probe_nmse": 0.5, "return_id": 60.0, "recipe": "paper"}}
    assert gap_closed(s, "probe_nmse", True) == pytest.approx(0.75)
    assert gap_closed(s, "return_id", False) == pytest.approx(0.75)
    table = format_table(s)
    assert "1.50x lower" in table and "75% in probe NMSE" in table and "75% in return (ID, raw)" in table
    assert table.index("lapo-clean") < table.index("masklam")
    assert "50 ± 4" in table and table.count("paper") >= 3  # standard errors and recipes are printed
    # an upper bound below LAPO leaves no gap to close: not a percentage
    s["lapo-clean"]["return_id"] = 10.0
    assert math.isnan(gap_closed(s, "return_id", False))
    assert "n/a (the upper bound is not above LAPO) in return" in format_table(s)


def test_summarize_means_and_standard_errors_over_seeds():
    rows = [Row("lapo", "t", 16, 4, seed, "id", p, r, r / 100,
                extra={"recipe": "paper", "expert_fraction": str(r / 700), "return_sem": "1.0"})
            for seed, p, r in ((0, 0.9, 10.0), (1, 0.8, 20.0), (2, 0.7, 30.0))]
    s = summarize(rows)["lapo"]
    assert s["probe_nmse"] == pytest.approx(0.8) and s["return_id"] == pytest.approx(20.0)
    assert s["return_id_sem"] == pytest.approx(10.0 / 3**0.5)  # std over seeds (ddof 1) / sqrt(3)
    assert s["probe_nmse_sem"] == pytest.approx(0.1 / 3**0.5) and s["recipe"] == "paper"
    one = summarize(rows[:1] * 4)["lapo"]  # one seed: the episodes' standard errors, pooled over rows
    assert one["return_id_sem"] == pytest.approx(0.5)


@pytest.mark.slow
def test_toy_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    res = run(QuickstartConfig(preset="toy", out=out, progress=False))
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == RESULT_COLUMNS
    assert all(float(r["return_sem"]) >= 0 and r["recipe"] for r in rows)
    assert {r["recipe"] for r in rows if r["method"] == "masklam"} == {res["recipe_label"]["masklam"]}
    got = {(r["method"], r["split"]) for r in rows}
    for method in ("lapo", "masklam"):
        assert {(method, "id"), (method, "ood")} <= got
    assert ("lapo-clean", "id") in got and ("bc-full", "ood") in got
    assert {r["labels"] for r in rows if r["method"] == "masklam"} == {"1", "2"}
    assert all(r["probe_nmse"] for r in rows if r["method"] in ("lapo", "masklam", "lapo-clean"))
    page = (out / "report.html").read_text()
    assert "<img" in page and "masklam" in page
    assert "MaskLAM vs LAPO" in res["table"] and (out / "table.txt").read_text().strip() == res["table"]
    from masklam.quickstart import SCALE_CURVE

    printed = capsys.readouterr().out
    assert printed.index(SCALE_CURVE) > printed.index(res["table"].splitlines()[0])  # the curve's line under the table
    from masklam.quickstart import curve_line

    assert curve_line("cheetah-run") == SCALE_CURVE and "measured on cheetah-run only" in curve_line("walker-run")
    run(QuickstartConfig(preset="toy", out=out, progress=False))  # everything cached
    assert "running" not in capsys.readouterr().out


# The resolved PretrainConfig of the cpu quickstart's LAMs, as main resolved it before presets were unified
# (commit 63d68d6; only the names changed since: steps -> updates, labeled -> labels, labeled_batch_size ->
# labels_batch_size). Any change here changes the quickstart's numbers; a field added since takes its default.
CPU_PRETRAIN = dict(
    preset="cpu-small", recipe="default", updates=1000, epochs=None, batch_size=64, lr=0.0003, optimizer="adam",
    weight_decay=0.0, warmup_frac=0.02, schedule="constant", grad_clip=None, encoder_scale=1, num_res_blocks=2,
    latent_dim=16, head_dim=256, head_blocks=2, fsq_levels=[], frame_stack=3, max_offset=1, mask_lambda=0.0,
    mask_dilation=0, mask_target=False, mask_channel=False, mask_norm="batch", mask_key="masks", target="ema",
    target_tau=0.001, aug=False, labels=0, labels_batch_size=32, sup_coef=0.01, heldout=0.1, split_seed=0, seed=0,
    log_every=100, ckpt_every=500, probe_ridge=None, probe_batch_size=256, probe_max_trajs=None, recon_samples=8,
    device="cpu", threads=None, compile=False, bf16=True, tensorboard=False, wandb=False, wandb_project="masklam",
    progress=False)


def resolved_pretrain_config(method: str, tmp_path, monkeypatch) -> dict:
    """The PretrainConfig the cpu quickstart's pretrain stage of `method` builds (nothing is trained)."""
    import masklam.downstream.stages as ex
    import masklam.train.pretrain as tp
    from masklam.quickstart import experiment_config

    seen = {}
    monkeypatch.setattr(tp, "pretrain", lambda cfg: seen.setdefault("cfg", cfg) and {"probe_nmse": 0.5})
    monkeypatch.setattr(ex, "run_stage", lambda root, kind, conf, fn, **key: (root, fn(root)))
    exp = experiment_config(QuickstartConfig(preset="cpu", device="cpu", out=tmp_path, progress=False))
    ex.pretrain_stage(tmp_path, method, ["d.h5"], exp.latent_dims[0], 0, 0, exp.pretrain, exp.device, False)
    resolved = seen["cfg"].to_dict()
    resolved.pop("origins")  # where each value came from: not part of what the LAM computes
    return resolved


@pytest.mark.parametrize("method", ["lapo", "masklam"])
def test_cpu_quickstart_resolves_the_pinned_pretrain_config(method, tmp_path, monkeypatch):
    from masklam.train.config import PretrainConfig

    got = resolved_pretrain_config(method, tmp_path, monkeypatch)
    expected = {**CPU_PRETRAIN, "method": method, "data": ["d.h5"], "out": str(tmp_path),
                "mask_target": method == "masklam"}
    assert {k: got.get(k) for k in expected} == expected
    # every other field (added since) is what a plain config of the method resolves it to
    plain = PretrainConfig(method=method, data=("d.h5",), out=tmp_path).to_dict()
    assert {k: v for k, v in got.items() if k not in expected} == {k: plain[k] for k in got if k not in expected}


@pytest.mark.parametrize("option, named", [(["--task", "nosuch-task"], "nosuch-task"),
                                           (["--distractors", "foo"], "foo")])
def test_an_unknown_task_or_preset_is_one_line_before_anything_is_printed_or_made(option, named, tmp_path, capsys):
    from masklam.errors import MasklamError
    from masklam.quickstart import main

    with pytest.raises(MasklamError, match=named) as e:
        main(["--preset", "toy", "--out", str(tmp_path / "q"), *option])
    assert "\n" not in str(e.value) and capsys.readouterr().out == "" and not (tmp_path / "q").exists()


def test_the_quickstart_takes_lapo_and_masklams_recipes_only(tmp_path, capsys):
    """laom-code is LAOM's code (laom, laom-sup, and LAOM's LAPO baseline): in the quickstart it would change its
    LAPO alone, so it is not one of the quickstart's recipes (a one-line error naming those)."""
    from masklam.cli import main

    assert main(["quickstart", "--preset", "toy", "--out", str(tmp_path / "q"), "--recipe", "laom-code"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice 'laom-code'; one of: mask-target, paper" in err and "authors+mask-target" in err
    assert not (tmp_path / "q").exists()
