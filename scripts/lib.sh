# Shared by the scripts in this folder (sourced, not run): the Python check, a line
# per step, and a virtualenv installed from a lock file.

PY=${PYTHON:-python3}

step() { printf '==> %s\n' "$*" >&2; }

need_python() {
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
    echo "Python 3.11+ is required ($PY is $("$PY" --version 2>&1 || echo missing))" >&2
    exit 1
  }
}

# venv_from_lock VENV LOCK: VENV holds exactly the versions LOCK pins (hashes checked,
# nothing resolved anew), plus this package, editable. Quiet when already in place.
venv_from_lock() {
  local venv=$1 lock=$2 log
  need_python
  if [ ! -x "$venv/bin/python" ]; then
    step "creating the virtualenv $venv ($("$PY" --version 2>&1))"
    "$PY" -m venv "$venv"
  fi
  log="$venv/install.log"
  step "installing the locked dependencies of $lock into $venv (hashes checked)"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
    --require-hashes --no-deps -r "$lock" >"$log" 2>&1 || {
    cat "$log" >&2; echo "installing from $lock failed (log above)" >&2; exit 1; }
  step "installing the gateway package (editable) into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
    --no-deps --no-build-isolation -e . >>"$log" 2>&1 || {
    cat "$log" >&2; echo "installing the package failed (log above)" >&2; exit 1; }
}

# tool_venv: prints the path of a virtualenv with the dev tools (pip-tools) in it.
tool_venv() {
  [ -x .venv/bin/pip-compile ] || venv_from_lock .venv requirements/dev.txt
  echo .venv
}
