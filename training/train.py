"""Train the 3-class DeepLabv3+ (`python -m training.train`): SGD, poly LR, checkpoint/resume.

Each epoch logs the mean loss and the val IoU per class and per source to `<out>/log.csv` (and
the log); `<out>/last.pt` is written every `--checkpoint-every` steps and at each epoch's end,
`<out>/best.pt` whenever the val score (mean of overall person IoU and plate IoU) improves.
`--resume` continues from `<out>/last.pt` at the exact step it stopped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from training.data import (
    CLASSES,
    DEFAULT_CACHE,
    IGNORE,
    INPUT_SIZE,
    REPO,
    AugmentConfig,
    Sample,
    SegDataset,
    allowed_classes,
    load_pair,
    partial_label_loss,
    read_split,
    small_object_weight,
    to_tensor,
)
from training.model import DeepLabV3Plus, load_imagenet_backbone, model_from_config
from training.transfer import (
    REFERENCE_WIDTH,
    all_norms,
    calibrate_norms,
    folded_norms,
    load_exported,
    load_reference,
    reference_modules,
)

INITS = ("imagenet", "reference", "exported")
CALIBRATION_IMAGES = 32  # training crops that give the folded BNs their statistics

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in each checkpoint."""

    data: str = str(DEFAULT_CACHE)
    epochs: int = 6
    steps: int = 0  # total steps of the poly schedule; 0: epochs x steps per epoch
    batch: int = 8
    crop: int = 320
    lr: float = 0.007
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 4e-5
    plate_repeat: int = 2  # plates are 557 images against 1,238 person images
    plate_weight: float = 1.0  # loss weight of labelled plate pixels
    small_object_repeat: int = 1  # CamVid (small distant people) images per epoch: N x
    # random scale of CamVid crops (the daemon's view is 1.0: 480 x 360 stretched to 513 x 513)
    small_object_scale_min: float = 1.0
    small_object_scale_max: float = 2.0
    # person pixels of blobs under small_person_area (crop pixels) weigh up to this much more
    # (sqrt of the area ratio; 1: plain pixel mean)
    small_person_weight: float = 1.0
    small_person_area: int = 4096
    aspp_channels: int = 256
    decoder_channels: int = 128
    backbone: str = "mnv2"  # "mnv2" (torchvision, width 1.0) or "mnv2_050" (the reference's)
    output_stride: int = 16  # 8: the stages past stride 8 dilated (slower, finer)
    # "imagenet" (backbone), "reference" (backbone + ASPP, mnv2_050) or "exported" (every
    # layer from `init_from`, an ONNX that training.export wrote of this architecture)
    init: str = "imagenet"
    init_from: str = ""
    encoder_logits: bool = False  # DeepLabv3's classifier added to the decoder's (reference)
    pretrained_lr: float = 1.0  # learning-rate factor of the initialised (pretrained) layers
    warmup_steps: int = 0  # the pretrained layers' factor ramps up linearly over these steps
    seed: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def build_model(config: TrainConfig, pretrained: bool = True) -> DeepLabV3Plus:
    """The model of `config`, initialised as `config.init` says unless `pretrained` is off."""
    if config.init not in INITS:
        raise ValueError(f"init must be one of {INITS}, not {config.init!r}")
    if config.init == "reference" and (config.backbone != REFERENCE_WIDTH
                                       or not config.encoder_logits):
        raise ValueError(f"init 'reference' needs backbone {REFERENCE_WIDTH!r} and "
                         "encoder_logits")
    if config.init == "exported" and not config.init_from:
        raise ValueError("init 'exported' needs init_from: the ONNX to start from")
    model = model_from_config(asdict(config))
    if pretrained and config.init == "imagenet":
        load_imagenet_backbone(model)
    elif pretrained and config.init == "reference":
        load_reference(model)
    elif pretrained:
        load_exported(model, Path(config.init_from))
    return model


def folded_by_init(model: DeepLabV3Plus, config: TrainConfig) -> list[torch.nn.BatchNorm2d]:
    """The batch norms that `config.init` loads folded (to calibrate before training)."""
    if config.init == "reference":
        return folded_norms(model)
    if config.init == "exported":
        return all_norms(model)
    return []


def pretrained_parameters(model: DeepLabV3Plus, config: TrainConfig) -> set[int]:
    """ids of the parameters that `config.init` fills (the rest start from scratch)."""
    modules: list[torch.nn.Module] = {
        "imagenet": [model.backbone],
        "reference": reference_modules(model),
        "exported": [model],
    }[config.init]
    return {id(p) for module in modules for p in module.parameters()}


