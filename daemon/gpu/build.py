"""`anonymizer build-engine`: compile the model's ONNX into a cached TensorRT plan ahead of time."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_build_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `anonymizer build-engine`."""
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="config file (default: built-in defaults)")
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model (default: model.path of the config)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                        help="fp16 (default, what the daemon uses): built from an FP16 copy of "
                             "the ONNX; fp32: the ONNX as it is")
    parser.add_argument("--cache", type=Path, default=None,
                        help="plan directory (default: model.engine_cache, else the user cache)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a plan is cached")


def build_engine_command(args: argparse.Namespace) -> int:
    """Build (or find) the plan for this machine's GPU; print its path. Errors raise
    AnonymizerError subclasses (no GPU, no TensorRT, unparsable model), which the CLI prints."""
    from daemon.configfile import load_config
    from daemon.gpu.backend import open_device
    from daemon.gpu.engine import default_cache_dir, ensure_engine, tensorrt_module

    config = load_config(args.config)
    model = args.model.expanduser().resolve() if args.model else config.model.path
    cache = args.cache or config.model.engine_cache or default_cache_dir()
    trt = tensorrt_module()
    device = open_device()
    plan = ensure_engine(trt, model, device.identity, cache, args.precision, force=args.force)
    print(plan)
    return 0
