#!/usr/bin/env bash
# Open a `vostool eval --report` page in headless Chromium and check that every image loads.
#
#   scripts/check-report.sh DIR/report.html [SCREENSHOT.png]
#
# A copy of the page with a small inline script (beside it, so relative paths resolve the
# same way) marks each <img> that did not load; Chromium's --dump-dom prints the result.
# Exit 0 when every image loaded, 1 when one did not, 2 on usage or a missing browser.
# CHROMIUM=/path/to/chrome picks the browser (default: chromium, chromium-browser, google-chrome).
set -euo pipefail

page=${1:?usage: scripts/check-report.sh DIR/report.html [SCREENSHOT.png]}
shot=${2:-}
[[ -f $page ]] || { echo "no such page: $page" >&2; exit 2; }
browser=${CHROMIUM:-}
if [[ -z $browser ]]; then
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null; then browser=$b; break; fi
  done
fi
[[ -n $browser ]] || { echo "no Chromium found (apt-get install chromium, or set CHROMIUM)" >&2; exit 2; }

dir=$(cd "$(dirname "$page")" && pwd)
check="$dir/.report-check-$$.html"
profile=$(mktemp -d)
trap 'rm -rf "$profile" "$check"' EXIT
script='<script>window.addEventListener("load",function(){var imgs=Array.prototype.slice.call(document.images);'
script+='var bad=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0);}).map(function(i){return i.getAttribute("src");});'
script+='var p=document.createElement("pre");p.id="image-check";p.textContent="IMAGES "+imgs.length+" BROKEN "+bad.length+(bad.length?" "+bad.join(" "):"");'
script+='document.body.appendChild(p);});</script>'
sed "s#</body>#${script//&/\\&}</body>#" "$page" > "$check"

flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run
       --disable-dev-shm-usage --user-data-dir="$profile" --virtual-time-budget=10000)
dom=$(timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$check" 2>/dev/null || true)
result=$(grep -o 'IMAGES [0-9]* BROKEN [0-9]*[^<]*' <<<"$dom" | head -n1 || true)
if [[ -z $result ]]; then
  echo "the page did not finish loading in $browser" >&2
  exit 1
fi
echo "$result"
if [[ -n $shot ]]; then
  timeout 120 "$browser" "${flags[@]}" --hide-scrollbars --window-size=1400,2400 \
    --screenshot="$(realpath -m "$shot")" "file://$dir/$(basename "$page")" >/dev/null 2>&1 || true
  [[ -s $shot ]] && echo "screenshot: $shot"
fi
[[ $result == *" BROKEN 0"* ]]