def group_factor(group: dict, step: int, warmup_steps: int) -> float:
    """A group's learning-rate factor at `step`: pretrained layers warm up, new ones do not.

    While the decoder still starts from zero its gradients are noise that full-rate SGD would
    write into the pretrained layers (the reference's person IoU fell 0.83 -> 0.45 in 30 steps).
    """
    if not group["pretrained"] or step >= warmup_steps:
        return group["lr_factor"]
    return group["lr_factor"] * step / warmup_steps


def param_groups(model: DeepLabV3Plus, config: TrainConfig) -> list[dict]:
    """Two SGD groups: pretrained layers (lr x `pretrained_lr`) and new ones (lr x 1)."""
    pretrained = pretrained_parameters(model, config)
    groups = [
        {"params": [p for p in model.parameters() if id(p) in pretrained],
         "lr_factor": config.pretrained_lr, "pretrained": True},
        {"params": [p for p in model.parameters() if id(p) not in pretrained],
         "lr_factor": 1.0, "pretrained": False},
    ]
    return [group for group in groups if group["params"]]


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    """DeepLab's "poly" policy: base * (1 - step / total) ** power."""
    return base * (1.0 - min(step, total) / total) ** power


def train_step(model: DeepLabV3Plus, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               masks: torch.Tensor, kinds: list[str], class_weight: torch.Tensor | None,
               device: torch.device, pixel_weight: torch.Tensor | None = None) -> float:
    """One SGD step on a batch; returns its loss."""
    model.train()
    allowed = allowed_classes(masks, kinds).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(images.to(device))
    loss = partial_label_loss(logits, allowed, class_weight, pixel_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def collate(batch: list[tuple[torch.Tensor, torch.Tensor, str, str]]
            ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, masks, kinds, _ = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks), list(kinds)


@torch.no_grad()
def predict(model: DeepLabV3Plus, image: np.ndarray, device: torch.device,
            size: int = INPUT_SIZE) -> np.ndarray:
    """Labels at `image`'s size: stretched to 513 x 513 like the daemon, bilinear logits back."""
    model.eval()
    view = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    logits = model(to_tensor(view)[None].to(device)).float()
    logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear",
                                             align_corners=False)
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def validate(model: DeepLabV3Plus, samples: list[Sample], device: torch.device
             ) -> dict[str, float]:
    """Dataset-level IoU: person per source and overall (person set), plate (plate set)."""
    inter: dict[str, int] = {}
    union: dict[str, int] = {}

    def add(key: str, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        inter[key] = inter.get(key, 0) + int((pred & truth & valid).sum())
        union[key] = union.get(key, 0) + int(((pred | truth) & valid).sum())

    for sample in samples:
        image, mask = load_pair(sample)
        labels = predict(model, image, device)
        valid = mask != IGNORE
        class_id = 1 if sample.kind == "person" else 2
        pred, truth = labels == class_id, mask == class_id
        name = CLASSES[class_id]
        add(f"{name}/{sample.source}", pred, truth, valid)
        add(name, pred, truth, valid)
    return {key: inter[key] / union[key] if union[key] else math.nan for key in inter}


def score(metrics: dict[str, float]) -> float:
    return 0.5 * (metrics.get("person", 0.0) + metrics.get("license_plate", 0.0))


def save(path: Path, model: DeepLabV3Plus, optimizer: torch.optim.Optimizer, config: TrainConfig,
         step: int, best: float, metrics: dict[str, float] | None = None,
         per_epoch: int = 0) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "config": asdict(config), "step": step, "best": best, "metrics": metrics or {},
                "per_epoch": per_epoch}, tmp)
    tmp.replace(path)  # a checkpoint is never half-written


