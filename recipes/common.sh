#!/usr/bin/env bash
# What the recipes share: choose the configuration layers, then run the pipeline (recipes/Snakefile)
# with Snakemake on the run folder. Sourced by recipes/*.sh and examples/toy/demo.sh, never run.
#
# The environment a recipe reads (everything else is a setting: recipes/config/defaults.yaml):
#   RUN          the run folder (default runs/<recipe>)
#   RAW_DIR      your folder of raw data files, read only (default RUN/raw, where the pipeline downloads)
#   TEACHER_DIR  a fairseq teacher folder to distill instead of training one (setting teacher_dir)
#   TEACHER_ENGINE  fairseq (default) or ct2: who translates the training set (teacher_engine)
#   TEACHER_CT2  any CTranslate2 model folder as the teacher (teacher_ct2; implies TEACHER_ENGINE=ct2)
#   ARCH         transformer (default) or lstm: adds recipes/config/<recipe>.lstm.yaml
#   SMOKE=1      tiny models and a tiny synthetic corpus: adds config/smoke.yaml (and its lstm and
#                per-recipe layers)
#   CONFIGFILE   your own YAML layer(s), space-separated, applied last
# Arguments after the recipe go to Snakemake: -n (the plan), -j N, --until RULE, --forcerun RULE,
# --profile recipes/profiles/slurm, --config KEY=VALUE ... (last: it takes every word after it).
set -euo pipefail

RECIPES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPE_COMMAND=("$0" "$@")  # sourced without arguments: the recipe script and its arguments, as typed
PROVENANCE=""

die() { echo "error: $*" >&2; exit 2; }

utc_now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# yaml_string TEXT: TEXT as a YAML single-quoted string (a quote inside is doubled)
yaml_string() { printf "'%s'" "${1//\'/\'\'}"; }

# provenance_start RUN_DIR: RUN_DIR/provenance/invocation-STAMP-PID.txt, one `key value` a line
# (read by fairseq_seqkd/evaluate/provenance.py into the report): the command as typed, where it ran, the
# checkout's commit and the environment the recipe reads; provenance_end appends the end and exit
# status. A resumed run keeps one file per invocation.
provenance_start() {
  local dir="$1/provenance" quoted commit dirty var
  mkdir -p "$dir"
  PROVENANCE="$dir/invocation-$(date -u +%Y%m%dT%H%M%SZ)-$$.txt"
  printf -v quoted '%q ' "${RECIPE_COMMAND[@]}"
  commit="$(git -C "$RECIPES" rev-parse HEAD 2>/dev/null)" || commit=unknown
  if [ "$commit" = unknown ]; then dirty=unknown
  elif [ -n "$(git -C "$RECIPES" status --porcelain --untracked-files=no 2>/dev/null)" ]; then dirty=yes
  else dirty=no; fi
  {
    echo "start $(utc_now)"
    echo "host ${HOSTNAME:-$(uname -n)}"
    echo "cwd $PWD"
    echo "command bash ${quoted% }"
    echo "commit $commit"
    echo "uncommitted_changes $dirty"
    for var in RUN RAW_DIR TEACHER_DIR TEACHER_ENGINE TEACHER_CT2 ARCH SMOKE CONFIGFILE OMP_NUM_THREADS MKL_NUM_THREADS CUDA_VISIBLE_DEVICES; do
      if [ -n "${!var+x}" ]; then echo "env $var=${!var}"; fi
    done
  } >"$PROVENANCE"
}

provenance_end() {
  [ -n "$PROVENANCE" ] && printf 'end %s\nexit %s\n' "$(utc_now)" "$1" >>"$PROVENANCE"
  PROVENANCE=""
}

# The environment's settings (RAW_DIR=... is raw_dir: ..., and so on), saved with the run in
# RUN/.environment.yaml: a variable set now wins (set empty, it clears the saved value), one not set keeps
# the value saved by the invocation before, so a resumed run without RAW_DIR or TEACHER_DIR in its
# environment is the same run. RAW_DIR_DEFAULT (a recipe's) applies only where nothing is saved.
ENV_SETTINGS=(raw_dir:RAW_DIR teacher_dir:TEACHER_DIR teacher_ct2:TEACHER_CT2 teacher_engine:TEACHER_ENGINE)

