"""Media layer: real clips and stills through the readers and writers, and every bad input."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media_helpers import decode_all, psnr, safe_frame

from daemon.errors import MediaError
from daemon.media.atomic import partial_path
from daemon.media.image import read_image, write_image
from daemon.media.labels import LabelFolderWriter, write_label_map
from daemon.media.video_reader import VideoReader
from daemon.media.video_writer import VideoWriter

KINETICS = "kinetics_style_armwrestling_340x256.mp4"  # time base 1/14336, 28 fps
CAR = "car_plate_approach_1280x720.mp4"  # H.264 + AAC
UCF = "ucf101_style_applyeyemakeup_320x240.avi"  # MPEG-4 part 2 with B-frames + MP3


def probe(path: Path) -> dict:
    """What PyAV itself (not our reader) sees in a file."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [f.pts * f.time_base for f in c.decode(v)]
    with av.open(str(path)) as c:
        audio = [(s.codec_context.name, s.index) for s in c.streams.audio]
        v = c.streams.video[0]
        return {
            "times": times,
            "rate": v.average_rate,
            "size": (v.codec_context.width, v.codec_context.height),
            "codec": v.codec_context.name,
            "audio": audio,
        }




def copy_video(src: Path, dst: Path, *, keep_audio: bool = False, **kwargs: object) -> None:
    with VideoReader(src, audio=keep_audio) as reader, VideoWriter(
        dst, reader.info, preset="veryfast", audio=reader.audio_stream, **kwargs
    ) as writer:
        sink = writer.write_audio if reader.audio_stream is not None else None
        for frame in reader.frames(sink):
            writer.write(safe_frame(frame.image), frame.pts)


def no_leftovers(path: Path) -> None:
    assert not path.exists(), f"{path} was left behind"
    assert not partial_path(path).exists(), f"{partial_path(path)} was left behind"
    assert [p.name for p in path.parent.iterdir() if ".partial" in p.name] == []


# --- video round trips -------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".mp4", ".mov"])
def test_video_round_trip_keeps_frames_rate_and_timestamps(clip_segment, tmp_path, ext):
    src = clip_segment(KINETICS, 30)
    dst = tmp_path / f"out{ext}"
    copy_video(src, dst)
    before, after = probe(src), probe(dst)
    assert len(before["times"]) == 30
    assert after["times"] == before["times"]  # same count, same pts (exact fractions)
    assert after["rate"] == before["rate"] == 28
    assert after["codec"] == "h264" and after["size"] == (340, 256)
    # crf 18: the picture survives (a wrong colour conversion or frame shift drops this to < 20)
    quality = [psnr(a, b) for a, b in zip(decode_all(src), decode_all(dst), strict=True)]
    assert min(quality) > 35, quality


def test_variable_frame_rate_is_preserved(shared_data, tmp_path):
    # a VFR source written with PyAV directly: gaps of 1, 2 and 5 frame times
    src = tmp_path / "vfr.mkv"
    times = [0, 40, 80, 200, 240, 440, 480, 520]  # ms
    still = cv2.imread(str(shared_data / "stills" / "messi5.jpg"))[:240, :320]
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.roll(still, 8 * i, axis=1), format="bgr24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    dst = tmp_path / "vfr_out.mp4"
    copy_video(src, dst)
    assert probe(dst)["times"] == [Fraction(t, 1000) for t in times]


def test_avi_frames_are_numbered_in_display_order(shared_data, tmp_path):
    # FFmpeg's AVI pts come out shuffled around B-frames; the reader numbers frames instead
    src = shared_data / "clips" / UCF
    with VideoReader(src) as reader:
        assert reader.info.average_rate == 25
        pts = [f.pts for f in reader.frames()]
    assert pts == list(range(164))
    for ext in (".mp4", ".avi"):
        dst = tmp_path / f"out{ext}"
        copy_video(src, dst)
        with VideoReader(dst) as again:
            assert [f.pts * f.time_base for f in again.frames()] == [
                Fraction(i, 25) for i in range(164)
            ]
            assert again.info.average_rate == 25


