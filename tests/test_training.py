"""Training pipeline: DeepLabv3+ shapes, a real training step, ONNX export parity, the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.analysis.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
ENGINES = REPO / "daemon" / "engines"
OUR_MODEL = ENGINES / "deeplabv3plus_mnv2_person_plate_513.onnx"


def _stride4(n: int) -> int:
    for _ in range(2):  # two stride-2 3x3 convs with padding 1
        n = (n - 1) // 2 + 1
    return n


@pytest.mark.parametrize("backbone", ["mnv2", "mnv2_050"])
@pytest.mark.parametrize(("height", "width"), [(97, 131), (513, 513), (65, 33)])
def test_output_shape_for_odd_sizes(height: int, width: int, backbone: str) -> None:
    torch = pytest.importorskip("torch")
    from training.model import DeepLabV3Plus

    model = DeepLabV3Plus(num_classes=3, backbone=backbone).eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, height, width)
        logits = model(x)
        full = model.logits_at_input(x)
    assert logits.shape == (1, 3, _stride4(height), _stride4(width))
    assert full.shape == (1, 3, height, width)


def _real_batch(shared_data: Path, crop: int, count: int):
    import torch

    from training.data import AugmentConfig, augment, load_pair, read_split, to_tensor

    samples = read_split(shared_data / "seg", "train")
    person = [s for s in samples if s.kind == "person"]
    plate = [s for s in samples if s.kind == "plate"]
    picked = person[: count // 2] + plate[: count - count // 2]
    rng = np.random.default_rng(0)
    config = AugmentConfig(size=crop, foreground_crop=1.0)
    images, masks = [], []
    for sample in picked:
        image, mask = augment(*load_pair(sample), sample.source, config, rng)
        images.append(to_tensor(image))
        masks.append(torch.from_numpy(mask))
    return torch.stack(images), torch.stack(masks), [s.kind for s in picked]


def test_partial_labels_never_call_the_other_class_background() -> None:
    torch = pytest.importorskip("torch")
    from training.data import MAYBE_PERSON, MAYBE_PLATE, allowed_classes, partial_label_loss

    mask = torch.tensor([[[MAYBE_PLATE, 1, 255, 0]], [[0, 2, 255, MAYBE_PERSON]]],
                        dtype=torch.uint8)
    allowed = allowed_classes(mask, ["person", "plate"])
    # person image: background near a vehicle may be an unlabelled plate, elsewhere not
    assert allowed[0, :, 0, 0].tolist() == [True, False, True]
    assert allowed[0, :, 0, 3].tolist() == [True, False, False]
    assert allowed[0, :, 0, 1].tolist() == [False, True, False]
    # plate image: background is background, unless the teacher saw a person there
    assert allowed[1, :, 0, 0].tolist() == [True, False, False]
    assert allowed[1, :, 0, 1].tolist() == [False, False, True]
    assert allowed[1, :, 0, 3].tolist() == [True, True, False]
    assert not allowed[:, :, 0, 2].any()
    # a confident plate near a vehicle on a person image costs nothing; a person there does,
    # and so does a plate away from any vehicle
    plate_logits = torch.tensor([-9.0, -9.0, 9.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    person_logits = torch.tensor([-9.0, 9.0, -9.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    near_vehicle = torch.tensor([[[MAYBE_PLATE, 255, 255]]], dtype=torch.uint8)
    on_person = allowed_classes(near_vehicle, ["person"])
    assert partial_label_loss(plate_logits, on_person) < 1e-3
    assert partial_label_loss(person_logits, on_person) > 10.0
    away = allowed_classes(torch.tensor([[[0, 255, 255]]], dtype=torch.uint8), ["person"])
    assert partial_label_loss(plate_logits, away) > 10.0


def test_small_people_weigh_more_in_the_loss() -> None:
    torch = pytest.importorskip("torch")
    from training.data import allowed_classes, partial_label_loss, small_object_weight

    mask = np.zeros((1, 120, 120), np.uint8)
    mask[0, 5:15, 5:15] = 1  # 100 px person: sqrt(4096 / 100) = 6.4, clipped to 4
    mask[0, 20:50, 5:35] = 1  # 900 px person: sqrt(4096 / 900) = 2.13
    mask[0, 40:120, 40:120] = 1  # 6,400 px person: 1
    mask[0, 0:4, 100:104] = 2  # a small plate: not the weighted class
    weight = small_object_weight(torch.from_numpy(mask), 1, 4096, 4.0)[0].numpy()
    assert weight[10, 10] == 4.0
    assert weight[30, 20] == pytest.approx(np.sqrt(4096 / 900))
    assert weight[80, 80] == 1.0 and weight[2, 102] == 1.0 and weight[0, 60] == 1.0
    # one small person all wrong, the large one all right: the weight makes the miss cost more
    masks = torch.from_numpy(mask)
    allowed = allowed_classes(masks, ["person"])
    logits = torch.zeros(1, 3, 120, 120)
    logits[0, 0] = 5.0
    logits[0, 1, 40:, 40:] = 10.0
    plain = partial_label_loss(logits, allowed)
    weighted = partial_label_loss(logits, allowed, pixel_weight=torch.from_numpy(weight)[None])
    assert weighted > 1.5 * plain
    ones = torch.ones(1, 120, 120)
    assert partial_label_loss(logits, allowed, pixel_weight=ones) == pytest.approx(float(plain))


def test_two_training_steps_lower_the_loss(shared_data: Path) -> None:
    torch = pytest.importorskip("torch")
    from training.data import allowed_classes, partial_label_loss
    from training.train import TrainConfig, build_model, train_step

    torch.manual_seed(0)
    images, masks, kinds = _real_batch(shared_data, crop=96, count=4)
    model = build_model(TrainConfig(), pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9)
    device = torch.device("cpu")

    def loss_now() -> float:
        model.eval()  # no dropout, fixed BN statistics: the same measurement before and after
        with torch.no_grad():
            return float(partial_label_loss(model(images), allowed_classes(masks, kinds)))

    # BN running statistics start at (0, 1): let them see the data before the first measurement
    model.train()
    with torch.no_grad():
        for _ in range(10):
            model(images)
    before = loss_now()
    for _ in range(2):
        model.train()
        train_step(model, optimizer, images, masks, kinds, None, device)
    after = loss_now()
    assert after < before, (before, after)


def test_reference_weights_rebuilt_in_pytorch_match_onnx_runtime(shared_data: Path) -> None:
    """The ONNX -> PyTorch weight mapping behind `init: reference` reproduces the reference."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import cv2
    import onnxruntime

    from training.data import to_tensor
    from training.transfer import REFERENCE, REFERENCE_PERSON, ReferenceDeepLabV3

    image = cv2.imread(str(shared_data / "stills" / "deface_city.jpg"), cv2.IMREAD_COLOR)
    view = cv2.resize(image, (257, 257), interpolation=cv2.INTER_LINEAR)
    pixels = (view[:, :, ::-1].astype(np.float32) - 127.5) / 127.5
    session = onnxruntime.InferenceSession(str(REFERENCE), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"sub_7": pixels.transpose(2, 0, 1)[None].copy()})[0]

    def rebuilt(imagenet_input: bool, x: np.ndarray) -> np.ndarray:
        model = ReferenceDeepLabV3(imagenet_input=imagenet_input).eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(x))[None])
            return torch.nn.functional.interpolate(logits, size=(257, 257), mode="bilinear",
                                                   align_corners=True).numpy()

    truth = expected.argmax(axis=1)
    assert (truth == REFERENCE_PERSON).mean() > 0.02  # the image shows people: not vacuous
    # on its own input the rebuilt model is the reference up to float error
    exact = rebuilt(False, pixels.transpose(2, 0, 1))
    assert np.abs(exact - expected).max() < 1e-3
    # with the normalisation folded into the first conv only the zero padding differs
    folded = rebuilt(True, to_tensor(view).numpy())
    assert (folded.argmax(axis=1) == truth).mean() > 0.995


