#!/usr/bin/env bash
# Runs every fuzz target for a fixed time (default 60 s each) on the stable toolchain:
#   cargo install cargo-fuzz      # once
#   fuzz/run.sh [SECONDS] [TARGET...]
# New inputs go to fuzz/corpus/<target>/ (not committed); a failing input is left in
# fuzz/artifacts/<target>/: fix the bug, then copy the input into
# fuzz/regressions/<target>/ so that `cargo test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(document manifest info render)
# `-s none`: no sanitizer, which needs a nightly compiler; coverage still guides.
cargo fuzz build -s none -O
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    extra=()
    [ -d "fuzz/regressions/$target" ] && extra+=("fuzz/regressions/$target")
    echo "== $target: ${seconds}s"
    cargo fuzz run -s none -O "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" "${extra[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
        grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)|panicked|SUMMARY|Test unit written'
done
