"""Model manifest: the packaged reference manifest, round-trips, and actionable errors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from daemon.analysis import class_ids, load_manifest
from daemon.analysis.manifest import Manifest
from daemon.errors import ConfigError, ModelError

ENGINES = Path(__file__).resolve().parents[1] / "daemon" / "engines"
REFERENCE = ENGINES / "deeplabv3_mnv2_voc_257.manifest.yaml"

VOC = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


@pytest.fixture(scope="module")
def reference() -> Manifest:
    return load_manifest(REFERENCE)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.manifest.yaml"
    path.write_text(text)
    return path


def _reference_text(**replace: str) -> str:
    text = REFERENCE.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_reference_manifest_matches_model_card(reference: Manifest) -> None:
    assert reference.name == "deeplabv3_mnv2_voc_257"
    assert reference.class_names == tuple(VOC)
    assert reference.classes["person"] == 15
    assert reference.background_id == 0
    assert (reference.input.width, reference.input.height) == (257, 257)
    assert reference.input.colour_order == "RGB"
    assert reference.input.mean == reference.input.std == (127.5, 127.5, 127.5)
    assert reference.input.size == "fixed"
    assert reference.output.kind == "logits"


def test_reference_sha256_matches_packaged_onnx(reference: Manifest, shared_data: Path) -> None:
    packaged = ENGINES / "deeplabv3_mnv2_voc_257.onnx"
    digest = hashlib.sha256(packaged.read_bytes()).hexdigest()
    assert digest == reference.sha256
    assert packaged.read_bytes() == (shared_data / "models" / packaged.name).read_bytes()


def test_round_trip_through_yaml(reference: Manifest, tmp_path: Path) -> None:
    dumped = yaml.safe_dump(reference.model_dump(mode="json"), sort_keys=False)
    assert load_manifest(_write(tmp_path, dumped)) == reference


def test_class_ids_maps_names(reference: Manifest) -> None:
    assert class_ids(reference, ["person", "car", "background"]) == (15, 7, 0)


def test_unknown_class_lists_known_ones(reference: Manifest) -> None:
    with pytest.raises(ModelError) as caught:
        class_ids(reference, ["person", "license_plate"])
    message = str(caught.value)
    assert message.startswith("model deeplabv3_mnv2_voc_257 has no class 'license_plate'")
    assert message.endswith("it knows: " + ", ".join(VOC))


def test_bad_key_is_a_config_error_line(tmp_path: Path) -> None:
    path = _write(tmp_path, _reference_text(**{"  colour_order: RGB": "  color_order: RGB"}))
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if "color_order" in t)
    lines = str(caught.value).splitlines()
    assert (
        f"{path}:{line}:3: input.color_order: unknown key 'color_order'"
        " (did you mean 'colour_order'?)"
    ) in lines
    # the renamed key is now also missing: reported against the `input:` mapping
    assert any(x.endswith("input.colour_order: Field required") for x in lines)


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ({"  car: 7": "  car: 6"}, "classes 'bus' and 'car' share id 6"),
        ({"  car: 7": "  car: 256"}, "classes.car: Input should be less than or equal to 255"),
        ({"background: background\n": "background: sky\n"}, "background 'sky' is not one of"),
        ({"  tvmonitor: 20": "  tvmonitor: 22"}, "must be 0..20 without gaps"),
        ({"std: [127.5, 127.5, 127.5]": "std: [127.5, 0, 127.5]"}, "std must be > 0"),
        ({"colour_order: RGB": "colour_order: HSV"}, "input.colour_order: Input should be"),
        ({"kind: logits": "kind: probabilities"}, "output.kind: Input should be"),
        ({"  person: 15": "  Person: 15"}, "lower-case"),
    ],
)
def test_invalid_manifest_names_the_problem(
    tmp_path: Path, replace: dict[str, str], expected: str
) -> None:
    path = _write(tmp_path, _reference_text(**replace))
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert expected in message


def test_labels_model_may_use_sparse_ids(tmp_path: Path) -> None:
    text = _reference_text(**{"kind: logits": "kind: labels", "  tvmonitor: 20": "  tvmonitor: 99"})
    manifest = load_manifest(_write(tmp_path, text))
    assert manifest.classes["tvmonitor"] == 99


def test_missing_manifest_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model manifest .* not found"):
        load_manifest(tmp_path / "absent.manifest.yaml")


def test_manifest_is_frozen(reference: Manifest) -> None:
    with pytest.raises(ValidationError):
        reference.name = "other"  # type: ignore[misc]
    assert re.fullmatch(r"[0-9a-f]{64}", reference.sha256 or "")
