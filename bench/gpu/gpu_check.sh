#!/usr/bin/env bash
# The prepared GPU check (issue 23): one call that brings back the versions, tests/test_cuda.py
# and the GPU table, in under 8 minutes on an H200 (about 5.5 estimated; see bench/gpu/gpu_check.py).
#
#   bash bench/gpu_check.sh [OUTDIR] [--budget SECONDS] [--sections a,b,...]
#   bash bench/gpu_check.sh --dry-run OUTDIR        # tiny sizes on the CPU (tests/test_gpu_check.py)
#
# OUTDIR defaults to $OUT, else ./gpu_check. It receives gpu_check.json, gpu_check.md, gpu_check.log,
# nvidia-smi.txt and pytest_cuda.txt (5 files, a few hundred kB). --budget (default 440 s) bounds
# the whole check: each section has its own time limit inside it, and a section that no longer
# fits is skipped and marked so in the table. --sections runs a subset (e.g. a rerun of
# scoring_coco with --budget 300). Sections: env pytest_cuda scoring_f30k encoding training
# eval_mem scoring_coco.
#
# On any machine with a GPU, from the repository root: bash bench/gpu_check.sh
# The check itself never needs ftfy/wcwidth (it feeds token ids, not text); wheels in .whl/ are
# installed first if it holds any, so that ESL-CLIP's released text cleaning works on a machine
# without them. Prepare them once (.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl ftfy==6.3.1 wcwidth==0.9.4
set -u
dry=""
out="${OUT:-gpu_check}"
budget=440
sections=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry="--dry-run" ;;
        --budget) budget="${2:?--budget needs seconds}"; shift ;;
        --sections) sections="${2:?--sections needs names}"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
        *) out="$1" ;;
    esac
    shift
done
if [ -z "$out" ]; then
    echo "gpu_check.sh: give an output folder (or set OUT)" >&2
    exit 2
fi
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 2
cd "$(dirname "$0")/../.." || exit 2
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

limited() {  # limited SECONDS COMMAND...: under coreutils' timeout where there is one
    local seconds="$1"
    shift
    if command -v timeout >/dev/null; then timeout --kill-after=5 "$seconds" "$@"; else "$@"; fi
}

if ls .whl/*.whl >/dev/null 2>&1; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")"
    if limited 20 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" .whl/*.whl >>"$out/gpu_check.log" 2>&1; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        echo "gpu_check.sh: installed $(ls .whl/*.whl | wc -l) carried wheel(s) into $site"
    else
        echo "gpu_check.sh: the carried wheels did not install (see gpu_check.log); going on without them"
    fi
fi

args=(--out "$out" --budget "$budget")
[ -n "$dry" ] && args+=("$dry")
[ -n "$sections" ] && args+=(--sections "$sections")
# a last resort at the budget plus 15 s (the sections keep to the budget themselves): stopped,
# gpu_check.py ends its section's processes and writes the table with what finished. The default
# 440 s, the wheels' 20 s at most and this margin keep the whole call under 8 minutes.
limited "$((${budget%.*} + 15))" "$PYTHON" bench/gpu/gpu_check.py "${args[@]}"
status=$?
[ "$status" -eq 124 ] && echo "gpu_check.sh: stopped at the budget's margin; $out/gpu_check.md holds what finished"
exit "$status"
