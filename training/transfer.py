"""Start our DeepLabv3+ from the reference VOC model's weights (`init: reference`).

The reference (`daemon/engines/deeplabv3_mnv2_voc_257.onnx`, Google's TF-Lite DeepLabv3, Apache-2.0)
is a MobileNetV2 at depth multiplier 0.5 with an ASPP of a 1x1 branch and image pooling,
trained on PASCAL VOC: it already finds people (val person IoU 0.80). Its ONNX holds every
convolution with its batch norm folded in, in graph order, so they map one to one onto
`MobileNetV2Backbone("mnv2_050")` and onto our ASPP's 1x1 branch, image pooling and projection:

- each conv gets the folded weight; its BatchNorm becomes the identity plus the folded bias
  (running mean 0, variance 1 - eps, weight 1), then `calibrate_norms` gives it the statistics
  of real data without changing its function, so it trains as a normal batch norm;
- the reference normalises pixels to [-1, 1], ours with ImageNet's mean/std: the first conv
  absorbs the difference (exact except in the 1-pixel zero padding of the border);
- our projection's columns of the atrous branches start at zero, so at step 0 our ASPP
  computes exactly the reference's; the decoder and classifier start from scratch.

`reference_deeplabv3` rebuilds the whole reference in PyTorch (output stride 8, its logits)
so a test can check the mapping against ONNX Runtime.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.data import MEAN_RGB, REPO, STD_RGB
from training.model import ASPP, DeepLabV3Plus, MobileNetV2Backbone

log = logging.getLogger(__name__)

REFERENCE = REPO / "daemon" / "engines" / "deeplabv3_mnv2_voc_257.onnx"
REFERENCE_WIDTH = "mnv2_050"
REFERENCE_CLASSES = 21
REFERENCE_PERSON = 15
PLATE_START_BIAS = -5.0  # the new class starts unlikely everywhere
_PIXEL_CENTRE, _PIXEL_SCALE = 127.5, 127.5  # the reference's x = (pixel - 127.5) / 127.5


def _reference_convs(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(node name, weight, bias) of every Conv in an ONNX (BNs folded in), in graph order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight, bias = (tensors[name] for name in node.input[1:3])
            convs.append((node.name, weight.astype(np.float32), bias.astype(np.float32)))
    return convs


def _backbone_pairs(backbone: MobileNetV2Backbone) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every (conv, BN) of the backbone in forward order."""
    modules = list(backbone.modules())
    return [(conv, norm) for conv, norm in itertools.pairwise(modules)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)]


def _load_folded(conv: nn.Conv2d, norm: nn.BatchNorm2d, weight: np.ndarray, bias: np.ndarray,
                 name: str) -> None:
    if tuple(conv.weight.shape) != weight.shape:
        raise ValueError(f"reference conv {name} is {weight.shape}, ours "
                         f"{tuple(conv.weight.shape)}: not the same layout")
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        norm.weight.fill_(1.0)
        norm.bias.copy_(torch.from_numpy(bias))
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)  # (x - 0) / sqrt(1 - eps + eps) = x


def _absorb_normalisation(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First conv for ImageNet-normalised input computing what it did on [-1, 1] input."""
    mean, std = np.asarray(MEAN_RGB, np.float32), np.asarray(STD_RGB, np.float32)
    scale = std / _PIXEL_SCALE  # x_ref = x * scale + shift, per RGB channel
    shift = (mean - _PIXEL_CENTRE) / _PIXEL_SCALE
    new_weight = weight * scale[None, :, None, None]
    new_bias = bias + (weight * shift[None, :, None, None]).sum(axis=(1, 2, 3))
    return new_weight.astype(np.float32), new_bias.astype(np.float32)


def _load_backbone_and_aspp(backbone: MobileNetV2Backbone, aspp: ASPP, path: Path,
                            imagenet_input: bool = True
                            ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Load the reference's backbone and ASPP; returns the convs left (the logits layer).

    `imagenet_input`: the first conv takes ImageNet-normalised pixels (ours), else [-1, 1].
    """
    convs = _reference_convs(path)
    pairs = _backbone_pairs(backbone)
    if len(convs) != len(pairs) + 4:
        raise ValueError(f"{path}: {len(convs)} convolutions, expected {len(pairs) + 4} "
                         "(backbone, image pooling, 1x1 branch, projection, logits)")
    for index, ((conv, norm), (name, weight, bias)) in enumerate(zip(pairs, convs, strict=False)):
        if index == 0 and imagenet_input:
            weight, bias = _absorb_normalisation(weight, bias)
        _load_folded(conv, norm, weight, bias, name)
    pool, branch, project, logits = convs[len(pairs):]
    _load_folded(aspp.pool[0], aspp.pool[1], *pool[1:], pool[0])
    _load_folded(aspp.branches[0][0], aspp.branches[0][1], *branch[1:], branch[0])
    channels = branch[1].shape[0]
    ours = aspp.project[0][0].weight
    if ours.shape[0] != channels or project[1].shape != (channels, 2 * channels, 1, 1):
        raise ValueError(f"{path}: ASPP of {channels} channels, ours has {ours.shape[0]}")
    # reference concat: [image pooling, 1x1 branch]; ours: [1x1, atrous..., image pooling]
    weight = np.zeros(tuple(ours.shape), np.float32)
    weight[:, :channels] = project[1][:, channels:]
    weight[:, -channels:] = project[1][:, :channels]
    _load_folded(aspp.project[0][0], aspp.project[0][1], weight, project[2], project[0])
    return [logits]


def reference_modules(model: DeepLabV3Plus) -> list[nn.Module]:
    """The modules that `load_reference` fills: backbone, ASPP's 1x1 branch, image pooling and
    projection, encoder classifier (the decoder starts from scratch)."""
    aspp = model.aspp
    return [model.backbone, aspp.branches[0], aspp.pool, aspp.project, model.encoder_classifier]


def folded_norms(model: DeepLabV3Plus) -> list[nn.BatchNorm2d]:
    """The batch norms that `load_reference` fills with folded reference weights."""
    return [m for module in reference_modules(model) for m in module.modules()
            if isinstance(m, nn.BatchNorm2d)]


def all_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every batch norm of `model` (all folded after `load_exported`)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _execution_order(model: nn.Module) -> list[nn.Conv2d]:
    """The model's convolutions in the order a forward pass runs them (the ONNX graph order)."""
    order: list[nn.Conv2d] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [conv.register_forward_pre_hook(lambda module, _: order.append(module))
             for conv in convs]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 65, 65))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return order


