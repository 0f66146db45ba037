"""``emotion-stream train | evaluate | export`` through ``pipeline.cli.main.main`` on synthetic
FER-2013-format data (both layouts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli.main import main
from training.data import write_synthetic_csv, write_synthetic_folder

#: Every test here trains (or evaluates) a model through the CLI: minutes on 2 cores.
pytestmark = pytest.mark.slow

TINY = [
    "--arch",
    "cnn",
    "--width",
    "0.25",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--no-progress",
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = write_synthetic_folder(root / "fer", 560, seed=1)
    out = root / "runs" / "cnn"
    assert main(["-q", "train", "--data", str(data), "--out", str(out), *TINY]) == 0
    return data, out


def test_cli_train_folder_prints_counts_and_table(
    folder_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = folder_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["layout"] == "folder" and m["test"]["accuracy"] > 0.4
    assert json.loads((out / "config.json").read_text())["width"] == 0.25


def test_cli_evaluate_json_matches_metrics(
    folder_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = folder_run
    capsys.readouterr()
    assert main(["-q", "evaluate", str(out), "--data", str(data), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["test"] == json.loads((out / "metrics.json").read_text())["test"]


def test_cli_export_then_evaluate_torchscript(
    folder_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = folder_run
    assert main(["-q", "export", str(out), "--out", str(tmp_path / "cnn.onnx")]) == 0
    text = capsys.readouterr().out
    assert (
        "max |diff|" in text
        and (tmp_path / "cnn.onnx").is_file()
        and (tmp_path / "cnn.pt").is_file()
    )
    assert main(["-q", "evaluate", str(tmp_path / "cnn.pt"), "--data", str(data), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    ref = json.loads((out / "metrics.json").read_text())["test"]
    assert got["test"]["confusion_matrix"] == ref["confusion_matrix"]


def test_cli_evaluate_default_ported_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = Path(__file__).resolve().parents[1] / "models" / "emotion_mini_xception.pt"
    if not model.is_file():
        pytest.skip(
            "models/emotion_mini_xception.pt not bootstrapped (emotion-stream models bootstrap)"
        )
    csv = write_synthetic_csv(tmp_path / "fer2013.csv", 35, seed=2, n_test=21)
    assert main(["-q", "evaluate", str(model), "--data", str(csv), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["test"]["n"] == 21 and len(got["test"]["confusion_matrix"]) == 7


def test_cli_train_refuses_existing_run_without_resume(
    folder_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = folder_run
    assert main(["train", "--data", str(data), "--out", str(out), *TINY]) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err


def test_cli_resume_extends_epochs(tmp_path: Path) -> None:
    csv = write_synthetic_csv(tmp_path / "fer2013.csv", 140, seed=3)
    out = tmp_path / "run"
    first = ["-q", "train", "--data", str(csv), "--out", str(out), *TINY, "--epochs", "1"]
    assert main(first) == 0
    assert (
        main(["-q", "train", "--data", str(csv), "--out", str(out), "--resume", "--epochs", "2"])
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2]


def test_cli_bad_data_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "fer2013.csv"
    bad.write_text("emotion,pixels,Usage\n0,1 2 3 4,Training\n7,1 2 3 4,PrivateTest\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "line 3" in err and "\n" not in err


def test_cli_config_file_and_bad_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("lr = -1\n")
    csv = write_synthetic_csv(tmp_path / "fer2013.csv", 28, seed=0)
    assert (
        main(["train", "--data", str(csv), "--out", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    )
    assert "'lr'" in capsys.readouterr().err
