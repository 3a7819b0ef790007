# Sourced by the scripts here: the same model, data and vLLM CPU settings as ../decisions (one place: its env.sh).
. "$(dirname "${BASH_SOURCE[0]}")/../decisions/env.sh"
