# Sourced by scripts/test and scripts/finetune: makes the project's virtual
# environment (.venv at the repository root) ready and activates it.
#
# The venv is created with python3 (or $PYTHON) when it is missing, and made
# again when it was moved, is broken or is older than Python 3.10; otherwise
# it is reused. qpeft and its pinned dependencies are installed with
#   pip install -c requirements/constraints.txt -e ".[models,test,docs,dev]"
# only when pyproject.toml, setup.py or the constraints changed since the last
# install: a hash of the three is kept in .venv/qpeft-install.sha256.

set -euo pipefail

QPEFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QPEFT_VENV="$QPEFT_ROOT/.venv"

# A venv works only where it was made (its activate script and the shebangs of
# its commands name that path), with the Python it was made with (>= 3.10) and
# with pip; one that was moved with the checkout, or is broken, is made again.
qpeft_venv_usable() {
    [ -x "$QPEFT_VENV/bin/python" ] || return 1
    if [ -f "$QPEFT_VENV/qpeft-root" ]; then
        [ "$(cat "$QPEFT_VENV/qpeft-root")" = "$QPEFT_ROOT" ] || return 1
    else  # made before the root was recorded: its activate script names its place
        grep -qF -e "VIRTUAL_ENV=\"$QPEFT_VENV\"" -e "VIRTUAL_ENV='$QPEFT_VENV'" \
            "$QPEFT_VENV/bin/activate" 2>/dev/null || return 1
    fi
    "$QPEFT_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        2>/dev/null || return 1
    "$QPEFT_VENV/bin/python" -m pip --version >/dev/null 2>&1 || return 1
}

if ! qpeft_venv_usable; then
    if [ -e "$QPEFT_VENV" ]; then
        echo "qpeft: $QPEFT_VENV was moved, is broken or has a Python older than 3.10;" \
            "making it again" >&2
        rm -rf "$QPEFT_VENV"
    fi
    echo "qpeft: creating $QPEFT_VENV" >&2
    "${PYTHON:-python3}" -m venv "$QPEFT_VENV"
fi
echo "$QPEFT_ROOT" > "$QPEFT_VENV/qpeft-root"

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
