#!/usr/bin/env bash
# Multi30k task 1 raw data: `download RAW_DIR` (github.com/multi30k/dataset, gunzipped) or
# `smoke RAW_DIR` (the toy corpus under Multi30k's names). Run by the pipeline's raw_data job.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

download() {
  local url=https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw f
  for f in train.en train.de val.en val.de test_2016_flickr.en test_2016_flickr.de; do
    [ -e "$RAW_DIR/$f" ] && continue
    fetch "$url/$f.gz" "$RAW_DIR/downloads/$f.gz"
    gunzip -c "$RAW_DIR/downloads/$f.gz" >"$RAW_DIR/$f.part"
    mv "$RAW_DIR/$f.part" "$RAW_DIR/$f"
  done
}

smoke_layout() {
  local toy="$RAW_DIR/toy" lang
  smoke_corpus "$toy"
  for lang in en de; do
    cp "$toy/train.$lang" "$RAW_DIR/train.$lang"
    cp "$toy/valid.$lang" "$RAW_DIR/val.$lang"
    cp "$toy/test.$lang" "$RAW_DIR/test_2016_flickr.$lang"
  done
}

data_main "$@"