# environment_layer RUN_DIR DRY: print the path of the layer to pass to Snakemake ('' for none). A dry run
# writes nothing in the run folder: a changed layer goes to a temporary file instead.
environment_layer() {
  local run="$1" dry="$2" saved="$1/.environment.yaml" line key val var pair lines="" now
  declare -A value=()
  if [ -f "$saved" ]; then
    while IFS= read -r line; do
      case "$line" in \#*|"") continue;; esac
      key="${line%%: *}"; val="${line#*: }"
      if [[ $val == \'*\' ]]; then val="${val:1:${#val}-2}"; val="${val//\'\'/\'}"; fi
      value[$key]="$val"
    done <"$saved"
  fi
  local -A reused=()
  for key in "${!value[@]}"; do reused[$key]=1; done
  if [ -z "${value[raw_dir]:-}" ] && [ -z "${RAW_DIR+x}" ] && [ -n "${RAW_DIR_DEFAULT:-}" ]; then
    value[raw_dir]="$RAW_DIR_DEFAULT"; unset 'reused[raw_dir]'
  fi
  for pair in "${ENV_SETTINGS[@]}"; do
    key="${pair%%:*}"; var="${pair#*:}"
    [ -n "${!var+x}" ] || continue
    unset 'reused[$key]'
    if [ -z "${!var}" ]; then unset 'value[$key]'; continue; fi
    case "$var" in
      RAW_DIR|TEACHER_DIR|TEACHER_CT2)
        [ -d "${!var}" ] || die "$var: ${!var} is not a folder"
        value[$key]="$(cd "${!var}" && pwd)";;
      TEACHER_ENGINE)
        case "$TEACHER_ENGINE" in fairseq|ct2) ;; *) die "TEACHER_ENGINE=$TEACHER_ENGINE: use fairseq or ct2";; esac
        value[$key]="$TEACHER_ENGINE";;
    esac
  done
  if [ -n "${TEACHER_CT2:-}" ]; then value[teacher_engine]=ct2; unset 'reused[teacher_engine]'; fi
  for pair in "${ENV_SETTINGS[@]}"; do
    key="${pair%%:*}"; var="${pair#*:}"
    [ -n "${value[$key]:-}" ] || continue
    if [ "$key" = teacher_engine ]; then lines+="$key: ${value[$key]}"$'\n'
    else lines+="$key: $(yaml_string "${value[$key]}")"$'\n'; fi
    [ -n "${reused[$key]:-}" ] && printf '%s | recipe | %s=%s, as saved with the run in %s (set %s= to change it)\n' \
      "$(date '+%F %T')" "$var" "${value[$key]}" "$saved" "$var" >&2
  done
  [ -n "$lines" ] || { [ "$dry" = 1 ] || rm -f "$saved"; return 0; }
  now="# the recipe's environment (RAW_DIR, TEACHER_DIR, TEACHER_CT2, TEACHER_ENGINE), saved with the run"$'\n'"$lines"
  if [ -f "$saved" ] && [ "$(cat "$saved"; echo x)" = "${now}x" ]; then echo "$saved"; return 0; fi
  if [ "$dry" = 1 ]; then
    local tmp
    tmp="$(mktemp "${TMPDIR:-/tmp}/environment.XXXXXX.yaml")"
    printf '%s' "$now" >"$tmp"
    echo "$tmp"
  else
    printf '%s' "$now" >"$saved.tmp" && mv "$saved.tmp" "$saved"
    echo "$saved"
  fi
}

