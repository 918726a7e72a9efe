"""Weight-space blend of two exports of one model (`python -m training.soup`).

`python -m training.soup BASE.onnx TUNED.onnx --weight W --name NAME [--out DIR]` writes
`DIR/NAME.onnx` whose every float initializer is (1 - W) x BASE + W x TUNED, and its manifest.
A fine-tuned model and the model it was fine-tuned from sit in one basin of the loss, so the
blend keeps most of what the fine-tuning gained while giving back less of what it lost
(WiSE-FT, Wortsman et al. 2022). Both files must be exports of the same architecture (same
nodes, same initializer names and shapes): training.export folds the batch norms into the
convolutions, so the blend is a plain network of blended convolutions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.data import INPUT_SIZE
from training.export import card_from_files, load_checkpoint, write_manifest

if TYPE_CHECKING:
    from onnx import GraphProto

log = logging.getLogger(__name__)


def _structure(graph: GraphProto) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return [(node.op_type, tuple(node.input), tuple(node.output)) for node in graph.node]


def blend(base: Path, tuned: Path, weight: float, out: Path) -> tuple[int, bool]:
    """Write `out`: `base` with each float initializer (1 - weight) x base + weight x tuned.

    Returns the input side and whether it is dynamic (for the manifest).
    """
    import onnx
    from onnx import numpy_helper

    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], not {weight}")
    first, second = onnx.load(str(base)), onnx.load(str(tuned))
    if _structure(first.graph) != _structure(second.graph):
        raise ValueError(f"{base} and {tuned} are not exports of the same architecture "
                         "(their graphs differ)")
    others = {init.name: init for init in second.graph.initializer}
    for init in first.graph.initializer:
        other = others.get(init.name)
        a = numpy_helper.to_array(init)
        b = None if other is None else numpy_helper.to_array(other)
        if b is None or a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"initializer {init.name!r} differs in name, shape or type "
                             f"between {base} and {tuned}")
        if np.issubdtype(a.dtype, np.floating):
            mixed = ((1.0 - weight) * a.astype(np.float64) + weight * b.astype(np.float64))
            init.CopyFrom(numpy_helper.from_array(mixed.astype(a.dtype), init.name))
        elif not np.array_equal(a, b):
            raise ValueError(f"non-float initializer {init.name!r} differs between {base} "
                             f"and {tuned}")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(first, str(out))
    onnx.checker.check_model(str(out))
    height = first.graph.input[0].type.tensor_type.shape.dim[2]
    return (height.dim_value or INPUT_SIZE), bool(height.dim_param)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the model that was fine-tuned (ONNX)")
    parser.add_argument("tuned", type=Path, help="its fine-tuned export (ONNX)")
    parser.add_argument("--weight", type=float, required=True,
                        help="share of the fine-tuned weights, 0..1")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--card", action="store_true",
                        help="also write <out>/<name>.md (needs --checkpoint)")
    parser.add_argument("--checkpoint", type=Path,
                        help="the fine-tuned side's training checkpoint (settings for the card)")
    parser.add_argument("--evaluation", type=Path, help="Markdown table from training.evaluate")
    parser.add_argument("--notes", type=Path, help="Markdown appended to the card")
    args = parser.parse_args(argv)
    if args.card and not args.checkpoint:
        parser.error("--card needs --checkpoint")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out / f"{args.name}.onnx"
    size, dynamic = blend(args.base, args.tuned, args.weight, out)
    log.info("wrote %s and %s", out, write_manifest(out, args.name, size, dynamic))
    if args.card:
        model, state = load_checkpoint(args.checkpoint)
        label = (f"A weight-space blend, {1 - args.weight:g} x `{args.base.name}` + "
                 f"{args.weight:g} x its fine-tuned export (`python -m training.soup`); "
                 "settings of the fine-tuned side's last run (from its checkpoint)")
        log.info("wrote %s", card_from_files(out, args.name, state, args.evaluation, args.notes,
                                             size, model.backbone.output_stride, label))


if __name__ == "__main__":
    main()
