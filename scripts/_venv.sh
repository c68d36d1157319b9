# Sourced by the scripts in this folder: make sure .venv exists and is current.
#
# The venv is (re)built when it is missing or when pyproject.toml is newer than
# the stamp left by the last install, so a fresh clone needs nothing but a
# Python >= 3.11 on PATH. The system site-packages are never visible inside it.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed-from-pyproject"
python="${TRIO_AGENT_PYTHON:-python3}"
extras="${TRIO_AGENT_EXTRAS:-dev}"

if [ ! -x "$venv/bin/python" ]; then
    echo "trio-agent: creating $venv" >&2
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || ! grep -qx "$extras" "$stamp"; then
    echo "trio-agent: installing the project into $venv (extras: $extras)" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e "$root[$extras]" >&2
    echo "$extras" > "$stamp"
fi
