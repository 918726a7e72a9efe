"""The two settings that decide how many faces our masks miss, swept on the stills and clip
frames: `analysis.tiling` (small, distant people: off, or on as configured, zoom auto) and
`blur.mask_dilation` (heads that a coarse mask cuts through, leaving half a face sharp). Every
face detector is a judge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from evaluation.data import Sample
from evaluation.privacy import FaceScore, Findings
from evaluation.scales import Attack, remember
from evaluation.systems import Ours

DILATIONS = (0, 3, 8, 16)


@dataclass(frozen=True)
class SweepRow:
    tiling: bool  # on: the default multi-scale plan (zoom auto); off: one full-frame pass
    dilation: int
    faces: dict[str, FaceScore]  # face detector label -> its score, the primary first
    blurred: float  # share of all pixels our blur owned


def sweep(systems: list[Ours], samples: list[Sample], attack: Attack, memo: dict
          ) -> list[SweepRow]:
    """Every dilation for each of `systems` (the same model, tiling off and on); each
    system's blur settings are restored afterwards."""
    rows = []
    images = {s.name: s.load() for s in samples}
    for ours in systems:
        configured = ours.blur
        labels = {s.name: ours.labels(images[s.name])
                  for s in tqdm(samples, desc="sweep", unit="image")}
        for dilation in DILATIONS:
            blur = ours.blur.model_copy(update={"mask_dilation": dilation})
            ours.use_blur(blur)
            faces: dict[str, FaceScore] = {}
            owned = total = 0
            for sample in samples:
                image = images[sample.name]
                original: Findings = remember(memo, ("original", sample.name, 1.0),
                                              lambda i=image: attack(i))
                result = ours.anonymize(image, labels[sample.name])
                output = attack(result.image).face_sets()
                for detector, before in original.face_sets().items():
                    faces.setdefault(detector, FaceScore()).add(
                        sample.name, before, output[detector], result.mask)
                owned += int(np.count_nonzero(result.mask))
                total += result.mask.size
            rows.append(SweepRow(ours.tiling, dilation, faces, owned / total))
        ours.use_blur(configured)
    return rows
