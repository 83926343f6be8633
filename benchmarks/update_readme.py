"""Copy the benchmark tables from benchmarks/results/*.md into README.md between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` markers, so that the numbers
in the README are exactly the ones the benchmark scripts wrote."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in re.findall(r"<!-- results:([\w-]+) -->", text):
        md = ROOT / "benchmarks" / "results" / f"{name}.md"
        if not md.exists():
            continue
        table = "\n".join(line for line in md.read_text().splitlines() if not line.startswith("# ")).strip()
        text = re.sub(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->",
                      f"<!-- results:{name} -->\n{table}\n<!-- /results:{name} -->", text, flags=re.S)
    readme.write_text(text)


if __name__ == "__main__":
    main()
