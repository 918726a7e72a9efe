"""`anonymizer batch` on a local Ray cluster (2 CPUs, small object store): real clips and stills,
the real reference model, the CLI in a subprocess (as users run it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from daemon.batch.segments import Packets, scan, split
from daemon.batch.units import discover
from daemon.errors import ConfigError

KINETICS = "kinetics_style_armwrestling_340x256.mp4"
INDOOR = "indoor_people_walking_768x432.mp4"  # a keyframe every 10 frames (1 s)
UCF = "ucf101_style_applyeyemakeup_320x240.avi"  # AVI: no pts, one unit
STILLS = ("messi5.jpg", "aiguys_car.jpg")
# The single-pass analysis keeps the model cost to a few frames/s on 2 CPUs; `file` and `batch`
# run the same config, which is what the comparison needs.
CONFIG = "analysis:\n  tiling:\n    enabled: false\n"


# --- helpers ---------------------------------------------------------------------------------


def reencode(source: Path, target: Path, frames: int, gop: int) -> Path:
    """The first `frames` frames of a real clip, re-encoded with a keyframe every `gop`
    frames and B-frames (so segments are short and reordering is exercised), keeping the
    source's pts and time base."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream("libx264", rate=stream.average_rate,
                             options={"g": str(gop), "keyint_min": str(gop), "bf": "2",
                                      "sc_threshold": "0", "crf": "20", "preset": "fast"})
        out.width, out.height, out.pix_fmt = stream.width, stream.height, "yuv420p"
        out.time_base = stream.time_base
        out.codec_context.time_base = stream.time_base
        for count, frame in enumerate(src.decode(stream)):
            if count == frames:
                break
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="bgr24"),
                                                 format="bgr24")
            picture.pts, picture.time_base = frame.pts, stream.time_base
            dst.mux(out.encode(picture))
        dst.mux(out.encode(None))
    return target


def decode(path: Path) -> tuple[list[np.ndarray], list[Fraction], Fraction | None, Fraction]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        assert stream.time_base is not None
        return ([f.to_ndarray(format="bgr24") for f in frames],
                [f.pts * f.time_base for f in frames], stream.average_rate,
                Fraction(stream.time_base))


def packet_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return sorted(p.pts * p.time_base for p in c.demux(stream) if p.size)


