#!/usr/bin/env bash
# One-command demo: makes sure Redis and PostgreSQL answer (starting private ones under .dev/
# when needed, see scripts/services.sh), builds the release binaries, applies the migrations,
# loads a few demo studies into PostgreSQL with their ingest events on the stream, then runs
# the daemon in the foreground. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

# The loader and the daemon both read the stream key from the settings (DCW__STREAM__KEY).
export DCW__STREAM__KEY=${DCW__STREAM__KEY:-dicom:ingest}
stream_key=$DCW__STREAM__KEY
# Show each study as it is filled (RUST_LOG, when set, wins).
export DCW__LOG__LEVEL=${DCW__LOG__LEVEL:-info,dicom_cache_warmer::fill=debug}

cargo build --release --workspace --bins
./target/release/dicom-cache-warmer migrate
./target/release/dcw-bench load --studies 5 --max-series 3 --max-instances 20 --seed 7

redis=$(_dcw_redact "$DCW__REDIS__URL")
cat <<BANNER

== dicom-cache-warmer demo ==================================================
Loaded 5 demo studies into PostgreSQL and one event per instance onto the
stream "$stream_key". The daemon now starts and warms the study cache.
In another terminal, watch it work:

  redis-cli -u '$redis' --scan --pattern 'wado:*:study:*:metadata'
  redis-cli -u '$redis' get '<one of those keys>'
  redis-cli -u '$redis' xinfo groups '$stream_key'

Ctrl-C stops the daemon. 'scripts/services.sh stop' stops any private Redis
or PostgreSQL this script started (their data is under .dev/).
=============================================================================

BANNER

exec ./target/release/dicom-cache-warmer
