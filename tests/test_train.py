"""The training loop, config, checkpoints, resume, interruption and DDP (fastlmk.train)."""

import json
import os
import signal
import socket

import pytest
import torch

from _standins import tiny_train_config

from fastlmk.training import checkpoint as ckpt_io
from fastlmk.training.config import TrainConfig, apply_overrides, field_names, parse_args, validate

torch.set_num_threads(1)

from fastlmk.train import main, train  # noqa: E402


def tiny(tmp_path, name, **kw):
    """A config that trains in well under a second per step on one core."""
    return tiny_train_config(tmp_path, name, **kw)


def _interrupting_pairs(real, calls, sig):
    """A TPSPairs class that sends ``sig`` to this process while making the second batch's pairs."""
    class Interrupting(real):
        def __call__(self, images, generator=None, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), sig)
            return super().__call__(images, generator=generator, **kw)

    return Interrupting


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------ config
def test_cli_overrides_and_bools():
    cfg, resume = parse_args(["--preset", "cpu", "--steps", "7", "--method", "intra", "--no-eval", "--lr", "0.01",
                              "--compile"])
    assert (cfg.steps, cfg.method, cfg.eval, cfg.lr, cfg.compile, resume) == (7, "intra", False, 0.01, True, None)
    paper, _ = parse_args(["--preset", "paper"])
    assert (paper.detector_arch, paper.detector_width, paper.image_size, paper.batch_size, paper.num_landmarks) == \
        ("hourglass", 256, 128, 32, 10)
    assert (paper.lr, paper.beta1, paper.beta2, paper.weight_decay, paper.lr_decay_every, paper.grad_clip) == \
        (1e-3, 0.0, 0.9, 5e-4, 75000, 1.0)


def test_config_file_and_unknown_keys(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"steps": 11, "num_landmarks": 30}))
    cfg, _ = parse_args(["--config", str(f), "--steps", "12"])  # the command line wins over the file
    assert (cfg.steps, cfg.num_landmarks) == (12, 30)
    f.write_text(json.dumps({"stpes": 11}))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['stpes'\].*valid keys: preset, dataset"):
        parse_args(["--config", str(f)])
    with pytest.raises(SystemExit, match="unknown argument.*--stpes.*valid keys"):
        parse_args(["--stpes", "3"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(TrainConfig(), {"steps": "many"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        parse_args(["--config", str(tmp_path / "missing.json")])
    assert "num_landmarks" in field_names()


def test_validate_errors(tmp_path):
    with pytest.raises(ValueError, match="num_landmarks.*>= 1"):
        validate(TrainConfig(num_landmarks=0))
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        validate(TrainConfig(batch_size=1))
    with pytest.raises(ValueError, match="method"):
        validate(TrainConfig(method="cycle"))
    with pytest.raises(ValueError, match="soft_argmax must be"):
        validate(TrainConfig(soft_argmax="argmax"))
    with pytest.raises(FileNotFoundError, match="vgg.pth"):
        validate(TrainConfig(vgg_weights=str(tmp_path / "vgg.pth")))


def test_bad_dataset_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'faces'.*synth"):
        train(tiny(tmp_path, "a", dataset="faces"), progress=False)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        train(tiny(tmp_path, "b", dataset="celeba", data_root=str(tmp_path / "no_such_dir")), progress=False)
    with pytest.raises(ValueError, match="num_landmarks"):
        train(tiny(tmp_path, "c", num_landmarks=0), progress=False)


# ------------------------------------------------------------------------------------ runs
@pytest.mark.parametrize("method", ["inter-intra", "intra"])
def test_train_runs_and_writes_its_files(tmp_path, method):
    r = train(tiny(tmp_path, method, method=method, steps=4), progress=False)
    assert r["step"] == 4 and len(r["history"]) == 4
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in r["history"]])))
    run = tmp_path / method
    assert json.loads((run / "config.json").read_text())["method"] == method
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + 4
    assert [os.path.basename(p) for p in ckpt_io.list_checkpoints(str(run))] == ["step_00000003.pt", "step_00000004.pt"]
    # load_detector gives back the trained detector
    det, config = ckpt_io.load_detector(str(run))
    assert config.method == method and not det.training
    assert det.backend == "auto"  # where it runs is chosen when loading, not restored from the run (reference)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(det(x).points, r["model"].detector.eval()(x).points)


def test_resume_continues_exactly(tmp_path):
    """6 steps straight == 3 steps, a new process state, then --resume to 6: same losses and
    same parameters, optimiser state included. Also: the same seed gives the same losses."""
    full = train(tiny(tmp_path, "full"), progress=False)
    half = train(tiny(tmp_path, "half", steps=3), progress=False)
    assert [h["loss"] for h in half["history"]] == [h["loss"] for h in full["history"][:3]]
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    rest = train(tiny(tmp_path, "half"), resume=str(tmp_path / "half"), progress=False)
    assert rest["step"] == 6
    assert [h["loss"] for h in rest["history"]] == [h["loss"] for h in full["history"][3:]]
    _assert_same_state(_params(rest["model"]), _params(full["model"]))
    a = ckpt_io.load_checkpoint(str(tmp_path / "full"))
    b = ckpt_io.load_checkpoint(str(tmp_path / "half"))
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])
    assert len((tmp_path / "half" / "log.csv").read_text().strip().splitlines()) == 1 + 6