def run(config: TrainConfig, out: Path, resume: bool, device: torch.device,
        checkpoint_every: int, workers: int, limit: int = 0, keep_epochs: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = Path(config.data)
    person_plate = read_split(data, "train")
    plates = [s for s in person_plate if s.kind == "plate"]
    aug = AugmentConfig(size=config.crop, small_object_scale=(config.small_object_scale_min,
                                                              config.small_object_scale_max))
    small = [s for s in person_plate if s.source in aug.small_object_sources]
    pool = (person_plate + plates * (config.plate_repeat - 1)
            + small * (config.small_object_repeat - 1))
    val = read_split(data, "val")
    if limit:  # smoke runs: a few images of every source
        pool = [s for i, s in enumerate(pool) if i % max(1, len(pool) // limit) == 0][:limit]
        val = [s for i, s in enumerate(val) if i % max(1, len(val) // limit) == 0][:limit]
    dataset = SegDataset(pool, aug, config.seed)
    per_epoch = len(pool) // config.batch
    total = config.steps or per_epoch * config.epochs

    torch.manual_seed(config.seed)
    model = build_model(config, pretrained=not resume).to(device)
    folded = folded_by_init(model, config)
    if folded and not resume:
        spread = np.linspace(0, len(pool) - 1, CALIBRATION_IMAGES).astype(int)
        images = torch.stack([dataset[int(i)][0] for i in spread])
        calibrate_norms(model, images.to(device), folded)
        log.info("%d folded batch norms calibrated on %d training crops", len(folded),
                 len(images))
    optimizer = torch.optim.SGD(param_groups(model, config), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    step, best = 0, -1.0
    if resume:
        state = torch.load(out / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best = state["step"], state["best"]
        log.info("resumed %s at step %d of %d (best score %.4f)", out / "last.pt", step, total,
                 best)
    class_weight = torch.tensor([1.0, 1.0, config.plate_weight], device=device)
    log_path = out / "log.csv"
    fields = ["epoch", "step", "loss", "seconds", *[f"iou/{k}" for k in _metric_keys(val)]]
    if not log_path.exists():
        with log_path.open("w", newline="") as stream:
            csv.writer(stream).writerow(fields)

    while step < total:
        epoch, offset = divmod(step, per_epoch)
        dataset.epoch = epoch
        order = np.random.default_rng((config.seed, epoch)).permutation(len(pool))
        end = min(per_epoch, total - epoch * per_epoch)  # the schedule may end mid-epoch
        indices = order[offset * config.batch : end * config.batch].tolist()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices), batch_size=config.batch,
            num_workers=workers, collate_fn=collate, drop_last=True,
        )
        losses: list[float] = []
        started = time.monotonic()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{math.ceil(total / per_epoch)}",
                   initial=offset, total=end, dynamic_ncols=True)
        for images, masks, kinds in bar:
            for group in optimizer.param_groups:
                group["lr"] = (poly_lr(config.lr, step, total, config.power)
                               * group_factor(group, step, config.warmup_steps))
            pixel_weight = (small_object_weight(masks, CLASSES.index("person"),
                                                config.small_person_area,
                                                config.small_person_weight)
                            if config.small_person_weight > 1.0 else None)
            loss = train_step(model, optimizer, images, masks, kinds, class_weight, device,
                              pixel_weight)
            losses.append(loss)
            step += 1
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.5f}")
            if step % checkpoint_every == 0:
                save(out / "last.pt", model, optimizer, config, step, best, per_epoch=per_epoch)
        bar.close()
        metrics = validate(model, val, device)
        current = score(metrics)
        if current > best:
            best = current
            save(out / "best.pt", model, optimizer, config, step, best, metrics, per_epoch)
        save(out / "last.pt", model, optimizer, config, step, best, metrics, per_epoch)
        if keep_epochs:
            shutil.copyfile(out / "last.pt", out / f"epoch{epoch + 1}.pt")
        shown = " ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
        log.info("epoch %d step %d loss %.4f (%.0f s) val %s", epoch + 1, step,
                 float(np.mean(losses)) if losses else math.nan, time.monotonic() - started,
                 shown)
        with log_path.open("a", newline="") as stream:
            csv.writer(stream).writerow(
                [epoch + 1, step, f"{np.mean(losses) if losses else math.nan:.5f}",
                 f"{time.monotonic() - started:.0f}",
                 *[f"{metrics.get(k, math.nan):.4f}" for k in _metric_keys(val)]])


def _metric_keys(val: list[Sample]) -> list[str]:
    person = sorted({s.source for s in val if s.kind == "person"})
    plate = sorted({s.source for s in val if s.kind == "plate"})
    return (["person", *[f"person/{s}" for s in person], "license_plate",
             *[f"license_plate/{s}" for s in plate]])


def _yes_no(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def main(argv: list[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "training" / "runs" / "main")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="steps")
    parser.add_argument("--limit", type=int, default=0,
                        help="smoke run: at most N images (pass it again with --resume)")
    parser.add_argument("--keep-epochs", action="store_true",
                        help="also keep each epoch's checkpoint as <out>/epochN.pt")
    parser.add_argument("--schedule-epochs", type=int, default=0,
                        help="with --resume: new total epochs of the poly schedule")
    parser.add_argument("--schedule-steps", type=int, default=0,
                        help="with --resume: new total steps of the poly schedule")
    for name, value in asdict(defaults).items():
        if name != "extra":
            kind = _yes_no if isinstance(value, bool) else type(value)
            parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cv2.setNumThreads(1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    config = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults) if k != "extra"})
    if args.resume:
        saved = torch.load(args.out / "last.pt", map_location="cpu", weights_only=False)
        config = TrainConfig(**saved["config"])
        # shorten or stretch the poly schedule of a stopped run (e.g. to meet a deadline)
        if args.schedule_epochs:
            config.epochs, config.steps = args.schedule_epochs, 0
        if args.schedule_steps:
            config.steps = args.schedule_steps
    log.info("training on %s: %s", device, config)
    run(config, args.out, args.resume, device, args.checkpoint_every, args.workers, args.limit,
        args.keep_epochs)


if __name__ == "__main__":
    main()