def test_reference_init_starts_from_the_reference_person_labels(shared_data: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import cv2

    from training.data import to_tensor
    from training.train import TrainConfig, build_model
    from training.transfer import REFERENCE_PERSON, ReferenceDeepLabV3

    image = cv2.imread(str(shared_data / "stills" / "deface_city.jpg"), cv2.IMREAD_COLOR)
    x = to_tensor(cv2.resize(image, (257, 257), interpolation=cv2.INTER_LINEAR))[None]
    config = TrainConfig(backbone="mnv2_050", init="reference", encoder_logits=True)
    with torch.no_grad():
        ours = build_model(config).eval().logits_at_input(x).argmax(dim=1)
        logits = ReferenceDeepLabV3(output_stride=16).eval()(x)[:, [0, REFERENCE_PERSON]]
        theirs = torch.nn.functional.interpolate(logits, size=(257, 257), mode="bilinear",
                                                 align_corners=False).argmax(dim=1)
    assert (theirs == 1).float().mean() > 0.02
    assert (ours == 2).sum() == 0  # license_plate starts unlikely everywhere
    assert (ours == theirs).float().mean() > 0.98


def test_calibrated_norms_keep_the_function_and_train_normally(shared_data: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from training.train import TrainConfig, build_model, group_factor, param_groups
    from training.transfer import calibrate_norms, folded_norms

    config = TrainConfig(backbone="mnv2_050", init="reference", encoder_logits=True,
                         pretrained_lr=0.5, warmup_steps=10)
    model = build_model(config).eval()
    images, _, _ = _real_batch(shared_data, crop=65, count=4)
    with torch.no_grad():
        before = model(images)
        calibrate_norms(model, images)
        after = model(images)
        # eval mode: the same function (the folded bias moved into real statistics)
        assert torch.allclose(before, after, atol=1e-3), (before - after).abs().max()
        assert all(float(norm.running_var.max()) > 1e-3 for norm in folded_norms(model))
        # training mode on the calibration batch: batch statistics = calibrated ones
        model.train()
        model.aspp.project[1].eval()  # no dropout, to compare like with like
        trained_view = model(images)
    assert (trained_view.argmax(1) == after.argmax(1)).float().mean() > 0.99
    groups = param_groups(model, config)
    assert sorted((g["pretrained"], g["lr_factor"]) for g in groups) == [(False, 1.0), (True, 0.5)]
    pretrained = next(g for g in groups if g["pretrained"])
    fresh = next(g for g in groups if not g["pretrained"])
    assert [group_factor(pretrained, step, 10) for step in (0, 5, 10, 50)] == [0, 0.25, 0.5, 0.5]
    assert [group_factor(fresh, step, 10) for step in (0, 5)] == [1.0, 1.0]


def test_exported_init_continues_from_the_committed_model(shared_data: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import cv2

    from daemon.analysis.onnx_backend import OnnxAnalyzer
    from training.data import to_tensor
    from training.train import TrainConfig, build_model, folded_by_init, param_groups
    from training.transfer import calibrate_norms

    image = cv2.imread(str(shared_data / "stills" / "deface_city.jpg"), cv2.IMREAD_COLOR)
    view = cv2.resize(image, (513, 513), interpolation=cv2.INTER_LINEAR)
    manifest = load_manifest(OUR_MODEL.with_suffix(".manifest.yaml"))
    expected = OnnxAnalyzer(OUR_MODEL, manifest, threads=1).infer(view)
    config = TrainConfig(backbone="mnv2_050", encoder_logits=True, output_stride=8,
                         init="exported", init_from=str(OUR_MODEL))
    model = build_model(config).eval()
    x = to_tensor(view)[None]
    with torch.no_grad():
        before = model(x).numpy()
        calibrate_norms(model, x, folded_by_init(model, config))
        after = model(x).numpy()
    assert (expected.argmax(axis=1) == 1).mean() > 0.02  # people in the still
    for ours in (before, after):  # the ONNX's function, before and after calibration
        assert np.abs(ours - expected).max() < 1e-2, np.abs(ours - expected).max()
    groups = param_groups(model, config)
    assert [g["pretrained"] for g in groups] == [True]  # every layer comes from the ONNX
    with pytest.raises(ValueError, match="convolutions"):
        build_model(TrainConfig(backbone="mnv2_050", encoder_logits=True, init="exported",
                                init_from=str(ENGINES / "deeplabv3_mnv2_voc_257.onnx")))


def test_export_then_onnx_runtime_labels_match_pytorch(shared_data: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import cv2

    from daemon.analysis.onnx_backend import OnnxAnalyzer
    from training.data import to_tensor
    from training.export import export_onnx, write_manifest
    from training.model import DeepLabV3Plus
    from training.train import predict

    size = 129
    image = cv2.imread(str(shared_data / "stills" / "deface_city.jpg"), cv2.IMREAD_COLOR)
    image = cv2.resize(image, (200, 150), interpolation=cv2.INTER_AREA)
    view = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)

    # an untrained net whose BN statistics come from the image and whose classifier is loud
    # enough that its labels vary across the image (a constant map would prove nothing)
    torch.manual_seed(1)
    model = DeepLabV3Plus(num_classes=3)
    torch.nn.init.normal_(model.classifier.weight, std=3.0)
    model.train()
    with torch.no_grad():
        batch = torch.stack([to_tensor(view), to_tensor(view[:, ::-1])])
        for _ in range(30):
            model(batch)
    model.eval()
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, onnx_path, size=size)
    manifest = load_manifest(write_manifest(onnx_path, "tiny", size=size))
    analyzer = OnnxAnalyzer(onnx_path, manifest, threads=1)
    ours = analyzer.labels(image)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(
            model(to_tensor(view)[None]), size=image.shape[:2], mode="bilinear",
            align_corners=False)
        reference = logits.argmax(dim=1)[0].numpy().astype(np.uint8)
    assert ours.shape == image.shape[:2]
    assert np.sort(np.bincount(reference.ravel(), minlength=3))[-2] > 0.005 * reference.size
    agree = float(np.mean(ours == reference))
    assert agree > 0.999, agree
    # training's validation predicts with the same recipe (stretch, bilinear, argmax)
    assert np.array_equal(predict(model, image, torch.device("cpu"), size=size), reference)


def test_committed_model_manifest_matches_its_onnx() -> None:
    onnx = pytest.importorskip("onnx")
    import hashlib

    from daemon.analysis.onnx_backend import OnnxAnalyzer

    manifest = load_manifest(OUR_MODEL.with_suffix(".manifest.yaml"))
    assert hashlib.sha256(OUR_MODEL.read_bytes()).hexdigest() == manifest.sha256
    assert OUR_MODEL.stat().st_size <= 20 * 1024 * 1024
    graph = onnx.load(str(OUR_MODEL)).graph
    assert [i.name for i in graph.input] == [manifest.input.name]
    assert [o.name for o in graph.output] == [manifest.output.name]
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, manifest.input.height, manifest.input.width]
    out = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert out[:2] == [1, len(manifest.classes)]
    assert manifest.classes == {"background": 0, "person": 1, "license_plate": 2}
    analyzer = OnnxAnalyzer(OUR_MODEL, manifest, threads=1)  # checks I/O and runs once
    frame = np.zeros((360, 480, 3), np.uint8)
    assert analyzer.labels(frame).shape == (360, 480)


def test_evaluate_reports_each_model_with_and_without_zoomed_tiles(shared_data: Path) -> None:
    pytest.importorskip("torch")  # training.data builds tensors
    from daemon.config import TilingConfig
    from training.data import read_split
    from training.evaluate import evaluate, table

    samples = [s for s in read_split(shared_data / "seg", "val", {"camvid"})
               if s.image.stem in ("camvid_0006R0_f02100", "camvid_0006R0_f02130")]
    assert len(samples) == 2
    plain = evaluate(OUR_MODEL, samples, threads=1)
    tiled = evaluate(OUR_MODEL, samples, threads=1,
                     tiling=TilingConfig(enabled=True, zoom=2.0))
    assert set(plain) == set(tiled)
    assert {"iou/person", "iou/person/camvid", "found/small", "objects/small"} <= set(plain)
    assert plain["objects/small"] == tiled["objects/small"] > 0
    assert tiled["iou/person/camvid"] > plain["iou/person/camvid"]
    text = table({"ours": plain, "ours + tiles": tiled})
    assert text.splitlines()[0] == "| metric | ours | ours + tiles |"
    assert f"| iou/person/camvid | {plain['iou/person/camvid']:.3f} |" in text


def test_blend_mixes_every_weight_and_refuses_other_architectures(shared_data: Path,
                                                                   tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from daemon.analysis.onnx_backend import OnnxAnalyzer
    from training.export import write_manifest
    from training.soup import blend

    # a "fine-tuned" copy: every float weight moved by a known, weight-sized amount
    model = onnx.load(str(OUR_MODEL))
    rng = np.random.default_rng(0)
    originals = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if np.issubdtype(array.dtype, np.floating):
            originals[init.name] = array
            moved = array + (0.2 * np.abs(array).mean() * rng.standard_normal(array.shape)
                             ).astype(array.dtype)
            init.CopyFrom(numpy_helper.from_array(moved, init.name))
    tuned = tmp_path / "tuned.onnx"
    onnx.save(model, str(tuned))
    moved = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert len(originals) > 100

    for weight in (0.0, 0.25, 1.0):
        out = tmp_path / f"blend{weight}.onnx"
        assert blend(OUR_MODEL, tuned, weight, out) == (513, False)
        mixed = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
        for name, array in originals.items():
            expected = (1 - weight) * array.astype(np.float64) + weight * moved[name]
            assert np.allclose(mixed[name], expected, atol=1e-6), name
    # the blend is a model the daemon loads and runs, with its manifest
    out = tmp_path / "blend0.25.onnx"
    analyzer = OnnxAnalyzer(out, load_manifest(write_manifest(out, "blend")), threads=1)
    assert analyzer.labels(np.zeros((360, 480, 3), np.uint8)).shape == (360, 480)
    with pytest.raises(ValueError, match="same architecture"):
        blend(OUR_MODEL, ENGINES / "deeplabv3_mnv2_voc_257.onnx", 0.5, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend(OUR_MODEL, tuned, 1.5, tmp_path / "x.onnx")


def test_model_card_states_the_run_settings(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dataclasses import asdict

    from training.export import write_card
    from training.train import TrainConfig

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"not read for the card, only hashed and sized")
    config = TrainConfig(backbone="mnv2_050", small_object_repeat=3, small_object_scale_min=0.9,
                         small_object_scale_max=1.5, lr=0.001)
    card = write_card(onnx_path, "m", {"config": asdict(config), "step": 2220, "per_epoch": 444},
                      "| metric | m |", "notes here", output_stride=8).read_text()
    assert "CamVid: [0.9, 1.5]" in card and "per epoch, CamVid images 3x" in card
    assert "width 0.5, output stride\n8" in card and "from 0.001" in card
    assert "2220 steps in all" in card and card.rstrip().endswith("notes here")