def test_odd_frame_size_is_padded_to_even(clip_segment, tmp_path):
    src = clip_segment(KINETICS, 5)
    with VideoReader(src) as reader:
        frames = [f.image[:255, :339].copy() for f in reader.frames()]  # 339 x 255
        info = reader.info
    dst = tmp_path / "odd.mp4"
    with VideoWriter(dst, replace(info, width=339, height=255), preset="veryfast") as writer:
        for i, frame in enumerate(frames):
            writer.write(safe_frame(frame), i * 512)
    out = decode_all(dst)
    assert out[0].shape == (256, 340, 3)
    assert all(psnr(a, b[:255, :339]) > 35 for a, b in zip(frames, out, strict=True))


# --- audio -------------------------------------------------------------------------------


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def test_audio_is_dropped_by_default(clip_segment, tmp_path):
    src = clip_segment(CAR, 15, audio=True)
    assert probe(src)["audio"], "the test clip should have audio"
    dst = tmp_path / "out.mp4"
    copy_video(src, dst)
    assert probe(dst)["audio"] == []
    with av.open(str(dst)) as c:
        assert len(c.streams) == 1


def test_keep_audio_copies_aac_packets_unchanged(clip_segment, tmp_path):
    src = clip_segment(CAR, 15, audio=True)
    dst = tmp_path / "out.mkv"
    copy_video(src, dst, keep_audio=True)
    assert [name for name, _ in probe(dst)["audio"]] == ["aac"]
    assert audio_packets(dst) == audio_packets(src)
    assert len(probe(dst)["times"]) == 15


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_keep_audio_copies_mp3_from_avi(shared_data, tmp_path, ext):
    src = shared_data / "clips" / UCF
    dst = tmp_path / f"out{ext}"
    copy_video(src, dst, keep_audio=True)
    assert [name for name, _ in probe(dst)["audio"]] == ["mp3float"]
    assert audio_packets(dst) == audio_packets(src)
    with av.open(str(dst)) as c:  # and it decodes: 251 MP3 frames of 1152 samples
        assert sum(f.samples for f in c.decode(audio=0)) == 251 * 1152


