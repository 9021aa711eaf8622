#!/usr/bin/env bash
# IWSLT15 Th-En raw data: `download RAW_DIR` (WIT3's th-en.tgz; IWSLT_URL= to use a mirror) or
# `smoke RAW_DIR` (the toy corpus, source side as "th", under WIT3's names and formats: train.tags,
# XML dev2010 and the tst2012 and tst2013 test sets). Run by the pipeline's raw_data job.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

download() {
  fetch_tgz "${IWSLT_URL:-https://wit3.fbk.eu/archive/2015-01/texts/th/en/th-en.tgz}" "$RAW_DIR" \
    "$RAW_DIR/th-en/train.tags.th-en.th"
}

smoke_layout() {
  local toy="$RAW_DIR/toy" d="$RAW_DIR/th-en" s
  smoke_corpus "$toy"
  mkdir -p "$d"
  as_iwslt_tags "$toy/train.en" "$d/train.tags.th-en.th"
  as_iwslt_tags "$toy/train.de" "$d/train.tags.th-en.en"
  as_iwslt_xml "$toy/valid.en" "$d/IWSLT15.TED.dev2010.th-en.th.xml"
  as_iwslt_xml "$toy/valid.de" "$d/IWSLT15.TED.dev2010.th-en.en.xml"
  for s in tst2012 tst2013; do  # the same small test set under each name: the concatenation is exercised
    as_iwslt_xml "$toy/test.en" "$d/IWSLT15.TED.$s.th-en.th.xml"
    as_iwslt_xml "$toy/test.de" "$d/IWSLT15.TED.$s.th-en.en.xml"
  done
}

data_main "$@"
