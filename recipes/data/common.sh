#!/usr/bin/env bash
# What the data scripts share: downloads that resume and appear only when complete, and the
# formats the SMOKE=1 corpus is written in. Sourced by recipes/data/*.sh, never run.
set -euo pipefail

log() { printf '%s | data | %s\n' "$(date '+%F %T')" "$*" >&2; }

# fetch URL DEST: download once, resuming a partial download; DEST appears only when complete.
fetch() {
  local url="$1" dest="$2"
  [ -s "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  log "downloading $url"
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 3 -C - -o "$dest.part" "$url" || { fetch_failed "$url" "$dest"; return 1; }
  elif command -v wget >/dev/null 2>&1; then
    wget -c -O "$dest.part" "$url" || { fetch_failed "$url" "$dest"; return 1; }
  else
    log "error: neither curl nor wget is installed; download $url yourself into $(dirname "$dest")"
    return 1
  fi
  mv "$dest.part" "$dest"
}

fetch_failed() {
  log "error: could not download $1 (offline, or the file moved). Download it by hand to $2,"
  log "or unpack the data into the raw folder (raw_dir, RAW_DIR=) with the file names listed in docs/recipes.md."
}

# fetch_tgz URL DIR WANTED: unless the file WANTED exists, download the archive and unpack it in DIR.
fetch_tgz() {
  local url="$1" dir="$2" wanted="$3" archive
  [ -e "$wanted" ] && return 0
  archive="$dir/downloads/$(basename "$url")"
  fetch "$url" "$archive"
  tar -xzf "$archive" -C "$dir"
  [ -e "$wanted" ] || { log "error: $archive did not contain $wanted"; return 1; }
}

# smoke_corpus DIR: the toy corpus as DIR/{train,valid,test}.{en,de} (600 / 30 / 30 pairs).
smoke_corpus() {
  [ -e "$1/test.de" ] || fairseq-seqkd toy-corpus "$1" --train-size 600 --valid-size 30 --test-size 30 >/dev/null
}

# as_sgml IN OUT: one sentence per line -> WMT SGML (one <seg> per line in one <doc>).
as_sgml() {
  awk 'BEGIN { print "<srcset setid=\"smoke\" srclang=\"any\">"; print "<doc docid=\"smoke-1\" genre=\"news\">" }
       { printf "<seg id=\"%d\">%s</seg>\n", NR, $0 }
       END { print "</doc>"; print "</srcset>" }' "$1" >"$2"
}

# as_iwslt_xml IN OUT: -> IWSLT XML test file (talk metadata lines, then the <seg> lines).
as_iwslt_xml() {
  awk 'BEGIN { print "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"; print "<mteval>";
               print "<srcset setid=\"smoke\" srclang=\"any\">"; print "<doc docid=\"1\" genre=\"lectures\">";
               print "<url>http://www.ted.com/talks/smoke</url>"; print "<talkid>1</talkid>" }
       { printf "<seg id=\"%d\"> %s </seg>\n", NR, $0 }
       END { print "</doc>"; print "</srcset>"; print "</mteval>" }' "$1" >"$2"
}

# as_iwslt_tags IN OUT: -> IWSLT train.tags file (a talk's metadata lines every 100 sentences).
as_iwslt_tags() {
  awk '(NR - 1) % 100 == 0 { n++; printf "<url>http://www.ted.com/talks/smoke%d</url>\n<keywords>smoke</keywords>\n", n;
                             printf "<talkid>%d</talkid>\n<title>Talk %d</title>\n", n, n }
       { print }' "$1" >"$2"
}

# data_main "$@": dispatch `download RAW_DIR` or `smoke RAW_DIR` to the script's functions.
data_main() {
  local mode="${1:-}" raw="${2:-}"
  case "$mode" in download|smoke) ;; *) echo "usage: $0 download|smoke RAW_DIR" >&2; exit 2;; esac
  [ -n "$raw" ] || { echo "usage: $0 $mode RAW_DIR" >&2; exit 2; }
  mkdir -p "$raw"
  RAW_DIR="$(cd "$raw" && pwd)"
  if [ "$mode" = smoke ]; then smoke_layout; else download; fi
}