def load_exported(model: DeepLabV3Plus, path: Path) -> None:
    """Initialise `model` from an ONNX that `training.export` wrote of the same architecture.

    The exporter folds every batch norm into its convolution, so each conv with a BN gets the
    folded weight and its BN becomes the identity plus the bias (as for the reference; give
    the BNs statistics with `calibrate_norms(model, images, all_norms(model))`); the
    classifiers (convs with their own bias) are copied. Weights do not depend on the output
    stride, so a model exported at stride 8 continues training at 16.
    """
    convs = _reference_convs(path)
    order = _execution_order(model)
    if len(convs) != len(order):
        raise ValueError(f"{path}: {len(convs)} convolutions, this architecture has "
                         f"{len(order)} (a different model or an older export)")
    norm_after = {id(conv): norm for conv, norm in itertools.pairwise(model.modules())
                  if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)}
    for conv, (name, weight, bias) in zip(order, convs, strict=True):
        norm = norm_after.get(id(conv))
        if norm is not None:
            _load_folded(conv, norm, weight, bias, name)
            continue
        if tuple(conv.weight.shape) != weight.shape or conv.bias is None:
            raise ValueError(f"{path}: conv {name} is {weight.shape}, ours "
                             f"{tuple(conv.weight.shape)}: not this architecture")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.from_numpy(bias))
    log.info("all %d convolutions initialised from the exported model %s", len(order), path)


@torch.no_grad()
def calibrate_norms(model: DeepLabV3Plus, images: torch.Tensor,
                    norms: list[nn.BatchNorm2d] | None = None) -> None:
    """Give the folded batch norms real statistics without changing what the model computes.

    A folded BN is the identity plus a bias, so in training mode (batch statistics) it would
    normalise activations the reference never normalised, and SGD on a net without working
    normalisation diverged here within 30 steps. For each folded BN this measures the mean m and
    variance v of its input on `images` (the model in eval mode computes the reference exactly),
    then sets running stats (m, v), weight sqrt(v + eps) and bias m + b: in eval mode the layer
    still computes x + b exactly; in training mode the batch statistics of a similar batch
    give about the same, and the gradients are those of a normalised network again.
    """
    norms = folded_norms(model) if norms is None else norms
    stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].transpose(0, 1).flatten(1)
        stats[id(module)] = (x.mean(dim=1), x.var(dim=1, unbiased=False))

    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for norm in norms:
        mean, var = stats[id(norm)]
        norm.bias.add_(mean)
        norm.weight.copy_(torch.sqrt(var + norm.eps))
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)


def load_reference(model: DeepLabV3Plus, path: Path = REFERENCE) -> None:
    """Initialise `model` (backbone 'mnv2_050', `encoder_logits`) from the reference ONNX.

    The encoder classifier gets the reference's background and person rows (license_plate:
    zero weights, a low bias) and the decoder's classifier starts at zero, so the untrained
    model labels people as the reference does at this output stride.
    """
    if model.encoder_classifier is None:
        raise ValueError("init 'reference' needs a model built with encoder_logits")
    (_, weight, bias), = _load_backbone_and_aspp(model.backbone, model.aspp, path)
    rows = [0, REFERENCE_PERSON]  # background, person; CLASSES order
    with torch.no_grad():
        model.encoder_classifier.weight.zero_()
        model.encoder_classifier.weight[: len(rows)] = torch.from_numpy(weight[rows])
        model.encoder_classifier.bias.copy_(torch.tensor([*bias[rows], PLATE_START_BIAS]))
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    log.info("backbone, ASPP and encoder classifier initialised from the reference model %s",
             path)


class ReferenceDeepLabV3(nn.Module):
    """The reference model rebuilt in PyTorch: backbone (output stride 8, its own), ASPP, logits.

    `imagenet_input=False` keeps the reference's own [-1, 1] input (bit-for-bit its function).
    """

    def __init__(self, path: Path = REFERENCE, imagenet_input: bool = True,
                 output_stride: int = 8) -> None:
        super().__init__()
        self.backbone = MobileNetV2Backbone(REFERENCE_WIDTH, output_stride)
        self.aspp = ASPP(self.backbone.out_channels, 256)
        self.logits = nn.Conv2d(256, REFERENCE_CLASSES, 1)
        (_, weight, bias), = _load_backbone_and_aspp(self.backbone, self.aspp, path,
                                                        imagenet_input)
        with torch.no_grad():
            self.logits.weight.copy_(torch.from_numpy(weight))
            self.logits.bias.copy_(torch.from_numpy(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, high = self.backbone(x)
        return self.logits(self.aspp(high))
