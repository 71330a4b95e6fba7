# sass_agg.py: instructions per source line, and the long backward branches (loops), of each
# megakernel build in `nvdisasm -g -c` output (scripts/sass_profile.sh).
import collections
import re
import sys

txt = open(sys.argv[1]).read()
funcs = re.split(r'\n\s*\.text\.(\S+):', txt)
for i in range(1, len(funcs), 2):
    name, body = funcs[i], funcs[i + 1]
    if 'megakernel' not in name:
        continue
    cur = None
    per_line, per_file = collections.Counter(), collections.Counter()
    labels, pending, branches, n, last = {}, [], [], 0, 0
    for line in body.split('\n'):
        m = re.search(r'//## File "([^"]+)", line (\d+)', line)
        if m:
            cur = (m.group(1).split('/')[-1], int(m.group(2)))
            continue
        m = re.match(r'\s*(\.L_\w+):', line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*)', line)
        if not m:
            continue
        addr, ins = int(m.group(1), 16), m.group(2)
        for lab in pending:
            labels[lab] = addr
        pending = []
        n += 1
        last = addr
        per_line[cur] += 1
        per_file[cur[0] if cur else None] += 1
        b = re.search(r'\bBRA\b[^;]*?(?:\((\.L_\w+)\)|(0x[0-9a-f]+))', ins)
        if b:
            branches.append((addr, b.group(1) or int(b.group(2), 16), cur))
    print(f"== {name}: {n} instructions ({n * 16} bytes)")
    for f, c in per_file.most_common():
        print(f"  {f}: {c}")
    print("  top lines:")
    for k, c in per_line.most_common(50):
        print(f"    {k}: {c}")
    spans = []
    for addr, t, src in branches:
        t = labels.get(t, -1) if isinstance(t, str) else t
        if 0 <= t < addr:
            spans.append((addr - t, addr, t, src))
    print("  backward branches over 2 KB (bytes, from, to, source):")
    for sp, a, t, src in sorted(spans, reverse=True)[:30]:
        if sp > 2048:
            print(f"    {sp:7d} {a:#x} -> {t:#x} {src}")
