#!/usr/bin/env bash
# The GPU check (bench/gpu/): on any machine with a GPU, from anywhere,
#   bash bench/gpu_check.sh [OUTDIR] [--budget SECONDS] [--sections a,b,...] [--dry-run]
# (bash bench/gpu_check.sh --help says more).
exec bash "$(dirname "$0")/gpu/gpu_check.sh" "$@"
