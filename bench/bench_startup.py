"""Start-up of the loop's stage processes against the run's wall time (limit: 10%).

Reads metrics/startup/*.json, which every stage writes as it ends (stage.begin): its start-up
(process start to ready to work, the heavy libraries it needs imported) and its wall time.
Run it after `dvc repro` of the default loop; it measures nothing by itself.
"""

import json
import sys
from pathlib import Path

LIMIT = 0.10


def main() -> int:
    entries = [json.loads(path.read_text()) for path in sorted(Path("metrics/startup").glob("*.json"))]
    entries = [entry for entry in entries if "wall_s" in entry]
    if not entries:
        print("no metrics/startup/*.json with a wall time: run `dvc repro` first")
        return 0
    for entry in sorted(entries, key=lambda entry: -entry["startup_s"]):
        print(f"{entry['stage']:>14}  start-up {entry['startup_s']:6.2f} s of {entry['wall_s']:7.2f} s")
    startup = sum(entry["startup_s"] for entry in entries)
    wall = sum(entry["wall_s"] for entry in entries)
    ratio = startup / wall
    print(f"{len(entries)} stages: start-up {startup:.1f} s of {wall:.1f} s = {ratio:.1%} "
          f"(limit {LIMIT:.0%}: {ratio / LIMIT:.2f}x the limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
