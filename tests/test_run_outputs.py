"""Where a run writes, with which permissions, and what it leaves after failing or resuming."""

from __future__ import annotations

import os
import shutil
import stat

import pytest
import torch

from spectformer import train, training_state

ARGS = ["--model", "spectformer_digits", "--data", "digits", "--img-size", "16",
        "--batch-size", "128", "--lr", "2e-3", "--warmup-epochs", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """One epoch of a two-epoch schedule, stopped as a time-limited job would."""
    out = tmp_path_factory.mktemp("original") / "run"
    torch.set_num_threads(1)
    assert train.main([*ARGS, "--epochs", "2", "--stop-after", "1", "--output", str(out)]) == 0
    return out


def test_resuming_a_copy_writes_into_the_copy(stopped_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stopped_run, copy)
    before = {p.name: p.stat().st_mtime_ns for p in stopped_run.iterdir()}
    assert train.main(["--resume", str(copy / "last.pt")]) == 0
    assert torch.load(copy / "last.pt", weights_only=True)["epoch"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in stopped_run.iterdir()} == before


def test_resume_with_output_writes_there_and_never_over_another_run(stopped_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    assert train.main(["--resume", str(stopped_run / "last.pt"), "--output", str(elsewhere)]) == 0
    assert torch.load(elsewhere / "last.pt", weights_only=True)["epoch"] == 2
    with pytest.raises(FileExistsError, match="already holds a run"):
        train.main(["--resume", str(stopped_run / "last.pt"), "--output", str(elsewhere)])


def test_outputs_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        training_state.atomic_save({"w": torch.ones(1)}, tmp_path / "a.pt")
        training_state.atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(previous)
    for name in ("a.pt", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_stale_temporary_files_are_removed_when_a_run_continues(stopped_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stopped_run, copy)
    stale = copy / ".last.pt.k1ll3d.tmp"  # what a kill during a save leaves
    stale.write_bytes(b"partial")
    assert train.main(["--resume", str(copy / "last.pt"), "--stop-after", "1"]) == 0
    assert not stale.exists()


def test_full_disk_names_the_file(tmp_path, monkeypatch):
    def torch_on_a_full_disk(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    with pytest.raises(OSError, match="cannot write .*last.pt"):
        training_state.atomic_save({}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_run_failing_before_its_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    def fail(self, stop):
        raise RuntimeError("the first step failed")

    monkeypatch.setattr(train.Trainer, "train_one_epoch", fail)
    out = tmp_path / "nested" / "run"
    with pytest.raises(RuntimeError, match="first step"):
        train.main([*ARGS, "--epochs", "1", "--output", str(out)])
    assert list(tmp_path.iterdir()) == []


def test_batches_of_unreadable_images_are_skipped_and_counted(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("L", (12, 12), 60 * i).save(folder / f"{i}.png")
    (tmp_path / "data" / "train" / "a" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    assert train.main(["--model", "spectformer_digits", "--data", str(tmp_path / "data"),
                       "--img-size", "16", "--batch-size", "1", "--epochs", "1",
                       "--workers", "0", "--output", str(out)]) == 0
    assert "1 training batch(es) held only unreadable images" in capsys.readouterr().out
