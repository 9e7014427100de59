#!/usr/bin/env bash
# Writes the King James Bible as plain text for `bitnet train`: one verse per line (verse numbers
# removed, wrapped lines joined), one chapter per document (chapters separated by blank lines).
#
# Source: Debian's `bible-kjv` / `bible-kjv-text` packages (the KJV text is in the public domain;
# the packages' retrieval software is "provided for unrestricted use"; see their copyright file).
#
#   scripts/prepare-kjv.sh OUT.txt
set -euo pipefail
out=${1:?usage: scripts/prepare-kjv.sh OUT.txt}
if ! command -v bible >/dev/null; then
    echo "installing Debian's bible-kjv (the KJV text and its reader)…" >&2
    apt-get install -y bible-kjv >/dev/null
fi
bible -l1000 "gen1:1-rev22:21" | python3 -c '
import re, sys
chapters, verses = [], []
for line in sys.stdin:
    line = line.rstrip("\n")
    m = re.match(r"^\s+(\d+) (.*)$", line)
    if m:
        verses.append(m.group(2).strip())
    elif line.strip() == "":
        continue
    elif re.match(r"^[1-3A-Z][A-Za-z ]* \d+$", line.strip()):
        if verses:
            chapters.append(verses)
        verses = []
    elif verses:
        verses[-1] += " " + line.strip()
if verses:
    chapters.append(verses)
sys.stdout.write("\n\n".join("\n".join(v) for v in chapters) + "\n")
print(f"{len(chapters)} chapters, {sum(map(len, chapters))} verses", file=sys.stderr)
' > "$out"
wc -c "$out" >&2
