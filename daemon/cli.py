"""Command-line entry point: `anonymizer` and `python -m daemon` are the same CLI."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from daemon import __version__
from daemon.errors import AnonymizerError

log = logging.getLogger("daemon")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymizer",
        description="Privacy gateway for video: blur people, plates (any class the model knows).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a config file; exit 0 or 2")
    check.add_argument("path", nargs="?", default="config.yaml", help="default: ./config.yaml")

    run = sub.add_parser("run", help="the daemon: anonymize RTSP cameras, republish over RTSP")
    run.add_argument("-c", "--config", default="config.yaml", help="default: ./config.yaml")

    from daemon.demo.command import add_demo_arguments

    add_demo_arguments(sub.add_parser(
        "demo", help="the daemon on a built-in test camera (the bundled clip); prints the URLs"))

    from daemon.filejob import add_file_arguments

    add_file_arguments(sub.add_parser("file", help="anonymize image and video files"))

    from daemon.batch.command import add_batch_arguments

    add_batch_arguments(sub.add_parser(
        "batch", help="anonymize a folder or list of files on a Ray cluster (resumable)"))

    from daemon.gpu.build import add_build_engine_arguments

    add_build_engine_arguments(
        sub.add_parser("build-engine", help="build and cache the model's TensorRT engine (GPU)")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from daemon.logsafety import install as install_log_filter

    install_log_filter()  # every handler redacts secrets; GStreamer's debug output joins it
    try:
        match args.command:
            case "check-config":
                from daemon.configfile import check_config_command

                return check_config_command(args.path)
            case "run":
                from daemon.service.run import run_command

                return run_command(args.config)
            case "demo":
                from daemon.demo.command import demo_command

                return demo_command(args)
            case "file":
                from daemon.filejob import file_command

                return file_command(args)
            case "batch":
                from daemon.batch.command import batch_command

                return batch_command(args)
            case "build-engine":
                from daemon.gpu.build import build_engine_command

                return build_engine_command(args)
    except AnonymizerError as exc:
        from daemon.logsafety import redact

        print(f"anonymizer: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("anonymizer: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse restricts choices


if __name__ == "__main__":
    sys.exit(main())
