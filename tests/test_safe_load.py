"""Model and checkpoint files are loaded as weights only: a pickle that would run code is refused
with one line naming the file, and the code does not run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.core.errors import ModelError
from training.safe_load import load_weights


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _hostile(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / name
    torch.save({"format": "emotion-stream.train/v1", "model": {}, "x": _RunsCode(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_load_weights_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    path, marker = _hostile(tmp_path, "evil.pt")
    with pytest.raises(ModelError) as info:
        load_weights(path, "checkpoint", "pass a run dir")
    msg = str(info.value)
    assert not marker.exists()
    assert "\n" not in msg and str(path) in msg and "holds more than weights" in msg
    assert "(it names io.open)" in msg and msg.endswith("pass a run dir")


def test_evaluate_and_resume_refuse_a_hostile_checkpoint(tmp_path: Path) -> None:
    from training.train import load_model

    path, marker = _hostile(tmp_path, "best.pt")
    with pytest.raises(ModelError, match="holds more than weights"):
        load_model(tmp_path)  # what `evaluate RUN_DIR` does
    with pytest.raises(ModelError, match="holds more than weights"):
        load_model(path)
    assert not marker.exists()


def test_pretrained_weights_refuse_a_hostile_file(tmp_path: Path) -> None:
    from training.models.resnet import load_torchvision_weights, resnet18

    path, marker = _hostile(tmp_path, "r18.pth")
    with pytest.raises(ModelError, match=r"pretrained weights .* holds more than weights"):
        load_torchvision_weights(resnet18(), path)
    assert not marker.exists()


def test_load_weights_reads_plain_state_and_names_unreadable_files(tmp_path: Path) -> None:
    good = tmp_path / "w.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {"arch": "cnn"}, "epoch": 3}, good)
    assert load_weights(good, "checkpoint", "fix")["epoch"] == 3
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=r"cannot read checkpoint .*junk.pt .*: fix$"):
        load_weights(junk, "checkpoint", "fix")
