"""sass_agg.py: instructions per source line, and the long backward branches (loops), of each
megakernel build in `nvdisasm -g -c` output (scripts/sass_profile.sh); also the parser that
scripts/stall_by_line.py uses.
    python3 scripts/sass_agg.py mk.sass[.gz]
"""
import collections
import gzip
import re
import sys


def functions(path):
    """(name, body) of every function in an nvdisasm listing (plain or gzipped)."""
    text = (gzip.open(path, 'rt') if path.endswith('.gz') else open(path)).read()
    parts = re.split(r'\n\s*\.text\.(\S+):', text)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def instructions(body):
    """Per instruction, in order: (address, text, innermost (file, line), inlined-at chain from the
    inside out, the labels that name its address)."""
    out, cur, chain, labels = [], None, [], []
    for line in body.split('\n'):
        m = re.search(r'//## File "([^"]+)", line (\d+)(.*)', line)
        if m:
            cur = (m.group(1).split('/')[-1], int(m.group(2)))
            chain = [(f.split('/')[-1], int(n)) for f, n in re.findall(r'inlined at "([^"]+)", line (\d+)', m.group(3))]
            continue
        m = re.match(r'\s*(\.L_\w+):', line)
        if m:
            labels.append(m.group(1))
            continue
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip(), cur, chain, labels))
            labels = []
    return out


def main():
    for name, body in functions(sys.argv[1]):
        if 'megakernel' not in name:
            continue
        ins = instructions(body)
        per_line = collections.Counter(src for _, _, src, _, _ in ins)
        per_file = collections.Counter(src[0] if src else None for _, _, src, _, _ in ins)
        address = {lab: a for a, _, _, _, labs in ins for lab in labs}
        spans = []
        for a, text, src, _, _ in ins:
            b = re.search(r'\bBRA\b.*?(?:\((\.L_\w+)\)|(0x[0-9a-f]+))', text)
            if b:
                t = address.get(b.group(1), -1) if b.group(1) else int(b.group(2), 16)
                if 0 <= t < a:
                    spans.append((a - t, a, t, src))
        print(f"== {name}: {len(ins)} instructions ({len(ins) * 16} bytes)")
        for f, c in per_file.most_common():
            print(f"  {f}: {c}")
        print("  top lines:")
        for k, c in per_line.most_common(50):
            print(f"    {k}: {c}")
        print("  backward branches over 2 KB (bytes, from, to, source):")
        for sp, a, t, src in sorted(spans, reverse=True)[:30]:
            if sp > 2048:
                print(f"    {sp:7d} {a:#x} -> {t:#x} {src}")


if __name__ == '__main__':
    main()
