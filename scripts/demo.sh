#!/usr/bin/env bash
# One-command demo: makes sure Redis and PostgreSQL answer (starting private ones under .dev/
# when needed, see scripts/services.sh), builds the release binaries, applies the migrations,
# loads a few demo studies into PostgreSQL with their ingest events on the stream and their
# CT instance files under .dev/demo/dicom, then runs the daemon in the foreground with series
# documents on (written under .dev/demo/json). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

# The loader and the daemon both read the stream key from the settings (DCW__STREAM__KEY).
export DCW__STREAM__KEY=${DCW__STREAM__KEY:-dicom:ingest}
stream_key=$DCW__STREAM__KEY
# Series documents: the loader writes the instance files under the DICOM root in the
# server's layout, the daemon publishes one document per series under the JSON root.
export DCW__SERIES__DICOM_ROOT=${DCW__SERIES__DICOM_ROOT:-$PWD/.dev/demo/dicom}
export DCW__SERIES__JSON_ROOT=${DCW__SERIES__JSON_ROOT:-$PWD/.dev/demo/json}
dicom_root=$DCW__SERIES__DICOM_ROOT json_root=$DCW__SERIES__JSON_ROOT
# Show each study as it is filled (RUST_LOG, when set, wins).
export DCW__LOG__LEVEL=${DCW__LOG__LEVEL:-info,dicom_cache_warmer::fill=debug}
listen=${DCW__HTTP__LISTEN:-0.0.0.0:9464}

cargo build --release --workspace --bins
./target/release/dicom-cache-warmer migrate
mkdir -p "$dicom_root" "$json_root"
./target/release/dcw-bench load --studies 5 --max-series 3 --max-instances 20 --seed 7 \
    --series-root "$dicom_root"

# One loaded instance file, {dicom_root}/{tenant}/{study_date_origin}/{study}/{series}/{sop}.dcm,
# names a study key and the series document the daemon is about to write.
first=$(find "$dicom_root/demo0" -name '*.dcm' | sort | sed -n 1p)
if [[ -z $first ]]; then
    printf 'demo.sh: no instance file under %s\n' "$dicom_root/demo0" >&2
    exit 1
fi
IFS=/ read -r tenant date study series _ <<<"${first#"$dicom_root"/}"
study_key="wado:$tenant:study:$study:metadata"
document="$json_root/$tenant/metadata/$date/$study/$series.json"

redis=$(_dcw_redact "$DCW__REDIS__URL")
cat <<BANNER

== dicom-cache-warmer demo ==================================================
Loaded 5 demo studies into PostgreSQL, one event per instance onto the stream
"$stream_key", and the instances' CT files under $dicom_root.
The daemon now starts, warms the study cache and, once a series has been
quiet for 3 s, writes its DICOM JSON document under $json_root.
In another terminal, watch it work:

  redis-cli -u '$redis' --scan --pattern 'wado:*:study:*:metadata'
  redis-cli -u '$redis' get '$study_key'
  redis-cli -u '$redis' xinfo groups '$stream_key'
  ls '$json_root/$tenant/metadata/$date/$study/'
  head -c 600 '$document'; echo
  curl -s localhost:${listen##*:}/metrics | grep dcw_

Ctrl-C stops the daemon. 'scripts/services.sh stop' stops any private Redis
or PostgreSQL this script started (their data is under .dev/).
=============================================================================

BANNER

exec ./target/release/dicom-cache-warmer
