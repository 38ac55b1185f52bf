#!/usr/bin/env bash
# make audit: pip-audit over the installed dependencies (the project itself, installed editable, is left
# out). Known vulnerabilities fail the build; an unreachable vulnerability service does not: the audit is
# then skipped with the reason, since a network outage says nothing about the dependencies.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SERVICE_URL=${PIP_AUDIT_PROBE_URL:-https://pypi.org/pypi/pip/json}

if ! reason=$("$BIN/python" - "$SERVICE_URL" 2>&1 <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=10).close()
except Exception as e:  # any failure to reach it: DNS, refused, proxy, TLS
    sys.exit(f"{type(e).__name__}: {e}")
PY
); then
  echo "pip-audit SKIPPED: the vulnerability service is unreachable ($SERVICE_URL: $reason)"
  exit 0
fi
report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
"$BIN/pip-audit" --local --skip-editable --progress-spinner off --timeout 30 -f json -o "$report" || status=$?
"$BIN/python" - "$report" "$status" <<'PY'
import json, sys
report, status = sys.argv[1], int(sys.argv[2])
try:
    dependencies = json.load(open(report)).get("dependencies", [])
except (OSError, ValueError):
    dependencies = []
if not dependencies:
    sys.exit(status or "pip-audit wrote no report")
audited = [d for d in dependencies if "skip_reason" not in d]
vulnerable = [d for d in audited if d.get("vulns")]
for d in vulnerable:
    ids = ", ".join(v["id"] + (f" (fixed in {', '.join(v['fix_versions'])})" if v.get("fix_versions") else "") for v in d["vulns"])
    print(f"VULNERABLE {d['name']} {d['version']}: {ids}")
if not audited:  # a mirror or proxy that knows none of them: nothing was checked, which is not a pass
    print(f"pip-audit SKIPPED: the vulnerability service knew none of the {len(dependencies)} dependencies")
    sys.exit(0)
skipped = len(dependencies) - len(audited)
print(f"pip-audit: {len(audited)} dependencies audited, {len(vulnerable)} vulnerable, {skipped} not known to the service")
sys.exit(1 if vulnerable else 0)
PY
