# Sourced by scripts/test and scripts/finetune: makes the project's virtual
# environment (.venv at the repository root) ready and activates it.
#
# The venv is created with python3 (or $PYTHON) when it is missing and reused
# when present. qpeft and its pinned dependencies are installed with
#   pip install -c requirements/constraints.txt -e ".[models,test,docs,dev]"
# only when pyproject.toml or the constraints changed since the last install:
# a hash of both is kept in .venv/qpeft-install.sha256.

set -euo pipefail

QPEFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QPEFT_VENV="$QPEFT_ROOT/.venv"

if [ ! -x "$QPEFT_VENV/bin/python" ]; then
    echo "qpeft: creating $QPEFT_VENV" >&2
    "${PYTHON:-python3}" -m venv "$QPEFT_VENV"
fi

qpeft_install_hash() {
    "$QPEFT_VENV/bin/python" - "$QPEFT_ROOT/pyproject.toml" "$QPEFT_ROOT/setup.py" \
        "$QPEFT_ROOT/requirements/constraints.txt" <<'PY'
import hashlib
import sys

digest = hashlib.sha256()
for path in sys.argv[1:]:
    with open(path, "rb") as file:
        digest.update(file.read())
print(digest.hexdigest())
PY
}

qpeft_stamp="$QPEFT_VENV/qpeft-install.sha256"
qpeft_wanted="$(qpeft_install_hash)"
if [ "$(cat "$qpeft_stamp" 2>/dev/null || true)" != "$qpeft_wanted" ]; then
    echo "qpeft: installing qpeft and its pinned dependencies into $QPEFT_VENV" >&2
    qpeft_started=$SECONDS
    (
        cd "$QPEFT_ROOT"
        .venv/bin/python -m pip install --quiet -c requirements/constraints.txt pip setuptools
        .venv/bin/python -m pip install --quiet -c requirements/constraints.txt \
            -e ".[models,test,docs,dev]"
    )
    echo "$qpeft_wanted" > "$qpeft_stamp"
    echo "qpeft: installed in $((SECONDS - qpeft_started)) s" >&2
fi

# shellcheck disable=SC1091
source "$QPEFT_VENV/bin/activate"
