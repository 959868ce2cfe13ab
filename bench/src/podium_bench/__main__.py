"""``python -m podium_bench render RESULTS_JSON OUTPUT_MD``: rewrite the Markdown
report from a results.json (and the limits.md beside it), without measuring."""

import sys
from pathlib import Path

from podium_bench.report import render

if len(sys.argv) == 4 and sys.argv[1] == "render":
    render(Path(sys.argv[2]), Path(sys.argv[3]))
else:
    sys.exit("usage: python -m podium_bench render RESULTS_JSON OUTPUT_MD")
