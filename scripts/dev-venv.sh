#!/usr/bin/env bash
# The developers' Python environment, .dev/venv: created when missing (with Debian's
# python3-venv from apt when Python's venv module is missing), then the packages given as
# arguments installed into it with pip, from PyPI. A package already there at that version
# is not fetched again.
#
#   scripts/dev-venv.sh pydicom==3.0.2
#
# Prints the environment's python on success. scripts/lint-deploy.sh and the pydicom
# differential test use it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly VENV=.dev/venv

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x "$VENV/bin/pip" ]; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2> /dev/null; then
        rm -rf "$VENV"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
        python3 -m venv "$VENV"
    fi
fi
if [ "$#" -gt 0 ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
fi
echo "$PWD/$VENV/bin/python"
