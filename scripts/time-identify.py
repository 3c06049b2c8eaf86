#!/usr/bin/env python3
"""Times `identify` of one query with several cratedigger binaries, alternating them.

usage: scripts/time-identify.py DB QUERY RUNS BIN [BIN...]

Each run is `/usr/bin/time -f "%e %M" BIN --db DB identify --json QUERY`; the binaries take
turns, so that a busy machine slows them alike. Prints, per binary, the median and range of
the wall time, the medians of the answer's stage timings, and the range of the peak RSS.
Compare binaries within one call: absolute times drift between sittings (BENCHMARKS.md).
"""
import json
import statistics
import subprocess
import sys


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    db, query, runs, bins = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    res = {b: [] for b in bins}
    for _ in range(runs):
        for b in bins:
            out = subprocess.run(
                ["/usr/bin/time", "-f", "%e %M", b, "--db", db, "identify", "--json", query],
                capture_output=True, text=True, check=True)
            wall, rss_kb = out.stderr.strip().split("\n")[-1].split()
            t = json.loads(out.stdout)["timings"]
            res[b].append((float(wall), t["fingerprint_s"], t["lookup_s"], t["match_s"],
                           t["verify_s"], int(rss_kb) / 1024))
    for b in bins:
        cols = list(zip(*res[b]))
        med = [statistics.median(c) for c in cols]
        print(f"{b}: wall median {med[0]:.2f} s ({min(cols[0]):.2f}-{max(cols[0]):.2f}); "
              f"fingerprint {med[1]:.3f} lookup {med[2]:.3f} match {med[3]:.3f} "
              f"verify {med[4]:.3f} s; peak RSS {min(cols[5]):.0f}-{max(cols[5]):.0f} MB")


if __name__ == "__main__":
    main()
