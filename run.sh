#!/usr/bin/env bash
# One entry point for a fresh clone: `./run.sh demo` runs the main job, `./run.sh test` runs the tests,
# `./run.sh notebooks` writes every tutorial chapter as an executed notebook into tutorial_notebooks/.
# Each creates the virtual environment .venv on first use and installs minitx into it (editable), so nothing
# else has to be set up by hand.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
venv=${MINITX_VENV:-.venv}

ensure_venv() {  # $1: the pip extra to install ("" or "test")
    local spec="."
    [ -n "$1" ] && spec=".[$1]"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
    fi
    # Our machines keep the CPU build of torch (a test-only oracle) in /opt/wheels.
    local find_links=()
    [ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
    "$venv/bin/python" -m pip install --quiet "${find_links[@]}" -e "$spec"
}

case "${1:-}" in
    demo)
        shift
        ensure_venv ""
        exec "$venv/bin/minitx" demo "$@"
        ;;
    test)
        shift
        ensure_venv "test"
        exec "$venv/bin/python" -m pytest "$@"
        ;;
    notebooks)
        shift
        ensure_venv "notebooks"
        exec "$venv/bin/python" tutorials/_notebooks.py "$@"
        ;;
    *)
        echo "usage: ./run.sh demo [options] | ./run.sh test [pytest options] | ./run.sh notebooks [--quick] [chapters]" >&2
        exit 2
        ;;
esac
