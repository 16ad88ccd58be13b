"""Command-line mistakes: refused at start-up with one line naming the flag, nothing written."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spectformer
from spectformer import cli, train, training_state, validate

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--model", "spectformer_digits", "--data", "digits", "--img-size", "16"]


pytestmark = pytest.mark.usefixtures("one_thread")


def refused(capsys, main, prog: str, argv: list[str]) -> str:
    """Run like the console would; return the one error line."""
    assert cli.run(main, prog, argv) == cli.ERROR_EXIT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"{prog}: error: "), err
    return err


@pytest.mark.parametrize("extra,message", [
    (["--clip-grad", "-1"], "--clip-grad must be .* >= 0"),
    (["--backend", "dtf"], "--backend 'dtf' is not a backend"),
    (["--backend", "cuda_cufft"], "--backend 'cuda_cufft' cannot run"),
    (["--crop-pct", "0"], r"--crop-pct must be .* in \(0, 1\]"),
    (["--warmup-epochs", "nan"], "--warmup-epochs must be a finite number"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be"),
    (["--num-classes", "0"], "--num-classes must be"),
    (["--min-lr", "0.1"], "--min-lr 0.1 is above the peak learning rate"),
    (["--drop-path", "nan"], "--drop-path must be"),
    (["--lr", "inf"], "--lr must be"),
    (["--epochs", "0"], "--epochs must be"),
    (["--mixup-prob", "2"], "--mixup-prob must be"),
    (["--dist-timeout", "0"], "--dist-timeout must be"),
    (["--model", "spectformer_digit"], "did you mean spectformer_digits"),
    (["--data", "no-such-folder"], "--data 'no-such-folder' is neither"),
])
def test_refused_training_flag(tmp_path, capsys, monkeypatch, extra, message):
    if "cuda_cufft" in extra and torch.cuda.is_available():
        pytest.skip("the backend can run here")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    err = refused(capsys, train.main, "spectformer.train", [*TRAIN, "--output", str(out), *extra])
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # no output folder, no default output/ either


def test_unknown_backend_in_the_environment_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPECTFORMER_BACKEND", "fastest")
    err = refused(capsys, train.main, "spectformer.train", [*TRAIN, "--output", str(tmp_path / "o")])
    assert "$SPECTFORMER_BACKEND 'fastest'" in err and not (tmp_path / "o").exists()


def test_empty_class_folder_fails_before_any_file_is_written(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / split / "a" / "x.png")
    err = refused(capsys, train.main, "spectformer.train",
                  ["--model", "spectformer_digits", "--data", str(tmp_path / "data"),
                   "--output", str(tmp_path / "run")])
    assert "class folder" in err and str(tmp_path / "data" / "train" / "b") in err
    assert not (tmp_path / "run").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--clip-grad"):
        cli.run(train.main, "spectformer.train",
                [*TRAIN, "--clip-grad", "-1", "--output", str(tmp_path / "o"), "--debug"])


def test_console_entry_point_prints_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "spectformer.train", *TRAIN, "--crop-pct", "0",
                           "--output", str(tmp_path / "o")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.ERROR_EXIT
    assert done.stderr.strip().splitlines() == [
        "spectformer.train: error: --crop-pct must be a finite number in (0, 1], got 0.0 "
        "(--debug shows the traceback)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"epoch: 3\nthis is text\n"])
def test_unreadable_checkpoint_is_one_line_naming_it(tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    err = refused(capsys, validate.main, "spectformer.validate",
                  ["--model", "spectformer_digits", "--data", "digits", "--checkpoint", str(bad)])
    assert str(bad) in err
    with pytest.raises(ValueError, match=str(bad)):
        spectformer.load_checkpoint(spectformer.create_model("spectformer_digits"), bad)
    with pytest.raises(training_state.CheckpointError, match=str(bad)):
        training_state.load_training_checkpoint(bad)


def test_official_checkpoint_with_an_argparse_namespace_validates(tmp_path, capsys):
    model = spectformer.create_model("spectformer_digits", img_size=16)
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=5e-4), "epoch": 9}, path)
    assert validate.main(["--model", "spectformer_digits", "--img-size", "16", "--data", "digits",
                          "--checkpoint", str(path), "--workers", "0"]) == 0
    assert "state dict" in capsys.readouterr().out


def test_validate_takes_the_model_from_a_training_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TRAIN, "--epochs", "1", "--batch-size", "128", "--output", str(out)]) == 0
    capsys.readouterr()
    # No --model, --data or --img-size: the checkpoint says what it was trained as.
    assert validate.main(["--checkpoint", str(out / "last.pt")]) == 0
    assert "spectformer_digits (model weights after epoch 1) on digits" in capsys.readouterr().out
    err = refused(capsys, validate.main, "spectformer.validate",
                  ["--model", "spectformer_t", "--checkpoint", str(out / "last.pt")])
    assert f"--checkpoint {str(out / 'last.pt')!r} does not fit the model spectformer_t" in err


def test_library_errors_name_the_flag_on_the_command_line(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / "data" / split / cls / "x.png")
    # Found only when the folder is scanned: the data module's error, said with the flag.
    err = refused(capsys, validate.main, "spectformer.validate",
                  ["--model", "spectformer_digits", "--data", str(tmp_path / "data"),
                   "--num-classes", "2", "--workers", "0"])
    assert "error: --num-classes 2 is smaller than the 3 classes in" in err
    official = tmp_path / "official.pth"
    torch.save(spectformer.create_model("spectformer_digits").state_dict(), official)
    err = refused(capsys, validate.main, "spectformer.validate",
                  ["--model", "spectformer_digits", "--data", "digits", "--ema",
                   "--checkpoint", str(official)])
    assert f"error: --checkpoint {str(official)!r} is not a training checkpoint" in err
    assert "EMA" in err


def test_one_line_says_a_setting_as_its_flag():
    from spectformer.errors import SettingError

    exc = SettingError("num_classes", "5 is too small for the digits data set (10 classes)")
    assert str(exc) == "num_classes 5 is too small for the digits data set (10 classes)"
    assert cli.one_line(exc) == "--num-classes 5 is too small for the digits data set (10 classes)"
    resumed = training_state.CheckpointError("resume", "'x.pt' lacks optimizer")
    assert isinstance(resumed, RuntimeError) and isinstance(resumed, ValueError)
    assert cli.one_line(resumed) == "--resume 'x.pt' lacks optimizer"


def test_malformed_flag_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TRAIN, "--epochs", "many"])
    assert exit_info.value.code == cli.ERROR_EXIT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--epochs: invalid int value: 'many'" in err


def test_refused_validate_flag(capsys, tmp_path):
    err = refused(capsys, validate.main, "spectformer.validate",
                  ["--model", "spectformer_digits", "--data", "digits", "--batch-size", "0"])
    assert "--batch-size must be" in err
    err = refused(capsys, validate.main, "spectformer.validate",
                  ["--model", "spectformer_digits", "--data", "digits", "--output", str(tmp_path)])
    assert "is a folder, not a file" in err


def test_help_names_the_program_and_the_small_models_recipes():
    text = spectformer.config.build_parser("Train.").format_help()
    assert text.startswith("usage: python -m spectformer.train")
    assert "spectformer_digits: --epochs 12" in text
    assert "[default:" not in text and "(default: the model's) (default" not in text