def test_sigterm_saves_a_checkpoint_and_resume_matches(tmp_path, monkeypatch):
    """A SIGTERM during step 2 stops after that step with a checkpoint; resuming from the
    command line finishes with the state of an uninterrupted run."""
    import fastlmk.data

    calls = {"n": 0}
    real = fastlmk.data.TPSPairs

    Interrupting = _interrupting_pairs(real, calls, signal.SIGTERM)

    full = train(tiny(tmp_path, "full", ckpt_every=0), progress=False)
    monkeypatch.setattr(fastlmk.data, "TPSPairs", Interrupting)
    r = train(tiny(tmp_path, "cut", ckpt_every=0), progress=False)
    assert r["stopped"] == "SIGTERM" and r["step"] == 2
    assert [os.path.basename(p) for p in ckpt_io.list_checkpoints(str(tmp_path / "cut"))] == ["step_00000002.pt"]
    monkeypatch.setattr(fastlmk.data, "TPSPairs", real)
    assert main(["--resume", str(tmp_path / "cut")]) == 0
    end = ckpt_io.load_checkpoint(str(tmp_path / "cut"))
    assert end["step"] == 6
    _assert_same_state(end["detector"], full["model"].detector.state_dict())
    _assert_same_state(end["generator"], full["model"].generator.state_dict())


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_stop_before_the_first_log_row(tmp_path, monkeypatch, capsys, sig, code):
    """SIGTERM / Ctrl-C before anything was logged (log_every 50, stop in step 2): the command
    prints the resume command and exits 0 (130 for Ctrl-C, the shell's convention), the
    checkpoint loads, and resuming finishes the run. (This used to end in "log.csv has no loss
    column", exit 2.)"""
    import fastlmk.data

    calls = {"n": 0}
    real = fastlmk.data.TPSPairs

    Interrupting = _interrupting_pairs(real, calls, sig)

    monkeypatch.setattr(fastlmk.data, "TPSPairs", Interrupting)
    (tmp_path / "c.json").write_text(json.dumps(tiny(tmp_path, "early", log_every=50, ckpt_every=0).to_dict()))
    assert main(["--config", str(tmp_path / "c.json")]) == code
    out, run = capsys.readouterr().out, tmp_path / "early"
    assert f"stopped by {signal.Signals(sig).name} at step 2; checkpoint saved" in out
    assert f"python -m fastlmk.train --resume {run}" in out and "no loss curve yet" in out
    assert ckpt_io.load_checkpoint(str(run))["step"] == 2
    monkeypatch.setattr(fastlmk.data, "TPSPairs", real)
    assert main(["--resume", str(run)]) == 0
    assert ckpt_io.load_checkpoint(str(run))["step"] == 6


@pytest.mark.parametrize("exc,code", [(KeyboardInterrupt, 130), ("terminated", 0)], ids=["SIGINT", "SIGTERM"])
def test_stop_during_evaluation(tmp_path, monkeypatch, capsys, exc, code):
    """A stop during the final evaluation: training is saved, the resume command (which re-runs
    the evaluation) is printed, exit 130 for Ctrl-C, 0 for SIGTERM."""
    import fastlmk.training.loop as train_mod

    def interrupted(*args, **kwargs):
        raise train_mod.Terminated if exc == "terminated" else exc

    monkeypatch.setattr(train_mod, "evaluate", interrupted)
    (tmp_path / "c.json").write_text(json.dumps(tiny(tmp_path, "ev", eval=True).to_dict()))
    assert main(["--config", str(tmp_path / "c.json")]) == code
    run = tmp_path / "ev"
    assert f"evaluation interrupted; checkpoint saved at step 6. Evaluate with: python -m fastlmk.train --resume {run}" \
        in capsys.readouterr().out
    assert ckpt_io.load_checkpoint(str(run))["step"] == 6


def test_time_limit_stops_cleanly(tmp_path):
    r = train(tiny(tmp_path, "t", max_minutes=1e-9), progress=False)
    assert r["step"] == 1 and r["stopped"].startswith("time limit")
    assert ckpt_io.load_checkpoint(str(tmp_path / "t"))["step"] == 1


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        ckpt_io.load_detector(str(bad))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt is not a fastlmk checkpoint"):
        ckpt_io.load_checkpoint(str(tmp_path / "foreign.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt_io.load_checkpoint(str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        ckpt_io.load_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="bad.pt"):
        main(["--resume", str(bad)])


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    ckpt_io.save_checkpoint(path, {"config": {}, "detector": {}, "step": 1})

    def boom(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.save_checkpoint(path, {"config": {}, "detector": {}, "step": 2})
    monkeypatch.undo()
    assert ckpt_io.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


# ------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank, world, port, cfg, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from fastlmk.train import train as run

    r = run(cfg, progress=False)
    params = {k: v.detach().clone() for k, v in r["model"].named_parameters()}  # (BN buffers are per rank)
    torch.save({"params": params, "step": r["step"]}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_two_processes_on_cpu(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny(tmp_path, "ddp", steps=1, ckpt_every=0)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 1
    # one optimiser step taken, identical on both ranks (gradients all-reduced)
    init = train(tiny(tmp_path, "init", steps=1, ckpt_every=0, lr=1e-12, weight_decay=0.0), progress=False)["model"]
    moved = [k for k, v in init.detector.state_dict().items() if "weight" in k and not torch.allclose(v, r0["params"][f"detector.{k}"])]
    assert moved
    _assert_same_state(r0["params"], r1["params"])
    found = ckpt_io.list_checkpoints(str(tmp_path / "ddp"))
    assert [os.path.basename(p) for p in found] == ["step_00000001.pt"]
    state = ckpt_io.load_checkpoint(found[0])
    assert state["world_size"] == 2 and len(state["rng"]) == 2
