"""The recipe (fastlmk/training/recipe.py): the data's kind and the time budget -> the run's settings."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastlmk.training import recipe
from fastlmk.training.config import parse_command, preset, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_data_kind_frames_only_when_the_data_gives_two_frames_of_one_face():
    assert recipe.data_kind("synth", "motion") == "frames"
    assert recipe.data_kind("synth", "views") == "frames"
    assert recipe.data_kind("synth", "warps") == "stills"
    assert recipe.data_kind("video", "motion") == "frames"
    for name in ("folder", "celeba", "aflw_zhang", "aflw_thewlis", "mafl"):
        assert recipe.data_kind(name, "warps") == "stills"


def test_the_cpu_preset_picks_the_still_recipe_for_single_images_unless_told(tmp_path):
    cfg, _, given = parse_command(["--dataset", "folder", "--data-root", str(tmp_path)])
    assert cfg.pairs == "motion" and given == {"dataset", "data_root"}  # the preset's frame recipe, before
    still = recipe.for_data(cfg, given)
    assert (still.recipe, still.pairs, still.shared_warp) == ("stills", "warps", False)
    for k, v in recipe.STILL_RECIPE.items():
        assert getattr(still, k) == v
    validate(still)  # a valid run: no pairs error
    # everything else is the preset's
    assert dataclasses.replace(still, pairs=cfg.pairs, shared_warp=cfg.shared_warp, recipe="") == cfg
    # SynthFaces keeps the frame recipe; asking it for warps gives the still recipe
    synth = recipe.for_data(*parse_command([])[::2])
    assert (synth.recipe, synth.pairs, synth.shared_warp) == ("frames", "motion", True)
    warps = recipe.for_data(*parse_command(["--pairs", "warps"])[::2])
    assert (warps.recipe, warps.pairs, warps.shared_warp) == ("stills", "warps", False)
    # the user's keys win, and other presets are left alone
    told = recipe.for_data(*parse_command(["--dataset", "folder", "--data-root", str(tmp_path), "--pairs", "motion"])[::2])
    assert told.pairs == "motion"
    with pytest.raises(ValueError, match="one image per face"):
        validate(told)
    paper = recipe.for_data(*parse_command(["--preset", "cpu-paper", "--dataset", "folder", "--data-root", str(tmp_path)])[::2])
    assert paper.pairs == "warps" and paper.recipe == "stills"


def test_keys_from_a_config_file_count_as_given(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"pairs": "motion", "steps": 7}))
    cfg, _, given = parse_command(["--config", str(f), "--seed", "3"])
    assert given == {"pairs", "steps", "seed"} and cfg.steps == 7


def test_the_users_data_is_checked_before_any_pairs_rule(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dataset folder needs --data-root"):
        validate(preset("cpu").__class__(**{**preset("cpu").to_dict(), "dataset": "folder"}))
    missing = str(tmp_path / "nope")
    cfg, _, given = parse_command(["--dataset", "celeba", "--data-root", missing])
    with pytest.raises(FileNotFoundError, match=f"--data-root: no such directory: {missing}"):
        validate(cfg)  # the preset's motion pairs would fail too; the data is named first


def test_fit_budget_keeps_a_schedule_that_fits_and_otherwise_plans_the_short_recipe():
    cfg = preset("cpu")  # 1000 intra + 200 inter-intra steps, 14 min
    budget = 60 * cfg.max_minutes
    limit = recipe.MARGIN * budget
    fast = recipe.fit_budget(cfg, 0.46, budget)
    assert dataclasses.replace(fast, recipe_note="", budget_fit=True) == cfg  # unchanged: same result as before
    assert not fast.budget_fit and "kept" in fast.recipe_note and fast.lr_anneal == 0.0
    # the early phase's share of a step's time, and the mean over the schedule (progressive resizing)
    early_cost = recipe.EARLY_FIXED + (1 - recipe.EARLY_FIXED) * 0.25  # 32 px of 64: a quarter of the pixels
    mean_cost = 1 - recipe.EARLY_SHARE * (1 - early_cost)
    for per_step in (0.73, 0.93, 1.5):  # issue 22's 2-thread machine, a true half speed, a busy machine
        short = recipe.fit_budget(cfg, per_step, budget)
        # the warm-up's objective throughout, as many steps as fit (multiples of ROUND), ending on the lr
        # fall; the first EARLY_SHARE of them on 32 px images
        assert (short.method, short.intra_warmup, short.image_size) == ("intra", 0, 64), per_step
        assert (short.early_size, short.early_share) == (32, recipe.EARLY_SHARE)
        assert recipe.early_steps(short) == round(recipe.EARLY_SHARE * short.steps)
        assert short.steps % recipe.ROUND == 0 and short.steps >= 1.2 * recipe.ROUND * int(limit / per_step // recipe.ROUND)
        t = recipe.predicted_seconds(short, per_step)
        assert t == pytest.approx(per_step * (recipe.early_steps(short) * early_cost + short.steps - recipe.early_steps(short)))
        assert t <= limit < t + recipe.ROUND * per_step * mean_cost + per_step
        assert short.lr_anneal == recipe.FIT_ANNEAL and not short.budget_fit
        assert f"{short.steps} intra steps (the first {recipe.early_steps(short)} on 32 px images) instead" in short.recipe_note
        assert f"a step on 32 px images takes ~{early_cost:.2f}x one on 64 px" in short.recipe_note
        assert "lr falling to 0 over the last 30% of the steps" in short.recipe_note
        # what it gives up, and how long the full recipe takes here
        full_min = round(recipe.predicted_seconds(cfg, per_step) / 60)
        assert (f"expect coarser points than the full recipe (docs/recipe.md), which --max-minutes 0 runs here in "
                f"~{full_min} min") in short.recipe_note
    assert "expect coarser points" not in fast.recipe_note
    assert recipe.fit_budget(dataclasses.replace(cfg, lr_anneal=0.5), 0.93, budget).lr_anneal == 0.5  # the user's
    told = recipe.fit_budget(dataclasses.replace(cfg, early_size=48, early_share=0.25), 0.93, budget)
    assert (told.early_size, told.early_share) == (48, 0.25)  # the user's early phase is kept, and costed
    assert recipe.predicted_seconds(told, 0.93) <= limit < recipe.predicted_seconds(told, 0.93) + recipe.ROUND * 0.93
    # no early phase below EARLY_MIN px (a 32 px run), nor for the hourglass below its 64 px
    assert recipe.fit_budget(dataclasses.replace(cfg, image_size=32), 0.93, budget).early_size == 0
    assert recipe.fit_budget(dataclasses.replace(cfg, image_size=128, detector_arch="hourglass"), 0.93, budget).early_size == 64
    assert recipe.fit_budget(dataclasses.replace(cfg, image_size=64, detector_arch="hourglass"), 0.93, budget).early_size == 0
    # a run without a warm-up keeps its objective (cpu-paper: the paper's inter-intra step), shortened
    paper = recipe.fit_budget(preset("cpu-paper"), 0.6, budget)
    assert paper.early_size == 0  # (progressive resizing was measured with the intra recipe only)
    assert paper.method == "inter-intra" and paper.steps == recipe.ROUND * int(limit / (0.6 * recipe.INTER_INTRA_COST) // recipe.ROUND) == 600
    assert f"{paper.steps} inter-intra steps instead," in paper.recipe_note
    # tiny (test) schedules are fitted in whole steps
    tiny = recipe.fit_budget(dataclasses.replace(cfg, steps=12, intra_warmup=8), 10.0, 30.0)
    assert tiny.steps == 4 and tiny.method == "intra" and recipe.early_steps(tiny) == 2  # 10 x (2 x 0.355 + 2) s <= 28.5


def test_predicted_seconds_counts_inter_intra_steps_at_their_cost():
    cfg = dataclasses.replace(preset("cpu"), steps=100, intra_warmup=60)
    assert recipe.predicted_seconds(cfg, 1.0) == pytest.approx(60 + 40 * recipe.INTER_INTRA_COST)
    assert recipe.predicted_seconds(cfg, 1.0, start=80) == pytest.approx(20 * recipe.INTER_INTRA_COST)
    assert recipe.predicted_seconds(dataclasses.replace(cfg, method="intra"), 1.0) == pytest.approx(100)
    # early steps at their size's cost, by brute force over the steps, every start
    early = dataclasses.replace(cfg, early_size=32, early_share=0.7)  # the early phase runs into the inter-intra one
    c = recipe.size_cost(32, 64)
    for start in (0, 30, 60, 65, 70, 99):
        brute = sum((1 if s < 60 else recipe.INTER_INTRA_COST) * (c if s < 70 else 1) for s in range(start, 100))
        assert recipe.predicted_seconds(early, 1.0, start=start) == pytest.approx(brute), start
        assert sum(recipe.step_cost(early, s) for s in range(start, 100)) == pytest.approx(brute)
    assert recipe.schedule(early) == "60 intra + 40 inter-intra steps (the first 70 on 32 px images)"
    assert recipe.size_cost(64, 64) == 1.0 and recipe.size_cost(48, 64) == pytest.approx(0.624, abs=1e-3)


def _train(args, cwd, timeout=300, env=None):
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "fastlmk.train", "--threads", "1", "--sample-every", "0",
                           "--out-dir", str(cwd), *args], capture_output=True, text=True, timeout=timeout, env=e)


def _losses(run_dir):
    with open(os.path.join(run_dir, "log.csv")) as f:
        return [row["loss"] for row in csv.DictReader(f)]


def test_a_folder_of_photos_trains_with_no_further_flag_and_says_why(tmp_path):
    root = tmp_path / "faces"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    r = _train(["--dataset", "folder", "--data-root", str(root), "--steps", "2", "--batch-size", "4", "--no-eval",
                "--run-name", "f"], tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert "recipe: stills (folder gives one image per face; x, x' = two TPS warps of one image)" in r.stdout
    assert "what this budget buys on stills: coarse points" in r.stdout  # the measured result, said up front
    cfg = json.load(open(tmp_path / "runs" / "f" / "config.json"))
    assert (cfg["recipe"], cfg["pairs"], cfg["shared_warp"]) == ("stills", "warps", False)
    # a missing directory is named before anything else, and nothing is written
    r = _train(["--dataset", "folder", "--data-root", str(tmp_path / "gone")], tmp_path / "runs2")
    assert r.returncode == 2 and "--data-root: no such directory" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs2").exists()


def test_the_budget_fit_leaves_the_run_as_it_was_when_it_fits(tmp_path):
    """Timing the machine must not change what a run computes: same seed -> same losses."""
    common = ["--steps", "3", "--log-every", "1", "--no-eval", "--batch-size", "4", "--train-length", "64"]
    a = _train([*common, "--no-budget-fit", "--run-name", "a"], tmp_path)
    b = _train([*common, "--budget-fit", "--max-minutes", "14", "--run-name", "b"], tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert "budget (14 min): timed" in b.stdout and "kept" in b.stdout
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    fitted = json.load(open(tmp_path / "b" / "config.json"))
    assert fitted["budget_fit"] is False and "kept" in fitted["recipe_note"]


def test_a_fitted_schedule_is_stored_in_the_run_and_a_resume_continues_it(tmp_path, monkeypatch):
    from fastlmk.training import checkpoint as ckpt_io
    from fastlmk.training.config import TrainConfig
    from fastlmk.training.loop import train

    slow = {"n": 0}

    def fake_calibrate(step_fn, batches, steps=5):
        slow["n"] += 1
        step_fn(next(batches))  # the probe step runs
        return 10.0  # a very slow machine: 10 s per intra step

    monkeypatch.setattr(recipe, "calibrate", fake_calibrate)
    cfg = dataclasses.replace(preset("cpu"), batch_size=4, train_length=64, eval=False, sample_every=0, threads=1,
                              max_minutes=0.5, steps=12, intra_warmup=8, out_dir=str(tmp_path), run_name="fit",
                              recipe="frames")
    torch.set_num_threads(1)
    result = train(cfg, progress=False)
    assert slow["n"] == 1
    stored = ckpt_io.config_of(ckpt_io.load_checkpoint(str(tmp_path / "fit")))
    assert stored.method == "intra" and not stored.budget_fit and stored.steps < 12
    assert f"{stored.steps} intra steps (the first {recipe.early_steps(stored)} on 32 px images) instead" in stored.recipe_note
    assert (stored.early_size, stored.early_share) == (32, recipe.EARLY_SHARE) and recipe.early_steps(stored) >= 1
    assert result["step"] <= stored.steps
    # a resume continues the stored schedule; nothing is timed again
    resumed = dataclasses.replace(stored, steps=stored.steps + 1, max_minutes=0.0)
    train(resumed, resume=str(tmp_path / "fit"), progress=False)
    assert slow["n"] == 1
    continued = json.load(open(tmp_path / "fit" / "config.json"))
    assert (continued["method"], continued["early_size"], continued["early_share"]) == ("intra", 32, recipe.EARLY_SHARE)


def test_a_default_run_directory_is_named_after_the_objective_the_fit_chose(tmp_path, monkeypatch):
    from fastlmk.training.loop import train

    monkeypatch.setattr(recipe, "calibrate", lambda step_fn, batches, steps=5: 10.0)  # a very slow machine
    cfg = dataclasses.replace(preset("cpu"), batch_size=4, train_length=64, eval=False, sample_every=0, threads=1,
                              max_minutes=0.5, steps=12, intra_warmup=8, out_dir=str(tmp_path), recipe="frames")
    torch.set_num_threads(1)
    result = train(cfg, progress=False)
    assert os.path.basename(result["run_dir"]).endswith("-synth-intra")  # not "-synth-inter-intra"
    assert os.listdir(tmp_path) == [os.path.basename(result["run_dir"])]  # one directory, no stray one


def test_a_folder_of_clips_trains_with_the_frame_recipe_and_names_what_it_found(tmp_path):
    pytest.importorskip("av")
    from fastlmk.data.synth_clips import export_clips

    export_clips(tmp_path / "clips", num=4, frames=12, size=32)
    r = _train(["--dataset", "video", "--data-root", str(tmp_path / "clips"), "--steps", "2", "--batch-size", "4",
                "--image-size", "32", "--run-name", "v", "--eval-train-size", "8", "--eval-test-size", "8"],
               tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert "recipe: frames (a video data set: two frames of one clip; x, x' = two frames, one spline)" in r.stdout
    assert "video: 4 clips, 48 frames at 32px" in r.stdout
    assert "no annotated evaluation set for dataset 'video' (give --eval-dataset synth" in r.stdout
    cfg = json.load(open(tmp_path / "runs" / "v" / "config.json"))
    assert (cfg["recipe"], cfg["pairs"], cfg["shared_warp"]) == ("frames", "motion", True)


def test_frame_gap_shorthand_sets_both_keys():
    cfg, _, given = parse_command(["--dataset", "video", "--data-root", "clips", "--frame-gap", "5", "30"])
    assert (cfg.frame_gap_min, cfg.frame_gap_max) == (5, 30)
    assert {"frame_gap_min", "frame_gap_max"} <= given and "frame_gap" not in given
    cfg, _, _ = parse_command(["--frame-gap-min", "12"])  # the long keys still work alone
    assert (cfg.frame_gap_min, cfg.frame_gap_max) == (12, 40)
    with pytest.raises(SystemExit, match="--frame-gap cannot be combined with --frame-gap-max"):
        parse_command(["--frame-gap", "5", "30", "--frame-gap-max", "20"])


def test_the_still_budget_line_belongs_to_the_cpu_preset_with_a_budget():
    """The measured 'what this budget buys' is the cpu preset's still recipe at its budget: not
    said for cpu-paper (the paper's objective), without a budget, or for frames."""
    stills = dataclasses.replace(preset("cpu"), dataset="folder", pairs="warps", recipe="stills")
    assert recipe.STILL_BUDGET_RESULT in recipe.why(stills)
    assert recipe.STILL_BUDGET_RESULT not in recipe.why(dataclasses.replace(stills, max_minutes=0.0))
    paper = dataclasses.replace(preset("cpu-paper"), dataset="folder", recipe="stills")
    assert recipe.STILL_BUDGET_RESULT not in recipe.why(paper)
    assert recipe.STILL_BUDGET_RESULT not in recipe.why(dataclasses.replace(preset("cpu"), recipe="frames"))


def test_learning_curve_time_axis_models_the_schedule():
    """benchmarks/learning_curves.py --seconds-per-intra-step: the time of a step is the schedule's
    predicted time (intra steps, then inter-intra steps at INTER_INTRA_COST), not the wall clock."""
    from benchmarks.learning_curves import _modelled_at
    from fastlmk.training import recipe
    from fastlmk.training.config import TrainConfig

    at = _modelled_at(TrainConfig(steps=3200, intra_warmup=1000, method="inter-intra"), 0.5)
    assert at(400) == pytest.approx(200.0)
    assert at(1000) == pytest.approx(500.0)
    assert at(1200) == pytest.approx(0.5 * (1000 + recipe.INTER_INTRA_COST * 200))
