#!/usr/bin/env bash
# The test suite: makes sure Redis and PostgreSQL answer (starting private ones under .dev/
# when needed, see scripts/services.sh), then runs every test target. Extra arguments go to
# cargo test, e.g. scripts/test.sh -- --nocapture
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

exec cargo test --workspace --all-targets "$@"
