"""Unit tests of training/: data loaders and their errors, augmentation, models, the trainer
(learning, resume, determinism), metrics, plots, model card and export parity.

FER-2013 is not reachable from the build machines: the data here is synthetic and learnable
(the class sets the frequency of horizontal stripes), written to tmp_path in both layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import ConfigError, EmotionStreamError, ModelError
from pipeline.core.types import EMOTIONS
from training import metrics
from training.augment import augment
from training.config import AugmentSettings, Layout, TrainConfig, build_config
from training.data import (
    DataError,
    Split,
    class_weights,
    counts_table,
    load_dataset,
    split_validation,
    write_synthetic_csv,
    write_synthetic_folder,
)
from training.models import build_model, input_spec
from training.models.resnet import ResNet, load_torchvision_weights, resnet18, resnet50

TINY = {"arch": "cnn", "width": 0.25, "epochs": 2, "batch_size": 16, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_csv(tmp_path_factory.mktemp("csv") / "fer2013.csv", 700, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, csv_path: Path) -> tuple[Path, object]:
    """A 2-epoch tiny cnn run with metrics, plots and card (shared by several tests)."""
    from training.cli import finish_run
    from training.train import Trainer, write_config

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig.model_validate(TINY)
    ds = load_dataset(csv_path)
    write_config(cfg, out)
    trainer = Trainer(cfg, ds, out)
    report = finish_run(out, ds, trainer, trainer.run())
    return out, report


# ---- data ------------------------------------------------------------------------------


def test_load_csv_splits_and_counts(csv_path: Path) -> None:
    ds = load_dataset(csv_path)
    assert ds.layout is Layout.CSV
    assert len(ds["train"]) == 700 and len(ds["test"]) == 175
    assert ds["train"].images.dtype == torch.uint8 and ds["train"].images.shape[1:] == (48, 48)
    assert sum(ds["train"].counts().values()) == 700
    table = counts_table(ds)
    assert "7215" in table and "happy" in table


def test_load_csv_and_folder_agree_on_pixels(tmp_path: Path) -> None:
    write_synthetic_csv(tmp_path / "a.csv", 70, seed=3, n_test=14)
    write_synthetic_folder(tmp_path / "f", 70, seed=3, n_test=14)
    a = load_dataset(tmp_path / "a.csv")
    f = load_dataset(tmp_path / "f")
    assert f.layout is Layout.FOLDER

    # same multiset of (label, image) whatever the order the folders impose
    def key(s: Split) -> list[tuple[int, bytes]]:
        return sorted(
            (int(lab), img.numpy().tobytes()) for img, lab in zip(s.images, s.labels, strict=True)
        )

    assert key(a["train"]) == key(f["train"])
    assert key(a["test"]) == key(f["test"])


def test_load_csv_limit(csv_path: Path) -> None:
    ds = load_dataset(csv_path, limit=50)
    assert len(ds["train"]) == 50 and len(ds["test"]) == 50


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("9,1 2 3 4,Training", "emotion '9'"),
        ("1,1 2 3,Training", "pixels"),
        ("1,1 2 3 x,Training", "not an integer"),
        ("1,1 2 3 400,Training", "not an integer"),
        ("1,1 2 3 4,Validation", "Usage 'Validation'"),
    ],
)
def test_load_csv_bad_row_names_line(tmp_path: Path, row: str, needle: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("emotion,pixels,Usage\n0,1 2 3 4,Training\n0,5 6 7 8,PublicTest\n" + row + "\n")
    with pytest.raises(DataError) as ei:
        load_dataset(p)
    msg = str(ei.value)
    assert needle in msg and str(p) in msg and "\n" not in msg
    assert isinstance(ei.value, EmotionStreamError)


def test_load_csv_wrong_header(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("label,image\n0,1 2 3 4\n")
    with pytest.raises(DataError, match="header"):
        load_dataset(p)


def test_load_folder_unknown_class(tmp_path: Path) -> None:
    write_synthetic_folder(tmp_path, 14, seed=0)
    (tmp_path / "train" / "happy").rename(tmp_path / "train" / "joy")
    with pytest.raises(DataError, match="unknown class folder 'joy'"):
        load_dataset(tmp_path)


def test_load_folder_unreadable_and_wrong_size(tmp_path: Path) -> None:
    import cv2

    write_synthetic_folder(tmp_path, 14, seed=0)
    bad = tmp_path / "train" / "sad" / "zz_broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"zz_broken\.png is not a readable image"):
        load_dataset(tmp_path)
    bad.unlink()
    cv2.imwrite(str(tmp_path / "train" / "fear" / "zz_big.png"), np.zeros((64, 64), np.uint8))
    with pytest.raises(DataError, match=r"zz_big\.png is 64x64, expected 48x48"):
        load_dataset(tmp_path)


def test_load_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"neither fer2013\.csv nor train/"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing.csv")


def test_split_validation_stratified_and_seeded(csv_path: Path) -> None:
    train = load_dataset(csv_path)["train"]
    tr, va = split_validation(train, 0.2, seed=7)
    _, va2 = split_validation(train, 0.2, seed=7)
    assert torch.equal(va.labels, va2.labels) and torch.equal(va.images, va2.images)
    assert len(tr) + len(va) == len(train)
    for c, n in train.counts().items():
        assert abs(va.counts()[c] - 0.2 * n) <= 1
    _, va3 = split_validation(train, 0.2, seed=8)
    assert not torch.equal(va.images, va3.images)


def test_class_weights_inverse_frequency() -> None:
    labels = torch.tensor([0] * 60 + [1] * 10 + [3] * 30)
    w = class_weights(labels)
    assert w.shape == (7,)
    assert w[1] > w[3] > w[0] > 0 and w[2] == 0
    assert torch.isclose(w[0], torch.tensor(100 / (7 * 60)))


# ---- augmentation ------------------------------------------------------------------------


def test_augment_deterministic_and_shape() -> None:
    x = torch.rand(8, 1, 48, 48)
    cfg = AugmentSettings()
    a = augment(x, cfg, torch.Generator().manual_seed(1))
    b = augment(x, cfg, torch.Generator().manual_seed(1))
    c = augment(x, cfg, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_augment_identity_when_ranges_zero() -> None:
    x = torch.rand(4, 1, 48, 48)
    cfg = AugmentSettings(
        rotation_deg=0, scale=0, translate=0, hflip=False, brightness=0, contrast=0
    )
    y = augment(x, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(x, y, atol=1e-5)


def test_augment_flip_only_mirrors() -> None:
    x = torch.rand(64, 1, 16, 16)
    cfg = AugmentSettings(
        rotation_deg=0, scale=0, translate=0, hflip=True, brightness=0, contrast=0
    )
    y = augment(x, cfg, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(64)])
    same = torch.tensor([torch.allclose(y[i], x[i], atol=1e-5) for i in range(64)])
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54


# ---- models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "extra", "size", "lo", "hi"),
    [
        ("cnn", {"width": 0.25}, 48, 1e5, 1e6),
        ("cnn", {}, 48, 4e6, 8e6),
        ("resnet18", {}, 48, 11.0e6, 11.3e6),
        ("mini_xception", {}, 64, 56_951, 56_951),  # + 1,472 BN statistics = Keras 58,423
    ],
)
def test_model_forward_shape_and_parameters(
    arch: str, extra: dict[str, float], size: int, lo: float, hi: float
) -> None:
    cfg = TrainConfig.model_validate({"arch": arch, **extra})
    model = build_model(cfg).eval()
    spec = input_spec(cfg)
    assert (spec.channels, spec.height) == (1, size)
    with torch.no_grad():
        y = model(torch.zeros(2, 1, size, size))
    assert y.shape == (2, len(EMOTIONS))
    n = sum(p.numel() for p in model.parameters())
    assert lo <= n <= hi, n


@pytest.mark.parametrize("size", [60, 30, 15, 8, 7])
def test_same_pad_max_pool_equals_tensorflow_same(size: int) -> None:
    import torch.nn.functional as F

    from training.models.mini_xception import SamePadMaxPool, tf_same_pads

    x = torch.randn(2, 3, size, size)
    top, bottom = tf_same_pads(size, 3, 2)
    want = F.max_pool2d(F.pad(x, (top, bottom, top, bottom), value=float("-inf")), 3, 2)
    got = SamePadMaxPool(size)(x)
    assert got.shape == want.shape
    assert torch.equal(got, want)


def test_resnet50_parameters_match_torchvision_shape() -> None:
    # torchvision's resnet50 has 25,557,032 parameters with a 1000-way fc (2048*1000+1000)
    n = sum(p.numel() for p in resnet50().parameters())
    assert n == 25_557_032 - 2048 * 1000 - 1000 + 2048 * 7 + 7


def test_resnet_loads_torchvision_format_state_dict(tmp_path: Path) -> None:
    src = resnet18(num_classes=1000)  # an ImageNet-shaped head, as torchvision saves it
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    state = src.state_dict()
    assert (
        "layer1.0.conv1.weight" in state
        and "layer2.0.downsample.0.weight" in state
        and "fc.weight" in state
    )
    torch.save(state, tmp_path / "resnet18-imagenet.pth")
    cfg = TrainConfig(
        arch="resnet18", pretrained=str(tmp_path / "resnet18-imagenet.pth"), freeze_stages=2
    )
    model = build_model(cfg)
    assert isinstance(model, ResNet)
    got = model.state_dict()
    assert set(got) == set(state)
    assert torch.equal(got["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert got["fc.weight"].shape == (7, 512)
    params = dict(model.named_parameters())
    assert not params["conv1.weight"].requires_grad
    assert not params["layer1.0.conv1.weight"].requires_grad
    assert params["layer2.0.conv1.weight"].requires_grad and params["fc.weight"].requires_grad
    model.train()
    assert not model.layer1.training and model.layer2.training


def test_resnet_wrong_depth_weights_is_model_error(tmp_path: Path) -> None:
    torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match="does not fit this ResNet"):
        load_torchvision_weights(resnet50(), tmp_path / "r18.pth")


def test_resnet_missing_weights_warns_random_init(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level("WARNING"):
        model = build_model(TrainConfig(arch="resnet18", pretrained=str(tmp_path / "nope.pth")))
    assert "not found" in caplog.text
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_arch_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'vgg'"):
        build_model(TrainConfig(arch="vgg"))


def test_build_config_names_bad_setting() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        build_config({"batch_size": 0}, {})
    with pytest.raises(ConfigError, match="bogus"):
        build_config({"bogus": 1}, {})


# ---- metrics -----------------------------------------------------------------------------


def test_metrics_known_values() -> None:
    y = np.array([0, 0, 1, 1, 3, 3])
    pred = np.array([0, 1, 1, 1, 3, 0])
    probs = np.eye(7, dtype=np.float32)[pred]
    m = metrics.compute(y, probs)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["error_rate"] == pytest.approx(2 / 6)
    # classes present: 0 (P 1/2, R 1/2), 1 (P 2/3, R 1), 3 (P 1, R 1/2)
    assert m["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["confusion_matrix"][0][1] == 1 and m["per_class"]["happy"]["support"] == 2
    assert m["ece"] == pytest.approx(2 / 6)  # confidence 1, accuracy 4/6
    assert "published CNN" in metrics.comparison_table("x", m)


# ---- training ----------------------------------------------------------------------------


def test_train_beats_chance_and_writes_run(trained: tuple[Path, dict]) -> None:
    out, report = trained
    assert report["test"]["accuracy"] > 0.45  # chance is 1/7
    for name in (
        "config.json",
        "best.pt",
        "last.pt",
        "metrics.json",
        "model_card.md",
        "curves.png",
        "lr.png",
        "confusion_matrix.png",
        "per_class_f1.png",
    ):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "precision",
        "recall",
        "f1",
        "error_rate",
        "per_class",
        "confusion_matrix",
        "ece",
    ):
        assert key in m["test"]
    assert m["published"]["published CNN"]["accuracy"] == 0.665
    assert len(m["history"]) == 2
    card = (out / "model_card.md").read_text()
    assert (
        "angry, disgust, fear, happy, sad, surprise, neutral" in card
        and m["data"]["digest"] in card
    )


def test_evaluate_reproduces_run_metrics(trained: tuple[Path, dict], csv_path: Path) -> None:
    from training.train import evaluate_split, load_model

    out, report = trained
    lm = load_model(out)
    m, _ = evaluate_split(lm, load_dataset(csv_path)["test"], torch.device("cpu"))
    assert m == report["test"]


@pytest.mark.slow
def test_resume_continues_and_matches_uninterrupted(tmp_path: Path, csv_path: Path) -> None:
    from training.train import Trainer

    ds = load_dataset(csv_path, limit=120)
    one = TrainConfig.model_validate({**TINY, "epochs": 1})
    Trainer(one, ds, tmp_path / "a").run()
    st = Trainer(one.model_copy(update={"epochs": 2}), ds, tmp_path / "a", resume=True).run()
    assert [h["epoch"] for h in st.history] == [1, 2]
    ref = Trainer(one.model_copy(update={"epochs": 2}), ds, tmp_path / "b").run()
    assert [h["loss"] for h in st.history] == [h["loss"] for h in ref.history]
    assert st.history[-1]["val_loss"] == ref.history[-1]["val_loss"]


@pytest.mark.slow
def test_early_stopping_stops(tmp_path: Path, csv_path: Path) -> None:
    from training.train import Trainer

    ds = load_dataset(csv_path, limit=60)
    cfg = TrainConfig.model_validate({**TINY, "epochs": 30, "early_stop_patience": 1, "lr": 1.0})
    st = Trainer(cfg, ds, tmp_path / "r").run()
    assert st.stopped_early and st.epoch < 30


# ---- export ------------------------------------------------------------------------------


def test_export_onnx_parity_and_metadata(trained: tuple[Path, dict], tmp_path: Path) -> None:
    import onnx

    from engines.base import InputSpec
    from training.export import export_run
    from training.train import load_model

    out, _ = trained
    res = export_run(load_model(out), tmp_path / "m.onnx")
    assert float(res["max_abs_diff"]) <= 1e-4 and res["top1_agreement"] == 1.0  # type: ignore[arg-type]
    proto = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    spec = InputSpec.from_metadata(props)
    assert spec is not None and (spec.channels, spec.height, spec.width) == (1, 48, 48)
    assert [i.name for i in proto.graph.input] == ["input"] and [
        o.name for o in proto.graph.output
    ] == ["probs"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert any(o.version == 17 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    extra = {"input_spec.json": ""}
    ts = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["input_spec.json"])["height"] == 48
    p = ts(torch.zeros(3, 1, 48, 48))
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
    assert (tmp_path / "m.md").stat().st_size > 0


def test_export_onnx_loads_in_engine(trained: tuple[Path, dict], tmp_path: Path) -> None:
    from engines.registry import load_engine
    from training.export import export_run
    from training.train import load_model, predict

    out, _ = trained
    export_run(load_model(out), tmp_path / "e.onnx", torchscript=False)
    engine = load_engine(tmp_path / "e.onnx", backend="onnxruntime")
    crops = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    got = engine.infer(crops)
    ref, _ = predict(load_model(out), torch.from_numpy(crops), torch.device("cpu"))
    assert np.abs(got - ref).max() < 1e-4


def test_export_rejects_non_onnx_suffix(trained: tuple[Path, dict], tmp_path: Path) -> None:
    from training.export import export_run
    from training.train import load_model

    with pytest.raises(ModelError, match=r"must end in \.onnx"):
        export_run(load_model(trained[0]), tmp_path / "m.bin")
