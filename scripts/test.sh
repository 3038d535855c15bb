#!/usr/bin/env bash
# Runs every test: the Swift core's suite standalone (no Python needed), then the Python
# suite (numpy API, solver, torch adapter). Expects `pip install -e ".[torch,test]"` done.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || export PATH="$PATH:/opt/swift/usr/bin"

echo "== Swift core tests (standalone)"
swift build --product uvcPackageTests
swift test --skip-build

echo "== Python tests"
# Fail instead of skipping when torch or timm is missing.
UVC_REQUIRE_TORCH=1 python3 -m pytest -q -p no:cacheprovider Tests/python "$@"
