"""Segmentation quality by object size (the multi-scale claim): person and plate recall for
small / medium / large ground-truth objects on the val splits, for one full-frame pass and for
the default multi-scale plan (full frame + tiles, zoom auto)."""

from __future__ import annotations

from tqdm import tqdm

from evaluation.data import SegPair, load_seg
from evaluation.systems import Ours
from training.metrics import SIZE_BINS, Tally

IGNORE = 255
TRUTH_ID = {"person": 1, "license_plate": 2}  # ids in shared/data/seg masks
CLASS_OF_SET = {"person": "person", "plate": "license_plate"}  # seg set -> the class it labels


def recall_by_size(ours: Ours, pairs: list[SegPair]) -> dict[str, dict]:
    """{class: {size: (found, objects, pixel recall)}, class/iou: ...} for the classes the
    model knows, over the val pairs of their set, as `ours` analyzes them."""
    tallies: dict[str, Tally] = {}
    for pair in tqdm(pairs, desc=f"sizes ({ours.name})", unit="image"):
        name = CLASS_OF_SET[pair.kind]
        if name not in ours.classes:
            continue
        image, mask = load_seg(pair)
        pred = ours.labels(image) == ours.manifest.classes[name]
        valid = mask != IGNORE
        truth = mask == TRUTH_ID[name]
        tally = tallies.setdefault(name, Tally())
        tally.add_iou(name, pred, truth, valid)
        tally.add_objects(pred & valid, truth)
    out: dict[str, dict] = {}
    for name, tally in tallies.items():
        metrics = tally.metrics()
        out[name] = {size: (metrics[f"found/{size}"], int(metrics[f"objects/{size}"]),
                            metrics[f"pixel_recall/{size}"]) for size, _, _ in SIZE_BINS}
        out[name]["iou"] = metrics[f"iou/{name}"]
    return out
