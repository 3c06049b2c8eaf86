#!/usr/bin/env python3
"""Per-band SNR of each benchmark sample inside its query, rebuilt with sox, ffmpeg and
rubberband only (no engine code).

usage: scripts/inband-snr.py SPLIT SUITE [BENCH_OUT]

For every query of SPLIT/SUITE with a sample, the sample is made again as the benchmark
made it (the reference excerpt decoded with ffmpeg, the transform of truth.json with sox or
rubberband, the mix gain), and its energy is compared with the query's over the sample's
span in three bands: below 125 Hz (`lo`), the fingerprint's band 125-5,600 Hz (`in`) and
above (`hi`). The query was normalised after mixing, so its scale is recovered from the
full band, where the benchmark set sample and rest equal (0 dB): the rest's energy in a
band is then the query's less the sample's (the two are uncorrelated). Prints one line per
sample: `name condition lo=dB loshare=... in=dB inshare=... hi=dB hishare=...`, where a
share is the part of the sample's own energy in that band. Only one-sample queries at
0 dB are meaningful (the core suites). BENCHMARKS.md, session 23.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

BANDS = [("lo", "20-125"), ("in", "125-5600"), ("hi", "5600-20000")]


def rms_db(path, band=None, trim=None):
    cmd = ["sox", path, "-n"]
    if trim:
        cmd += ["trim", str(trim[0]), str(trim[1])]
    if band:
        cmd += ["sinc", band]
    cmd += ["stats"]
    err = subprocess.run(cmd, capture_output=True, text=True).stderr
    for line in err.splitlines():
        if line.startswith("RMS lev dB"):
            return float(line.split()[3])
    raise RuntimeError(f"sox stats gave no RMS for {path}: {err}")


def energy(db):
    return 10 ** (db / 10)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    split, suite = sys.argv[1], sys.argv[2]
    out = sys.argv[3] if len(sys.argv) > 3 else os.path.expanduser("~/bench-out")
    truth = json.load(open(os.path.join(out, "truth.json")))
    with tempfile.TemporaryDirectory() as work:
        ex, st, qw = (os.path.join(work, n) for n in ("ex.wav", "st.wav", "q.wav"))
        for t in truth:
            if t["split"] != split or t["suite"] != suite or len(t["samples"]) != 1:
                continue
            s, ps = t["samples"][0], t["params"]["samples"][0]
            subprocess.run(["ffmpeg", "-y", "-v", "quiet", "-ss", str(s["ref_start_s"]), "-t",
                            str(ps["excerpt_s"]), "-i", s["ref_path"], "-ar", "44100", ex],
                           check=True)
            tf = ps["transform"]
            if tf["tool"] == "sox":
                subprocess.run(["sox", ex, st] + tf["effect"].split(), check=True,
                               capture_output=True)
            elif tf["tool"] == "rubberband":
                subprocess.run(["rubberband"] + tf["effect"].split() + [ex, st], check=True,
                               capture_output=True)
            else:
                continue
            subprocess.run(["ffmpeg", "-y", "-v", "quiet", "-i", t["query"], qw], check=True)
            span = (s["query_start_s"], ps["length_in_query_s"])
            gain_db = 20 * math.log10(ps["gain"])
            full_sample = rms_db(st) + gain_db
            scale = energy(rms_db(qw, trim=span)) / (2 * energy(full_sample))
            fields = []
            for tag, band in BANDS:
                e_sample = energy(rms_db(st, band) + gain_db)
                e_rest = max(energy(rms_db(qw, band, span)) / scale - e_sample, 1e-12)
                fields.append(f"{tag}={10 * math.log10(e_sample / e_rest):+.1f}")
                fields.append(f"{tag}share={e_sample / energy(full_sample):.2f}")
            print(os.path.basename(t["query"]), t["condition"], " ".join(fields), flush=True)


if __name__ == "__main__":
    main()