def cli(
    command: str, *args: object, cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", command, *map(str, args), "--no-progress"],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )


def records(output: Path, kind: str, run: str | None = None) -> list[dict[str, Any]]:
    lines = (output / "manifest.jsonl").read_text().splitlines()
    found = [json.loads(line) for line in lines]
    return [r for r in found if r["type"] == kind and (run is None or r["run"] == run)]


def runs(output: Path) -> list[str]:
    return [r["run"] for r in records(output, "run")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address() -> Any:
    """A local Ray cluster for the module: 2 CPUs, no dashboard, a 100 MB object store; the
    CLI joins it with --address (one cluster start for every run)."""
    ray = pytest.importorskip("ray", reason="the batch extra (./install.sh --batch)")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batch")
    (folder / "config.yaml").write_text(CONFIG)
    return folder


@pytest.fixture(scope="module")
def archive(shared_data: Path, work: Path, clip_segment: Any) -> Path:
    """A small archive: a segmented clip (4 segments), a stream-copied real clip (2 segments of
    its own 1 s GOPs), an AVI (one unit) and two stills, one in a subfolder."""
    inputs = work / "archive"
    (inputs / "cams" / "indoor").mkdir(parents=True)
    reencode(shared_data / "clips" / KINETICS, inputs / "kinetics.mp4", 20, 5)
    shutil.copy(clip_segment(INDOOR, 20), inputs / "cams" / "indoor" / "indoor.mp4")
    shutil.copy(clip_segment(UCF, 8), inputs / "cams" / "ucf.avi")
    shutil.copy(shared_data / "stills" / STILLS[0], inputs / STILLS[0])
    shutil.copy(shared_data / "stills" / STILLS[1], inputs / "cams" / STILLS[1])
    return inputs


@pytest.fixture(scope="module")
def batch_run(
    ray_address: str, archive: Path, work: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`batch` over the archive, lossless, segments of 0.1 s (cut at every keyframe)."""
    output = work / "batch-out"
    result = cli("batch", archive, "-o", output, "-c", work / "config.yaml", "--crf", "0",
                 "--segment-seconds", "0.1", "--workers", "2", "--address", ray_address,
                 cwd=work)
    return output, result


@pytest.fixture(scope="module")
def file_run(archive: Path, work: Path) -> Path:
    """`anonymizer file` on the same inputs, same config, lossless."""
    output = work / "file-out"
    inputs = sorted(p for p in archive.rglob("*") if p.is_file())
    result = cli("file", *inputs, "-o", output, "-c", work / "config.yaml", "--crf", "0",
                 cwd=work)
    assert result.returncode == 0, result.stderr
    return output


# --- pure parts: no Ray ----------------------------------------------------------------------


def test_split_cuts_only_at_keyframes_nothing_later_precedes():
    # decode order: the keyframe at pts 6 comes after a frame shown at 7, which a segment
    # starting at 6 would lose; the one at 9 is clean
    packets = Packets(pts=(0, 2, 1, 7, 6, 3, 4, 5, 8, 9, 10, 11),
                      keyframe=(True, False, False, False, True, False, False, False, False,
                                True, False, False),
                      time_base=Fraction(1))
    segments = split(packets, 1)
    assert [(s.start, s.end, s.first_frame, s.frames) for s in segments] == [
        (0, 9, 0, 9), (9, None, 9, 3)]
    assert [s.start for s in split(packets, 100)] == [0]  # too short to cut


def test_scan_refuses_avi_and_gives_keyframes(shared_data, clip_segment):
    assert scan(clip_segment(UCF, 8)) is None  # AVI keeps no pts: one unit, the file reader
    packets = scan(clip_segment(INDOOR, 20))
    assert packets is not None and len(packets.pts) == 20
    assert [i for i, key in enumerate(packets.keyframe) if key] == [0, 10]


def test_discover_folder_and_list(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    for name in ("a/x.mp4", "y.JPG", "notes.txt", ".hidden.mp4"):
        (tmp_path / "in" / name).write_bytes(b"")
    out = tmp_path / "in" / "out"  # inside the input folder: never an input
    out.mkdir()
    (out / "y.jpg").write_bytes(b"")
    pairs = discover(tmp_path / "in", out)
    assert [(s.relative_to(tmp_path), o.relative_to(tmp_path)) for s, o in pairs] == [
        (Path("in/a/x.mp4"), Path("in/out/a/x.mp4")), (Path("in/y.JPG"), Path("in/out/y.JPG"))]
    listing = tmp_path / "list.txt"
    listing.write_text("# archive\nin/a/x.mp4\n\nin/y.JPG\n")
    assert [o for _, o in discover(listing, tmp_path / "o")] == [
        tmp_path / "o" / "a" / "x.mp4", tmp_path / "o" / "y.JPG"]
    listing.write_text("in/notes.txt\n")
    with pytest.raises(ConfigError, match=r"list.txt:1: .*unsupported file type"):
        discover(listing, tmp_path / "o")


def test_ray_only_inside_batch_with_an_install_hint(tmp_path):
    code = (
        "import sys\n"
        "import daemon.cli, daemon.filejob, daemon.backends, daemon.batch.command\n"
        "daemon.cli._parser()\n"
        "assert 'ray' not in sys.modules, 'ray imported outside a batch run'\n"
        "sys.modules['ray'] = None  # as if the batch extra were not installed\n"
        "from daemon.batch import require_ray\n"
        "try:\n"
        "    require_ray()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, cwd=tmp_path)
    assert result.stdout.startswith("ConfigError batch needs Ray"), result.stdout
    assert "./install.sh --batch" in result.stdout


# --- on the cluster --------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_is_frame_for_frame_the_file_command(batch_run, file_run, archive):
    """Same inputs, same config: every decoded frame of every batch output equals the `file`
    output's, and the stills are byte-identical.

    Both run lossless (`--crf 0`, which VideoWriter passes to x264: 4:2:0 lossless, so a
    decoded frame is exactly the anonymized frame after the one BGR->YUV420 conversion both
    share). At a lossy crf the encoder's choices depend on the GOP context (a segment's first
    frame is a fresh IDR), so the bits, not the anonymization, would differ.
    """
    output, result = batch_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    names = visible_files(output) - {"manifest.jsonl"}
    assert names == {"kinetics.mp4", "messi5.jpg", "cams/indoor/indoor.mp4", "cams/ucf.avi",
                     "cams/aiguys_car.jpg"}  # mirroring the input tree
    assert {Path(name).name for name in names} == visible_files(file_run)
    for name in sorted(names):
        batch, single = output / name, file_run / Path(name).name
        if name.endswith(".jpg"):
            assert sha256(batch) == sha256(single), name
            continue
        b_frames, b_times, b_rate, _ = decode(batch)
        f_frames, f_times, f_rate, _ = decode(single)
        assert len(b_frames) == len(f_frames) > 0, name
        assert b_times == f_times and b_rate == f_rate, name
        for index, (a, b) in enumerate(zip(b_frames, f_frames, strict=True)):
            assert np.array_equal(a, b), f"{name}: frame {index} differs"


@pytest.mark.slow
def test_segmented_videos_rejoin_with_the_input_frames_and_timestamps(batch_run, archive):
    output, result = batch_run
    assert result.returncode == 0, result.stderr
    inputs = {r["source"]: r for r in records(output, "input")}
    for name, segments in (("kinetics.mp4", 4), ("cams/indoor/indoor.mp4", 2)):
        source, target = archive / name, output / name
        record = inputs[str(source)]
        assert record["segments"] == segments
        assert len(record["workers"]) == 2  # one video spread over both workers
        _, in_times, in_rate, in_base = decode(source)
        _, out_times, out_rate, out_base = decode(target)
        assert len(out_times) == len(in_times) == record["frames"]
        assert out_times == in_times and out_rate == in_rate and out_base == in_base
        assert packet_times(target) == packet_times(source)
        # each segment's encoded stream starts with a keyframe, at an input keyframe's pts
        with av.open(str(target)) as c:
            keys = {p.pts * p.time_base for p in c.demux(c.streams.video[0]) if p.is_keyframe}
        with av.open(str(source)) as c:
            in_keys = {p.pts * p.time_base for p in c.demux(c.streams.video[0])
                       if p.is_keyframe}
        assert keys == in_keys and len(keys) == segments
    assert not (output / ".batch").exists()  # segments removed once joined


@pytest.mark.slow
def test_manifest_records_hashes_config_counts_workers_and_summary(batch_run, archive, work):
    output, result = batch_run
    assert result.returncode == 0, result.stderr
    (run,) = records(output, "run")
    workers = records(output, "worker")
    assert run["workers"] == len(workers) == 2 and run["config_sha256"]
    assert run["settings"]["config"]["analysis"]["tiling"]["enabled"] is False
    model = Path(run["model"])
    assert run["model_sha256"] == sha256(model)
    inputs = records(output, "input")
    assert len(inputs) == 5
    for record in inputs:
        assert record["status"] == "done" and record["error"] is None
        assert record["sha256"] == sha256(Path(record["source"]))
        assert record["model_sha256"] == run["model_sha256"]
        assert record["failed_closed"] == 0 and record["frames"] > 0 and record["seconds"] > 0
        assert set(record["workers"]) <= {w["worker"] for w in workers}
    by_name = {Path(r["source"]).name: r for r in inputs}
    assert by_name["messi5.jpg"]["objects"].get("person", 0) >= 1
    assert by_name["kinetics.mp4"]["frames"] == 20 and by_name["ucf.avi"]["frames"] == 8
    summary = json.loads((output / "manifest.jsonl").read_text().splitlines()[-1])
    assert summary["type"] == "summary" and summary["inputs_done"] == 5
    assert summary["frames_total"] == sum(r["frames"] for r in inputs) == 20 + 20 + 8 + 2
    assert summary["frames_per_second"] > 0
    assert "total: 5 inputs (5 done" in result.stdout


@pytest.mark.slow
def test_rerun_skips_complete_outputs(batch_run, archive, work, ray_address):
    output, first = batch_run
    assert first.returncode == 0, first.stderr
    before = {name: (output / name).stat().st_mtime_ns for name in visible_files(output)}
    result = cli("batch", archive, "-o", output, "-c", work / "config.yaml", "--crf", "0",
                 "--segment-seconds", "0.1", "--workers", "2", "--address", ray_address,
                 cwd=work)
    assert result.returncode == 0, result.stderr
    last = runs(output)[-1]
    assert records(output, "unit", last) == [] and records(output, "worker", last) == []
    assert "5 already complete" in result.stdout
    after = {name: (output / name).stat().st_mtime_ns for name in visible_files(output)}
    del before["manifest.jsonl"], after["manifest.jsonl"]
    assert after == before


@pytest.mark.slow
def test_killed_worker_leaves_no_partial_output_and_rerun_does_only_the_missing_units(
        ray_address, shared_data, work):
    inputs, output = work / "kill-in", work / "kill-out"
    inputs.mkdir()
    reencode(shared_data / "clips" / KINETICS, inputs / "long.mp4", 60, 5)  # 12 segments
    for name in STILLS:
        shutil.copy(shared_data / "stills" / name, inputs / name)
    args = ("batch", inputs, "-o", output, "-c", work / "config.yaml", "--segment-seconds",
            "0.1", "--workers", "2", "--address", ray_address, "--no-progress")
    process = subprocess.Popen([sys.executable, "-m", "daemon", *map(str, args)], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (output / "manifest.jsonl").exists() or not records(output, "unit"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no unit finished"
            time.sleep(0.05)
        victim = records(output, "worker")[0]
        os.kill(victim["pid"], signal.SIGKILL)  # the worker actor's process, mid-run
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    (first,) = runs(output)
    failed = {r["key"] for r in records(output, "unit", first) if r["status"] == "failed"}
    assert failed, "the killed worker's unit is recorded as failed"
    assert all("died" in r["error"] for r in records(output, "unit", first)
               if r["status"] == "failed")
    # nothing half-written: no partial file anywhere, the video only if all its units made it
    assert not [p for p in output.rglob("*") if ".partial" in p.name]
    assert not (output / "long.mp4").exists()
    done = {Path(r["output"]).name for r in records(output, "unit", first)
            if r["status"] == "done"}
    assert visible_files(output) - {"manifest.jsonl"} == done & set(STILLS)
    rerun = subprocess.run([sys.executable, "-m", "daemon", *map(str, args)], cwd=work,
                           capture_output=True, text=True, timeout=240, check=False)
    assert rerun.returncode == 0, rerun.stderr
    second = runs(output)[-1]
    redone = {r["key"] for r in records(output, "unit", second)}
    assert redone == failed
    _, times, _, _ = decode(output / "long.mp4")
    assert times == decode(inputs / "long.mp4")[1]
    assert not [p for p in output.rglob("*") if ".partial" in p.name]


@pytest.mark.slow
def test_corrupt_input_fails_alone_and_the_exit_status_says_so(shared_data, work, clip_segment):
    """Without --address: the command starts (and stops) its own local cluster."""
    inputs, output = work / "corrupt-in", work / "corrupt-out"
    inputs.mkdir()
    shutil.copy(shared_data / "stills" / STILLS[0], inputs / STILLS[0])
    shutil.copy(clip_segment(INDOOR, 10), inputs / "good.mp4")
    (inputs / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    good = (shared_data / "clips" / KINETICS).read_bytes()
    (inputs / "truncated.mp4").write_bytes(good[: len(good) // 3])
    result = cli("batch", inputs, "-o", output, "-c", work / "config.yaml", cwd=work)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    status = {Path(r["source"]).name: r for r in records(output, "input")}
    assert status["corrupt.mp4"]["status"] == status["truncated.mp4"]["status"] == "failed"
    assert status["corrupt.mp4"]["error"] and status["truncated.mp4"]["error"]
    assert status[STILLS[0]]["status"] == status["good.mp4"]["status"] == "done"
    assert visible_files(output) == {STILLS[0], "good.mp4", "manifest.jsonl"}
    assert "corrupt.mp4: FAILED" in result.stdout and "2 failed" in result.stdout
    (inputs / "corrupt.mp4").unlink()
    (inputs / "truncated.mp4").unlink()
    result = cli("batch", inputs, "-o", output, "-c", work / "config.yaml", cwd=work)
    assert result.returncode == 0, result.stderr  # nothing failed (the rest already complete)
