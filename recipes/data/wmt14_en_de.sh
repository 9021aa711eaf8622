#!/usr/bin/env bash
# WMT14 En-De raw data: `download RAW_DIR` (the official archives) or `smoke RAW_DIR` (the toy
# corpus under the official names: three training corpora, an SGML test set). Run by the
# pipeline's raw_data job when a file is missing.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

download() {
  local wmt13=https://www.statmt.org/wmt13 wmt14=https://www.statmt.org/wmt14
  fetch_tgz "$wmt13/training-parallel-europarl-v7.tgz" "$RAW_DIR" "$RAW_DIR/training/europarl-v7.de-en.de"
  fetch_tgz "$wmt13/training-parallel-commoncrawl.tgz" "$RAW_DIR" "$RAW_DIR/commoncrawl.de-en.de"
  fetch_tgz "$wmt14/training-parallel-nc-v9.tgz" "$RAW_DIR" "$RAW_DIR/training/news-commentary-v9.de-en.de"
  fetch_tgz "$wmt14/dev.tgz" "$RAW_DIR" "$RAW_DIR/dev/newstest2013.de"
  fetch_tgz "$wmt14/test-full.tgz" "$RAW_DIR" "$RAW_DIR/test-full/newstest2014-deen-ref.de.sgm"
}

smoke_layout() {
  local toy="$RAW_DIR/toy" lang
  smoke_corpus "$toy"
  mkdir -p "$RAW_DIR/training" "$RAW_DIR/dev" "$RAW_DIR/test-full"
  for lang in en de; do
    sed -n '1,300p' "$toy/train.$lang" >"$RAW_DIR/training/europarl-v7.de-en.$lang"
    sed -n '301,500p' "$toy/train.$lang" >"$RAW_DIR/commoncrawl.de-en.$lang"
    sed -n '501,$p' "$toy/train.$lang" >"$RAW_DIR/training/news-commentary-v9.de-en.$lang"
    cp "$toy/valid.$lang" "$RAW_DIR/dev/newstest2013.$lang"
  done
  as_sgml "$toy/test.en" "$RAW_DIR/test-full/newstest2014-deen-src.en.sgm"
  as_sgml "$toy/test.de" "$RAW_DIR/test-full/newstest2014-deen-ref.de.sgm"
}

data_main "$@"
