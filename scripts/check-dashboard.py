#!/usr/bin/env python3
"""Checks that every metric the Grafana dashboard and the alerting rules use is exported.

    python3 scripts/check-dashboard.py METRICS     METRICS: a file of Prometheus text (what
                                                   GET /metrics answers) or an http(s) URL
    python3 scripts/check-dashboard.py --list      the names used, and where, nothing checked

Names are taken from the PromQL of the dashboard's panels and template variables
(deploy/grafana/dicom-cache-warmer.json) and of the rules' `expr:` fields
(deploy/prometheus/dicom-cache-warmer.rules.yml): identifiers that start with `dcw_` or
`process_`, and `up`. A histogram's `_bucket`, `_sum` and `_count` series count as its
name. `up` is skipped: Prometheus adds it at scrape time, no target exports it.

Exit status: 0 when every name is exported, 1 when some are missing (listed, with where each
is used), 2 on a usage or read error. Standard library only.
"""

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/dicom-cache-warmer.json"
RULES = ROOT / "deploy/prometheus/dicom-cache-warmer.rules.yml"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Series that Prometheus makes itself for each target: never in a /metrics text.
SCRAPE_SERIES = {"up"}

IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...):
# label names, not metrics.
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def base_name(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def metric_names(promql):
    """The dcw_*, process_* and up names in one PromQL expression, histogram suffixes cut."""
    text = STRING.sub('""', promql)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = LABEL_LIST.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for name in IDENTIFIER.findall(text):
        if name.startswith(("dcw_", "process_")) or name == "up":
            names.add(base_name(name))
    return names


def dashboard_queries(path):
    """(where, PromQL) for each panel target and query variable of a dashboard."""
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))

    def panels(items):
        for panel in items or []:
            yield panel
            yield from panels(panel.get("panels"))  # rows hold their panels when collapsed

    for panel in panels(dashboard.get("panels")):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield f"dashboard panel {panel.get('title')!r}", target["expr"]
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        for text in (query, variable.get("definition")):
            if isinstance(text, str) and text:
                yield f"dashboard variable ${variable.get('name')}", text


def rule_queries(path):
    """(where, PromQL) for each `expr:` of a Prometheus rules file.

    A small reader for the YAML that rule files use, so that no YAML library is needed:
    `expr:` with a plain or quoted value on its line, or a block scalar (| or >) whose
    lines are indented deeper than the key. The rule's name is the last `alert:` or
    `record:` seen."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    where = "rules"
    i = 0
    while i < len(lines):
        line = lines[i]
        named = re.match(r"^\s*(?:- )?\s*(alert|record):\s*(\S+)", line)
        if named:
            where = f"{named.group(1)} {named.group(2).strip(chr(34) + chr(39))}"
        found = re.match(r"^(\s*)(?:- )?\s*expr:\s*(.*?)\s*$", line)
        i += 1
        if not found:
            continue
        indent, value = len(found.group(1)), found.group(2)
        if value[:1] in "|>":
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            value = " ".join(block)
        elif value[:1] in "\"'":
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        yield where, value


def exported_names(text):
    """The metric names that have samples in a Prometheus text exposition (histograms also
    under their base name). A # TYPE or # HELP line alone does not count: Prometheus
    would have nothing to query."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sample = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
        if sample:
            names.add(sample.group(1))
            names.add(base_name(sample.group(1)))
    return names


def read_metrics(source):
    if re.match(r"^https?://", source):
        with urllib.request.urlopen(source, timeout=10) as response:
            return response.read().decode("utf-8", "replace")
    return Path(source).read_text(encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="?", help="a /metrics text file, or an http(s) URL to fetch")
    parser.add_argument("--list", action="store_true", help="print the names used and exit")
    parser.add_argument("--dashboard", default=str(DASHBOARD))
    parser.add_argument("--rules", default=str(RULES))
    args = parser.parse_args()
    if not args.list and not args.metrics:
        parser.error("give a /metrics file or URL, or --list")

    used = {}  # name -> [where]
    try:
        queries = list(dashboard_queries(args.dashboard)) + list(rule_queries(args.rules))
    except (OSError, ValueError) as error:
        print(f"check-dashboard: {error}", file=sys.stderr)
        return 2
    for where, promql in queries:
        for name in metric_names(promql):
            places = used.setdefault(name, [])
            if where not in places:
                places.append(where)
    if not used:
        print("check-dashboard: no metric name found in the dashboard or the rules", file=sys.stderr)
        return 2

    if args.list:
        for name in sorted(used):
            note = " (added by Prometheus at scrape)" if name in SCRAPE_SERIES else ""
            print(f"{name}{note}: {', '.join(used[name])}")
        return 0

    try:
        exported = exported_names(read_metrics(args.metrics))
    except (OSError, ValueError) as error:
        print(f"check-dashboard: cannot read {args.metrics}: {error}", file=sys.stderr)
        return 2
    checked = sorted(name for name in used if name not in SCRAPE_SERIES)
    missing = [name for name in checked if name not in exported]
    if missing:
        print(f"check-dashboard: {len(missing)} of {len(checked)} metric names are not in {args.metrics}:")
        for name in missing:
            print(f"  {name}  (used by {', '.join(used[name])})")
        return 1
    skipped = sorted(SCRAPE_SERIES & used.keys())
    print(f"ok: all {len(checked)} metric names used by the dashboard and the rules are in {args.metrics}"
          + (f" ({', '.join(skipped)}: added by Prometheus, not checked)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
