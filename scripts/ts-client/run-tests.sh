#!/usr/bin/env bash
# CI entry point of the TypeScript client: install its dev dependencies (TypeScript and Node's
# types, pinned by package-lock.json), compile with tsc, and run node's own test runner against
# the real bridge (`python -m bridge bridge` from this repository; PYTHON picks the interpreter).
# Exits non-zero when anything fails; node prints the test summary.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1; then
    echo "run-tests.sh: node is not installed (Node >= 18 is needed)" >&2
    exit 127
fi
echo "node $(node --version), npm $(npm --version), python: ${PYTHON:-python3}"

if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
rm -rf dist
./node_modules/.bin/tsc -p tsconfig.json
exec node --test --test-reporter=spec dist/test/*.test.js