# run_pipeline RUN_DIR CONFIG... -- SNAKEMAKE_ARGS...: the layers in order, then a --profile's settings.yaml,
# then CONFIGFILE's,
# then a generated one for RAW_DIR and the TEACHER_* variables; Snakemake's own arguments last.
run_pipeline() {
  local run="$1"; shift
  local configs=() arg
  while [ $# -gt 0 ] && [ "$1" != -- ]; do configs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  for arg in "$@"; do
    case "$arg" in
      --configfile|--configfiles|--configfile=*|--configfiles=*)
        die "--configfile would replace the recipe's configuration; add your layer with CONFIGFILE=FILE instead";;
      --directory|--directory=*|-d) die "the run folder is RUN=...; do not pass $arg";;
    esac
  done
  # a profile's own settings (PROFILE/settings.yaml: a cluster's partitions, account, GPUs, job sizes), before yours
  local prev="" profile=""
  for arg in "$@"; do
    case "$prev" in --profile) profile="$arg";; esac
    case "$arg" in --profile=*) profile="${arg#--profile=}";; esac
    prev="$arg"
  done
  if [ -n "$profile" ] && [ -f "$profile/settings.yaml" ]; then configs+=("$(cd "$profile" && pwd)/settings.yaml"); fi
  local mine
  for mine in ${CONFIGFILE:-}; do  # files separated by spaces, made absolute (Snakemake runs in RUN)
    [ -f "$mine" ] || die "CONFIGFILE: $mine is not a file"
    configs+=("$(cd "$(dirname "$mine")" && pwd)/$(basename "$mine")")
  done
  local dry=0 has_cores=0
  for arg in "$@"; do
    case "$arg" in
      -n|--dry-run|--dryrun|-n?*) dry=1;;
      -j|-j?*|--jobs|--jobs=*|-c|-c?*|--cores|--cores=*|--profile|--profile=*) has_cores=1;;
    esac
  done
  mkdir -p "$run"
  run="$(cd "$run" && pwd)"
  local env_layer
  env_layer="$(environment_layer "$run" "$dry")" || exit 2
  [ -n "$env_layer" ] && configs+=("$env_layer")
  command -v snakemake >/dev/null || die "snakemake is not on PATH: run 'make install' and 'source .venv/bin/activate'"
  local cmd=(snakemake --snakefile "$RECIPES/Snakefile" --directory "$run" --configfile "${configs[@]}")
  # unattended restarts: a job killed mid-write is redone. Jobs run as threads of Snakemake (each
  # command is its own process: a job starts in milliseconds, not seconds). The terminal shows one
  # line per command (recipes/jobs.py) and the progress; a dry run shows every job in full, with
  # its reason, threads and resources. All cores unless -j/--cores or a profile says otherwise.
  if [ "$dry" = 1 ]; then cmd+=(--quiet host); else cmd+=(--quiet rules host reason); fi
  [ "$has_cores" = 1 ] || [ "$dry" = 1 ] || cmd+=(--cores all)
  # what reruns a job: its parameters (content fingerprints of the user's files among them), its code, an
  # input file newer than its output (the user's files excepted: ancient in the Snakefile), never a path
  # alone (the same raw files in a moved RAW_DIR rerun nothing): docs/recipes.md, "What a rerun does"
  cmd+=(--rerun-triggers mtime params software-env code)
  cmd+=(--rerun-incomplete --force-use-threads)  # flags last: they end --quiet's list before a target
  printf '%s | recipe | run folder %s; configuration: %s\n' "$(date '+%F %T')" "$run" "${configs[*]##*/}" >&2
  if [ "$dry" = 0 ]; then
    provenance_start "$run"
    trap 'provenance_end 130; exit 130' INT
    trap 'provenance_end 143; exit 143' TERM
  fi
  local rc=0 new_state=()
  if [ "$dry" = 1 ]; then  # what Snakemake's dry run adds to its own state (a file-stat cache, a lock folder)
    for arg in "$run/.snakemake/iocache/latest.pkl" "$run/.snakemake/locks"; do
      [ -e "$arg" ] || new_state+=("$arg")
    done
  fi
  "${cmd[@]}" "$@" || rc=$?
  provenance_end "$rc"
  if [ "$dry" = 1 ]; then  # a dry run leaves the run folder as it found it
    for arg in "${new_state[@]}"; do rm -f "$arg" 2>/dev/null || rmdir "$arg" 2>/dev/null || true; done
    [ -n "$env_layer" ] && [ "$env_layer" != "$run/.environment.yaml" ] && rm -f "$env_layer"
  fi
  trap - INT TERM
  [ "$rc" = 0 ] || exit "$rc"
  if [ "$dry" = 0 ] && [ -e "$run/report.md" ]; then
    printf '%s | recipe | done; the report: %s (its last section, Provenance: commands, code, versions, ' \
      "$(date '+%F %T')" "$run/report.md" >&2
    printf 'checkpoint sha256s, job times)\n' >&2
    sed '/^## Provenance$/,$d' "$run/report.md"
  fi
}

# recipe_configs NAME: the layers of a dataset recipe for ARCH and SMOKE, printed one a line.
recipe_configs() {
  local name="$1" arch="${ARCH:-transformer}"
  case "$arch" in transformer|lstm) ;; *) die "ARCH=$arch: use transformer or lstm";; esac
  echo "$RECIPES/config/$name.yaml"
  [ "$arch" = lstm ] && echo "$RECIPES/config/$name.lstm.yaml"
  if [ "${SMOKE:-0}" = 1 ]; then
    echo "$RECIPES/config/smoke.yaml"
    [ "$arch" = lstm ] && echo "$RECIPES/config/smoke.lstm.yaml"
    [ -e "$RECIPES/config/$name.smoke.yaml" ] && echo "$RECIPES/config/$name.smoke.yaml"
  fi
  return 0
}

# recipe_main NAME "$@": a dataset recipe: its layers, RUN (default runs/NAME), then Snakemake.
recipe_main() {
  local name="$1"; shift
  local configs
  mapfile -t configs < <(recipe_configs "$name")
  run_pipeline "${RUN:-runs/$name}" "${configs[@]}" -- "$@"
}
