#!/usr/bin/env bash
# Renders and validates the Helm chart helm/rookery: see helm/check.py for
# what is checked. No helm binary is needed: helm-python-sdk bundles Helm's
# engine. The tools are installed, pinned, into a virtualenv under ~/.cache
# on the first run.
#
#   helm/check.sh                 # every check, the rookery binary included
#   helm/check.sh --skip-binary   # without starting the binary
#   helm/check.sh --self-test     # and check that each check catches a break
#   helm/check.sh --write-table   # rewrite README's values table from values.yaml
set -euo pipefail

venv="${ROOKERY_HELM_VENV:-$HOME/.cache/rookery-helm-venv}"
# Bump the stamp with the pins so that an old virtualenv is rebuilt.
pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 pyyaml==6.0.3)
stamp="$venv/.pins-$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)"

if [[ ! -e "$stamp" ]]; then
    echo "helm/check.sh: installing ${pins[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
    touch "$stamp"
fi

exec "$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/check.py" "$@"