def test_keep_audio_transcodes_to_aac_when_the_container_cannot_hold_the_codec(
    clip_segment, tmp_path
):
    # Opus cannot go into AVI: the writer transcodes to AAC instead of failing
    video = clip_segment(KINETICS, 10)
    src = tmp_path / "opus.mkv"
    with av.open(str(video)) as v, av.open(str(src), "w") as c:
        vs = c.add_stream_from_template(v.streams.video[0])
        a = c.add_stream("libopus", rate=48000, layout="stereo")
        for packet in v.demux(video=0):
            if packet.size:
                packet.stream = vs
                c.mux(packet)
        tone = np.sin(np.arange(48000 // 2) * 2 * np.pi * 440 / 48000).astype(np.float32)
        for start in range(0, len(tone), 960):
            chunk = np.tile(tone[start : start + 960], 2)[None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            c.mux(a.encode(frame))
        c.mux(a.encode(None))
    dst = tmp_path / "out.avi"
    copy_video(src, dst, keep_audio=True)
    assert [name for name, _ in probe(dst)["audio"]] == ["aac"]
    with av.open(str(dst)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples - 24000) < 2048 + 1024  # encoder priming and padding aside, all of it


# --- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".bmp"])
def test_lossless_image_round_trip(shared_data, tmp_path, ext):
    image = read_image(shared_data / "stills" / "messi5.jpg")
    assert image.shape == (342, 548, 3) and image.dtype == np.uint8
    write_image(tmp_path / f"a{ext}", safe_frame(image))
    np.testing.assert_array_equal(read_image(tmp_path / f"a{ext}"), image)
    no_leftovers(tmp_path / f"nothing{ext}")


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
def test_jpeg_round_trip(shared_data, tmp_path, ext):
    image = read_image(shared_data / "stills" / "astronaut.png")
    write_image(tmp_path / f"a{ext}", safe_frame(image))
    assert (tmp_path / f"a{ext}").read_bytes()[:2] == b"\xff\xd8"
    assert psnr(read_image(tmp_path / f"a{ext}"), image) > 38


def test_label_maps_round_trip(tmp_path):
    labels = np.random.default_rng(1).integers(0, 21, (48, 64), dtype=np.uint8)
    write_label_map(tmp_path / "a.labels.png", labels)
    np.testing.assert_array_equal(
        cv2.imread(str(tmp_path / "a.labels.png"), cv2.IMREAD_UNCHANGED), labels
    )
    with LabelFolderWriter(tmp_path / "v.labels") as folder:
        for i in range(3):
            folder.write(i, labels + i)
    names = sorted(p.name for p in (tmp_path / "v.labels").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png"]
    np.testing.assert_array_equal(
        cv2.imread(str(tmp_path / "v.labels" / "000002.png"), cv2.IMREAD_UNCHANGED), labels + 2
    )


# --- bad inputs ----------------------------------------------------------------------------


def cut_in_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=48000, layout="mono")
        for start in range(0, 48000, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 48000, start
            c.mux(a.encode(frame))
        c.mux(a.encode(None))
    return path


def mkv_half(src: Path, dst: Path) -> Path:
    """A Matroska file (no frame count in it) cut in half: FFmpeg ends it quietly."""
    whole = dst.with_name("whole.mkv")
    with av.open(str(src)) as i, av.open(str(whole), "w") as o:
        stream = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(video=0):
            if packet.size:
                packet.stream = stream
                o.mux(packet)
    return cut_in_half(whole, dst)


BAD_VIDEOS = {
    "missing": (lambda d, tmp: tmp / "missing.mp4", "no such file"),
    "text named .mp4": (
        lambda d, tmp: (tmp / "notes.mp4", (tmp / "notes.mp4").write_text("not a video\n"))[0],
        "not a readable video",
    ),
    "directory": (lambda d, tmp: (tmp / "dir.mp4", (tmp / "dir.mp4").mkdir())[0], "directory"),
    "no video stream": (lambda d, tmp: audio_only(tmp / "sound.mp4"), "no video stream"),
    # moov atom at the end: the first half has no index
    "truncated mp4 (index at end)": (
        lambda d, tmp: cut_in_half(d / "clips" / CAR, tmp / "half_car.mp4"),
        "not a readable video",
    ),
    # index first: the first half decodes, then the data stops
    "truncated mp4 (index first)": (
        lambda d, tmp: cut_in_half(d / "clips" / "vtest_pedestrians_768x576.mp4", tmp / "h.mp4"),
        "truncated",
    ),
    "truncated avi": (lambda d, tmp: cut_in_half(d / "clips" / UCF, tmp / "h.avi"), "truncated"),
    "truncated mkv": (
        lambda d, tmp: mkv_half(d / "clips" / KINETICS, tmp / "h.mkv"), "truncated video"
    ),
}


@pytest.mark.parametrize("case", list(BAD_VIDEOS))
def test_bad_video_is_one_media_error_and_leaves_no_output(shared_data, tmp_path, case):
    make, reason = BAD_VIDEOS[case]
    src = make(shared_data, tmp_path)
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    with pytest.raises(MediaError) as err:
        copy_video(src, out, keep_audio=True)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(src)), message
    assert reason in message, message
    no_leftovers(out)


def test_writer_failure_midway_leaves_no_output(clip_segment, tmp_path):
    src = clip_segment(KINETICS, 10)
    out = tmp_path / "out.mp4"
    with (
        pytest.raises(ValueError, match="expected a 256 x 340 x 3"),
        VideoReader(src) as reader,
        VideoWriter(out, reader.info) as writer,
    ):
        for frame in reader.frames():
            image = frame.image if frame.index < 5 else frame.image[:100]
            writer.write(safe_frame(image), frame.pts)
    no_leftovers(out)


def test_label_folder_is_removed_on_failure(tmp_path):
    with pytest.raises(RuntimeError), LabelFolderWriter(tmp_path / "v.labels") as folder:
        folder.write(0, np.zeros((4, 4), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_bad_images_are_media_errors(shared_data, tmp_path):
    jpeg = (shared_data / "stills" / "messi5.jpg").read_bytes()
    png = (shared_data / "stills" / "astronaut.png").read_bytes()
    cases = {
        tmp_path / "missing.png": "no such file",
        tmp_path / "text.jpg": "not a readable image",
        tmp_path / "half.jpg": "truncated JPEG",
        tmp_path / "half.png": "not a readable image",
    }
    (tmp_path / "text.jpg").write_text("hello\n")
    (tmp_path / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])
    for path, reason in cases.items():
        with pytest.raises(MediaError) as err:
            read_image(path)
        assert str(err.value).startswith(str(path)) and reason in str(err.value), err.value


def test_every_shared_still_reads(shared_data):
    # the truncated-JPEG check must not reject real files (EXIF thumbnails carry their own EOI)
    for path in sorted((shared_data / "stills").iterdir()):
        image = read_image(path)
        assert image.ndim == 3 and image.shape[2] == 3, path
