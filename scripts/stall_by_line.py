"""stall_by_line.py: Nsight Compute's per-instruction stall samples of the short build, summed per
source line (the outermost inlined call site), from the two files scripts/stall_profile.sh and
scripts/sass_profile.sh leave: the source page as CSV and nvdisasm's output with line info.
    python3 scripts/stall_by_line.py sass_samples.csv.gz mk.sass.gz [kernel-substring]
"""
import collections
import csv
import gzip
import sys

from sass_agg import functions, instructions


def main():
    kernel = sys.argv[3] if len(sys.argv) > 3 else 'ILi0E'
    rows = list(csv.reader(gzip.open(sys.argv[1], 'rt')))
    hdr, data = rows[1], rows[2:]
    ins = next(instructions(body) for name, body in functions(sys.argv[2]) if kernel in name)
    if len(ins) != len(data):
        sys.exit(f"{len(data)} profiled instructions but {len(ins)} disassembled: not the same build")
    col = {h: i for i, h in enumerate(hdr)}
    reasons = [h for h in hdr if h.startswith('stall_') and 'Not Issued' not in h]
    total, by_line = collections.Counter(), collections.defaultdict(collections.Counter)
    for r, (_, _, cur, chain, _) in zip(data, ins):
        site = chain[-1] if chain else cur
        for rs in reasons:
            v = int(r[col[rs]] or 0)
            by_line[site][rs] += v
            total[rs] += v
    n = sum(total.values())
    print('samples', n, dict(total.most_common()))
    for site, c in sorted(by_line.items(), key=lambda kv: -sum(kv[1].values()))[:45]:
        s = sum(c.values())
        print(f"{s:7d} {100 * s / n:5.1f}% {site} " + ", ".join(f"{k[6:]}:{v}" for k, v in c.most_common(4)))


if __name__ == '__main__':
    main()
