"""Training loop: augmentation, checkpoints, exact resume, data, torchrun, validation, benchmark.

Runs use ``spectformer_digits`` at 16x16 (a 4x4 token grid) on one CPU thread so they take
seconds; the learning bar is loose (chance is 10%).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from spectformer import augment, config, data, runtime, train, training_state, validate

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMING_COLUMNS = set(train.TIMING_COLUMNS)


pytestmark = pytest.mark.usefixtures("one_thread")


def digits_args(output: Path, *extra: str) -> list[str]:
    # Mixup, cutmix and drop-path draw random numbers every step: resuming is only exact if
    # the checkpoint restores the generators.
    return ["--model", "spectformer_digits", "--data", "digits", "--img-size", "16",
            "--batch-size", "64", "--lr", "2e-3", "--warmup-epochs", "0.5",
            "--mixup", "0.2", "--cutmix", "0.2", "--mixup-prob", "0.5", "--drop-path", "0.1",
            "--output", str(output), *extra]


def read_summary(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    a = torch.load(path_a, weights_only=True)
    b = torch.load(path_b, weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """The uninterrupted reference run: 2 epochs of digits."""
    out = tmp_path_factory.mktemp("two_epochs")
    torch.set_num_threads(1)
    assert train.main(digits_args(out, "--epochs", "2")) == 0
    return out


# ---------------------------------------------------------------------------- augment


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_sum_to_one_and_match_pixels(mixup, cutmix):
    torch.manual_seed(0)
    mixer = augment.MixupCutmix(num_classes=7, mixup_alpha=mixup, cutmix_alpha=cutmix,
                                label_smoothing=0.1)
    batch = 6
    # Image i is the constant i, so the share of each source is readable from the pixels.
    images = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 2, 9, 11)
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    for _ in range(20):
        mixed, soft = mixer(images, target)
        assert soft.shape == (batch, 7)
        torch.testing.assert_close(soft.sum(1), torch.ones(batch))
        assert (soft >= 0).all()
        # Image 0's partner is image 5: the mean pixel is 5 * (1 - lam), and the soft target
        # on class 5 (before smoothing) is 1 - lam as well.
        share_of_partner = mixed[0].mean() / 5.0
        smoothed_partner = soft[0, 5]
        off = 0.1 / 7
        torch.testing.assert_close(smoothed_partner, off + (1 - 0.1) * share_of_partner,
                                   atol=1e-5, rtol=0)


def test_label_smoothing_alone_leaves_images_unchanged():
    mixer = augment.MixupCutmix(num_classes=4, mixup_alpha=0.0, cutmix_alpha=0.0,
                                label_smoothing=0.2)
    images = torch.randn(3, 3, 8, 8)
    mixed, soft = mixer(images, torch.tensor([0, 3, 1]))
    assert mixed is images
    torch.testing.assert_close(soft[1], torch.tensor([0.05, 0.05, 0.05, 0.85]))


def test_mixup_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cutmix_alpha"):
        augment.MixupCutmix(num_classes=3, cutmix_alpha=-1.0)
    with pytest.raises(ValueError, match="target"):
        augment.MixupCutmix(num_classes=3)(torch.randn(2, 1, 4, 4), torch.tensor([0, 1, 2]))


# ------------------------------------------------------------------------ checkpoints


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    training_state.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def crash_midway(obj, f):
        real_save(obj, f)
        f.truncate(10)  # a partial file ...
        raise KeyboardInterrupt  # ... then the process is interrupted

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        training_state.atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(training_state.CheckpointError, match="truncated or corrupt"):
        training_state.load_training_checkpoint(bad)
    torch.save({"model": {}}, bad)
    with pytest.raises(training_state.CheckpointError, match="not a training checkpoint"):
        training_state.load_training_checkpoint(bad)
    with pytest.raises(training_state.CheckpointError, match="no such file"):
        training_state.load_training_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    import random

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = training_state.capture_rng_state()
    first = (torch.rand(2), np.random.rand(2), random.random())
    training_state.restore_rng_state(state)
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


# ---------------------------------------------------------------- training and resume


def test_short_digits_run_learns_and_writes_outputs(two_epoch_run):
    rows = read_summary(two_epoch_run / "summary.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == train.SUMMARY_COLUMNS
    assert float(rows[-1]["val_top1"]) > 40.0  # chance is 10%
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for name in ("last.pt", "best.pt", "config.yaml", "curves.png", "run.json"):
        assert (two_epoch_run / name).is_file(), name
    resolved = yaml.safe_load((two_epoch_run / "config.yaml").read_text())
    assert resolved["img_size"] == 16 and resolved["num_classes"] == 10
    assert resolved["amp"] == "none" and resolved["lr"] == 2e-3


def test_resume_after_an_epoch_is_exact(two_epoch_run, tmp_path):
    out = tmp_path / "resumed"
    assert train.main(digits_args(out, "--epochs", "2", "--stop-after", "1")) == 0
    assert len(read_summary(out / "summary.csv")) == 1
    assert train.main(["--resume", str(out / "last.pt")]) == 0
    assert_same_weights(two_epoch_run / "last.pt", out / "last.pt")
    assert without_timing(read_summary(out / "summary.csv")) == \
        without_timing(read_summary(two_epoch_run / "summary.csv"))


def test_sigterm_mid_epoch_saves_and_resumes_exactly(two_epoch_run, tmp_path, monkeypatch):
    out = tmp_path / "signalled"
    original_step = train.Trainer._train_step

    def step_then_signal(self, images, target):
        loss = original_step(self, images, target)
        if self.step == 29:  # the 30th step: 8th of the second epoch (22 per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(train.Trainer, "_train_step", step_then_signal)
    code = train.main(digits_args(out, "--epochs", "2"))
    assert code == 128 + signal.SIGTERM
    saved = torch.load(out / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["progress"]["batches_done"], saved["step"]) == (1, 8, 30)
    monkeypatch.undo()
    assert train.main(["--resume", str(out / "last.pt")]) == 0
    assert_same_weights(two_epoch_run / "last.pt", out / "last.pt")
    assert without_timing(read_summary(out / "summary.csv")) == \
        without_timing(read_summary(two_epoch_run / "summary.csv"))


def test_resume_with_a_different_network_is_refused(two_epoch_run, tmp_path):
    with pytest.raises(training_state.CheckpointError, match="img_size: checkpoint 16, now 32"):
        train.main(["--resume", str(two_epoch_run / "last.pt"), "--img-size", "32",
                    "--output", str(tmp_path)])


def test_existing_run_is_never_overwritten(two_epoch_run):
    with pytest.raises(FileExistsError, match="--resume"):
        train.main(digits_args(two_epoch_run, "--epochs", "1"))


def test_validate_reproduces_the_best_epoch(two_epoch_run, tmp_path, capsys):
    rows = read_summary(two_epoch_run / "summary.csv")
    best = max(rows, key=lambda r: float(r["val_top1"]))
    result_path = tmp_path / "val.json"
    assert validate.main(["--model", "spectformer_digits", "--img-size", "16", "--data", "digits",
                          "--checkpoint", str(two_epoch_run / "best.pt"),
                          "--output", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert result["top1"] == pytest.approx(float(best["val_top1"]), abs=1e-3)
    assert "top-1" in capsys.readouterr().out


# ---------------------------------------------------------------------------- config


def test_flags_override_yaml_and_resolved_config_round_trips(tmp_path):
    yaml_path = tmp_path / "cfg.yaml"
    yaml_path.write_text("model: spectformer_digits\ndata: digits\nepochs: 7\nlr: 1\n"
                         "weight-decay: 0.01\n")
    explicit, yaml_values = config.parse_train_args(["--config", str(yaml_path), "--epochs", "3"])
    cfg = config.resolve(explicit, yaml_values)
    assert (cfg.epochs, cfg.lr, cfg.weight_decay) == (3, 1.0, 0.01)
    # Recipe defaults of the model fill what neither file nor flags set.
    assert cfg.mixup == config.MODEL_RECIPES["spectformer_digits"]["mixup"]
    config.save_yaml(cfg, tmp_path / "resolved.yaml")
    again = config.resolve({}, config.load_yaml(tmp_path / "resolved.yaml"))
    assert again == cfg


def test_unknown_yaml_key_and_missing_model_are_clear_errors(tmp_path):
    yaml_path = tmp_path / "cfg.yaml"
    yaml_path.write_text("model: spectformer_digits\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        config.load_yaml(yaml_path)
    with pytest.raises(ValueError, match="--model is required"):
        config.resolve({"data": "digits"})
    with pytest.raises(ValueError, match="epochs must be int"):
        config.resolve({}, {"model": "m", "data": "digits", "epochs": "many"})


def test_default_learning_rate_scales_with_global_batch():
    cfg = config.TrainConfig(model="m", data="d")
    assert cfg.base_lr_for(1024) == pytest.approx(1e-3)
    assert config.TrainConfig(model="m", data="d", lr=0.1).base_lr_for(1024) == 0.1


def test_schedule_warms_up_then_decays_to_min_lr():
    params = [torch.nn.Parameter(torch.zeros(1))]
    sched = train.WarmupCosineSchedule(torch.optim.AdamW(params), base_lr=1e-3, warmup_lr=1e-6,
                                       min_lr=1e-5, warmup_steps=10, total_steps=110)
    assert sched.lr_at(0) == pytest.approx(1e-6)
    assert sched.lr_at(10) == pytest.approx(1e-3)
    assert sched.lr_at(60) == pytest.approx((1e-3 + 1e-5) / 2)
    assert sched.lr_at(110) == pytest.approx(1e-5)


def test_weight_decay_exempts_norms_biases_and_pos_embed():
    import spectformer

    model = spectformer.create_model("spectformer_digits")
    decay, no_decay = runtime.parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert "pos_embed" in exempt and "norm.weight" in exempt and "head.bias" in exempt
    assert "head.weight" not in exempt and "blocks.0.filter.complex_weight" not in exempt
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


# ------------------------------------------------------------------------------- data


def test_digits_split_is_fixed_and_disjoint():
    train_x, train_y, val_x, val_y = data.digits_split()
    assert len(train_y) + len(val_y) == 1797 and len(val_y) == 359
    assert set(np.unique(val_y)) == set(range(10))
    again = data.digits_split()
    assert np.array_equal(again[3], val_y) and np.array_equal(again[2], val_x)


def write_image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, per_class in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (20 + 7 * i, 24)  # non-square, different sizes
                pixels = rng.randint(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    corrupt = root / "train" / "dog" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return corrupt


def test_image_folder_skips_and_reports_a_corrupt_image(tmp_path, caplog):
    corrupt = write_image_folder(tmp_path)
    spec = data.ImageSpec(in_chans=3, img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    sets = data.build_datasets(str(tmp_path), spec, None, seed=0)
    assert sets.num_classes == 2 and len(sets.train) == 7 and len(sets.val) == 4
    loader = torch.utils.data.DataLoader(sets.train, batch_size=4, shuffle=False,
                                         collate_fn=data.collate_skip_unreadable)
    with caplog.at_level("WARNING"):
        batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 6
    assert all(images.shape[1:] == (3, 16, 16) for images, _ in batches)
    assert str(corrupt) in caplog.text
    assert sets.train.unreadable == [str(corrupt)]
    image, label = sets.val[0]
    assert image.shape == (3, 16, 16) and label == 0


def test_training_on_an_image_folder_with_a_corrupt_image(tmp_path, caplog):
    corrupt = write_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        code = train.main(["--model", "spectformer_digits", "--data", str(tmp_path / "data"),
                           "--img-size", "16", "--batch-size", "7", "--epochs", "1",
                           "--workers", "0", "--output", str(out)])
    assert code == 0
    assert str(corrupt) in caplog.text
    rows = read_summary(out / "summary.csv")
    assert len(rows) == 1 and float(rows[0]["val_top1"]) >= 0.0


def test_missing_data_folder_is_a_clear_error(tmp_path):
    spec = data.ImageSpec(in_chans=3, img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="neither 'digits', 'synthetic' nor an existing folder"):
        data.build_datasets(str(tmp_path / "nope"), spec, None, seed=0)
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="val/<class>"):
        data.build_datasets(str(tmp_path), spec, None, seed=0)


def test_shard_sampler_covers_every_index_and_skips_on_resume():
    shards = [data.ShardSampler(10, num_replicas=3, rank=r, seed=1) for r in range(3)]
    for s in shards:
        s.set_epoch(4)
    drawn = [list(s) for s in shards]
    assert all(len(d) == 4 for d in drawn)
    assert set(sum(drawn, [])) == set(range(10))
    shards[0].set_epoch(4, skip=2)
    assert list(shards[0]) == drawn[0][2:]
    evaluation = [list(data.ShardSampler(10, 3, r, shuffle=False, pad=False)) for r in range(3)]
    assert sorted(sum(evaluation, [])) == list(range(10))


# -------------------------------------------------------------------------- torchrun


def torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


DDP_ARGS = ("--epochs", "1", "--batch-size", "32")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One epoch on two CPU processes, uninterrupted."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = torchrun(out.parent, "-m", "spectformer.train", *digits_args(out, *DDP_ARGS))
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_torchrun_two_cpu_processes_end_with_identical_weights(ddp_run):
    out = ddp_run
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    fingerprints = run["weights_sha256_per_rank"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    rows = read_summary(out / "summary.csv")
    assert len(rows) == 1 and float(rows[0]["val_top1"]) > 10.0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["batch_size"] == 32


def test_collectives_time_out_after_dist_timeout(monkeypatch):
    import datetime

    seen = {}
    monkeypatch.setattr(train.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(train.dist, "init_process_group",
                        lambda backend, timeout: seen.update(backend=backend, timeout=timeout))
    monkeypatch.setenv("WORLD_SIZE", "2")
    train.setup_distributed(timeout_minutes=2.5)
    assert seen["timeout"] == datetime.timedelta(minutes=2.5)


def test_torchrun_stop_mid_epoch_exits_cleanly_and_resumes_every_ranks_loss(ddp_run, tmp_path):
    out = tmp_path / "run"
    # SIGTERM on rank 0 after step 5: the ranks agree at the next log interval (step 10),
    # save, and torchrun sees a clean exit rather than a failed child.
    stopped = torchrun(tmp_path, str(REPO_ROOT / "tests" / "ddp_signal_driver.py"), "5",
                       *digits_args(out, *DDP_ARGS))
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    saved = torch.load(out / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["progress"]["batches_done"]) == (0, 10)
    resumed = torchrun(tmp_path, "-m", "spectformer.train", "--resume", str(out / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    expected, got = read_summary(ddp_run / "summary.csv")[0], read_summary(out / "summary.csv")[0]
    # Both ranks' losses of the steps before the stop count, as in the uninterrupted run.
    assert float(got["train_loss"]) == pytest.approx(float(expected["train_loss"]), rel=1e-9)
    assert got["val_top1"] == expected["val_top1"]


# ------------------------------------------------------------------------- benchmark


def test_train_throughput_benchmark_on_cpu(tmp_path, capsys):
    import spectformer_kernels as sk
    from benchmarks import train_throughput

    argv = ["--device", "cpu", "--img-size", "16", "--batch-size", "4", "--warmup", "1",
            "--steps", "2", "--out", str(tmp_path), "--plot"]
    rows = train_throughput.main(argv)
    assert "CPU run" in capsys.readouterr().out
    expected = [b for b in sk.available_backends() if b != "auto"]
    assert [r["backend"] for r in rows] == expected
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in rows)
    assert next(r for r in rows if r["backend"] == "reference")["speedup_vs_reference"] == 1.0
    train_throughput.main(argv)  # a second run appends under the same header
    with open(tmp_path / "train_throughput_cpu.csv") as f:
        saved = list(csv.DictReader(f))
    assert len(saved) == 2 * len(expected)
    assert all(r["note"].startswith("CPU run") and r["commit"] for r in saved)
    assert (tmp_path / "train_throughput_cpu.png").stat().st_size > 0


def test_model_ema_is_trained_saved_and_validated(tmp_path):
    out = tmp_path / "ema"
    assert train.main(digits_args(out, "--epochs", "1", "--model-ema", "--model-ema-decay", "0.9")) == 0
    row = read_summary(out / "summary.csv")[0]
    assert list(row)[-3:] == train.EMA_COLUMNS
    saved = torch.load(out / "last.pt", weights_only=True)
    assert not torch.equal(saved["ema"]["head.weight"], saved["model"]["head.weight"])
    result_path = tmp_path / "ema.json"
    assert validate.main(["--model", "spectformer_digits", "--img-size", "16", "--data", "digits",
                          "--checkpoint", str(out / "last.pt"), "--ema",
                          "--output", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert result["top1"] == pytest.approx(float(row["ema_val_top1"]), abs=1e-3)
