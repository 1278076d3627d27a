#!/usr/bin/env python3
"""Helpers for scripts/bench and scripts/bench-kms (not a cargo bench: plain Python 3).

    benchlib.py manifest OUT FILES DIRS [SEED]     a source-tree-like list of files (path, size)
    benchlib.py create MANIFEST DEST               create+write+fsync every file; prints seconds
    benchlib.py stat MANIFEST DEST                 lstat every file; prints seconds
    benchlib.py read DEST [JOBS]                   walk DEST, read every file; prints seconds
    benchlib.py fio-iops FIO_JSON                  read IOPS from fio --output-format=json
    benchlib.py status-get JSON FIELD...           fields of `kmsfs status --json` (a.b for nested)
    benchlib.py moto-ceiling URL KEY_ARN SECONDS   moto's max GenerateDataKey/s (direct, concurrent)
    benchlib.py create-key URL                     create a KMS key in moto; prints its ARN
    benchlib.py summary RESULTS MODE               print the markdown table(s) of a run

Times are taken inside the process (time.perf_counter) around the file system work only.
"""

import json
import os
import random
import statistics
import sys
import threading
import time

EXTS = [".rs", ".c", ".h", ".py", ".md", ".txt", ".json", ".toml", ".go", ".js"]


def manifest(out, files, dirs, seed=1):
    """`dirs` directories nested up to 4 deep, `files` files spread over them (a few big
    directories, many small ones), sizes log-uniform between 100 B and 12 KiB."""
    rnd = random.Random(seed)
    paths = ["."]
    depth = {".": 0}
    for i in range(1, dirs):
        parent = rnd.choice([p for p in paths if depth[p] < 4])
        p = os.path.join(parent, f"mod{i:02d}") if parent != "." else f"mod{i:02d}"
        paths.append(p)
        depth[p] = depth[parent] + 1
    weights = [rnd.paretovariate(1.2) for _ in paths]
    lines = []
    for j in range(files):
        d = rnd.choices(paths, weights)[0]
        name = f"file{j:05d}{rnd.choice(EXTS)}"
        size = int(round(100 * (12288 / 100) ** rnd.random()))
        lines.append(f"{size}\t{name if d == '.' else os.path.join(d, name)}")
    with open(out, "w") as f:
        f.write("\n".join(f"D\t{p}" for p in paths[1:]) + "\n")
        f.write("\n".join(lines) + "\n")


def load_manifest(path):
    dirs, files = [], []
    with open(path) as f:
        for line in f:
            a, b = line.rstrip("\n").split("\t", 1)
            if a == "D":
                dirs.append(b)
            else:
                files.append((b, int(a)))
    return dirs, files


def create(man, dest):
    dirs, files = load_manifest(man)
    data = os.urandom(16384)
    t = time.perf_counter()
    os.mkdir(dest)
    for d in dirs:
        os.mkdir(os.path.join(dest, d))
    for i, (p, size) in enumerate(files):
        fd = os.open(os.path.join(dest, p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        off = (i * 997) % 4096
        os.write(fd, data[off:off + size])
        os.fsync(fd)
        os.close(fd)
    print(f"{time.perf_counter() - t:.6f}")


def stat_all(man, dest):
    _, files = load_manifest(man)
    t = time.perf_counter()
    for p, _ in files:
        os.lstat(os.path.join(dest, p))
    print(f"{time.perf_counter() - t:.6f}")


def read_all(dest, jobs=1):
    """Walk in readdir order (like tar/cp -r/grep -r) and read each file; with jobs > 1 the
    walk is split by file index over threads (reads release the GIL)."""
    t = time.perf_counter()
    paths = []
    for root, _, names in os.walk(dest):
        paths.extend(os.path.join(root, n) for n in names)

    def work(part):
        for p in part:
            with open(p, "rb", buffering=0) as f:
                while f.read(65536):
                    pass

    if jobs <= 1:
        work(paths)
    else:
        ts = [threading.Thread(target=work, args=(paths[i::jobs],)) for i in range(jobs)]
        for x in ts:
            x.start()
        for x in ts:
            x.join()
    print(f"{time.perf_counter() - t:.6f}")


def append(dest, n=20000):
    """A log writer: `n` appends of 100 bytes to one new file, one write(2) each."""
    line = b"x" * 99 + b"\n"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    t = time.perf_counter()
    for _ in range(n):
        os.write(fd, line)
    print(f"{time.perf_counter() - t:.6f}")
    os.close(fd)


def fio_iops(path):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON
    j = json.loads(text[text.index("{"):])
    print(f"{sum(job['read']['iops'] for job in j['jobs']):.1f}")


def status_get(path, fields):
    with open(path) as f:
        j = json.load(f)
    out = []
    for fld in fields:
        v = j
        for k in fld.split("."):
            v = v.get(k, 0) if isinstance(v, dict) else 0
        out.append(str(v))
    print(" ".join(out))


def create_key(url):
    import boto3
    c = boto3.client("kms", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing")
    print(c.create_key(Description="kmsfs bench")["KeyMetadata"]["Arn"])


def moto_ceiling(url, key, seconds):
    """GenerateDataKey/s straight to moto: boto3 in one thread, then raw HTTP from 1, 4 and 16
    threads (moto does not check signatures, so raw requests skip boto3's client-side cost).
    Prints `best boto3_1 raw_1 raw_4 raw_16`."""
    import http.client
    import urllib.parse
    import boto3
    u = urllib.parse.urlsplit(url)
    c = boto3.client("kms", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        c.generate_data_key(KeyId=key, KeySpec="AES_256")
        n += 1
    boto = n / (time.perf_counter() - t0)
    body = json.dumps({"KeyId": key, "KeySpec": "AES_256"})
    headers = {"Content-Type": "application/x-amz-json-1.1",
               "X-Amz-Target": "TrentService.GenerateDataKey",
               "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0"}

    def raw(threads):
        counts = [0] * threads
        stop = time.perf_counter() + seconds

        def loop(i):
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            while time.perf_counter() < stop:
                conn.request("POST", "/", body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit(f"moto answered {r.status}")
                counts[i] += 1
            conn.close()

        t = time.perf_counter()
        ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        return sum(counts) / (time.perf_counter() - t)

    r1, r4, r16 = raw(1), raw(4), raw(16)
    print(f"{max(boto, r1, r4, r16):.0f} {boto:.0f} {r1:.0f} {r4:.0f} {r16:.0f}")


# ---------------------------------------------------------------------------------------------
# summary: RESULTS is a TSV of `kind  workload  fs  round  value...` lines written by the scripts.

def med(xs):
    return statistics.median(xs) if xs else None


def fmt(v, unit):
    if v is None:
        return "–"
    if unit in ("MB/s", "IOPS", "files/s"):
        return f"{v:,.0f}"
    return f"{v:.2f}" if v >= 10 else f"{v:.3f}"


def load_results(path):
    res, kms, meta, rss = {}, {}, {}, {}
    with open(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "r":  # r workload fs round value
                res.setdefault((p[1], p[2]), []).append(float(p[4]))
                res.setdefault(("by-round", p[1], p[2]), {})[p[3]] = float(p[4])
            elif p[0] == "k":  # k workload fs round ops status_gdk status_decrypt proxy_gdk
                #                  proxy_decrypt max_in_flight pool_hits pool_misses
                kms.setdefault((p[1], p[2]), []).append(tuple(float(x) for x in p[4:]))
            elif p[0] == "m":  # m key value
                meta[p[1]] = p[2]
            elif p[0] == "rss":  # rss fs kib
                rss[p[1]] = int(p[2])
    return res, kms, meta, rss


# workload -> (label, unit, higher_is_better, target description, target check on ratio)
WORKLOADS = {
    "seqwrite": ("seq write {size} MiB + fsync", "MB/s", True, "≥ 1.5× gc", lambda r: r >= 1.5),
    "seqread": ("seq read {size} MiB, cold", "MB/s", True, "≥ 2× gc", lambda r: r >= 2.0),
    "randread": ("rand 4 KiB read, {rand} s", "IOPS", True, "≥ 1.2× gc", lambda r: r >= 1.2),
    "append": ("20,000 appends of 100 B to one file", "s", False, "", None),
    "create": ("create+write+fsync {files} files", "s", False, "≤ 0.5× gc", lambda r: r <= 0.5),
    "stat": ("stat {files} files, cold", "s", False, "≤ 1× gc", lambda r: r <= 1.0),
    "read": ("read {files} files, cold", "s", False, "≤ 1× gc", lambda r: r <= 1.0),
    "read4": ("read {files} files, cold, 4 readers", "s", False, "", None),
    "lsR": ("ls -lR of the tree, cold", "s", False, "", None),
}


def paired(res, w, a, b):
    """Median over rounds of the within-round ratio a/b (both measured in the same round, so
    slow spells of the machine that hit one round hit both sides)."""
    ra, rb = res.get(("by-round", w, a), {}), res.get(("by-round", w, b), {})
    return med([ra[k] / rb[k] for k in ra if k in rb and rb[k]])


def summary(path, mode):
    res, kms, meta, rss = load_results(path)
    fss = meta["fs"].split(",")
    ref = meta.get("ref", "gocryptfs")
    cmp_ = meta.get("cmp", "kmsfs-local")
    subst = {"size": meta.get("size_mb", "?"), "files": meta.get("files", "?"),
             "rand": meta.get("rand_secs", "?")}
    order = [w for w in WORKLOADS if any((w, fs) in res for fs in fss)]
    print(f"Medians of {meta.get('rounds')} interleaved rounds. MB/s and IOPS: higher is better; "
          f"s: seconds, lower is better. ratio = {cmp_} / {ref} in the row's unit: of the medians, "
          f"and (paired) the median of the per-round ratios. Targets are judged on the paired "
          f"ratio.\n")
    head = ["workload", "unit"] + fss + [f"ratio {cmp_}/{ref}", "paired"]
    if mode == "main":
        head += ["target", "met?"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for w in order:
        label, unit, hib, tdesc, tcheck = WORKLOADS[w]
        row = [label.format(**subst), unit]
        meds = {fs: med(res.get((w, fs), [])) for fs in fss}
        row += [fmt(meds[fs], unit) for fs in fss]
        a, b = meds.get(cmp_), meds.get(ref)
        ratio = a / b if a is not None and b else None
        row.append(f"{ratio:.2f}" if ratio is not None else "–")
        pr = paired(res, w, cmp_, ref)
        row.append(f"{pr:.2f}" if pr is not None else "–")
        if mode == "main":
            ok = "–" if pr is None or tcheck is None else ("yes" if tcheck(pr) else "**no**")
            if w == "seqread" and pr is not None and meds.get("plain"):
                frac = paired(res, w, cmp_, "plain")
                ok += f" ({frac:.0%} of plain; target ≥ 50 %: {'yes' if frac >= 0.5 else '**no**'})"
            row += [tdesc or "–", ok]
        print("| " + " | ".join(row) + " |")
    if rss:
        print("\nPeak RSS (VmHWM) of each kmsfs daemon over the whole run (target ≤ 64 MiB + key cache):\n")
        print("| daemon | VmHWM |")
        print("|---|---|")
        for fs in fss:
            if fs in rss:
                print(f"| {fs} | {rss[fs] / 1024:.1f} MiB |")
    if mode == "main":
        a0 = med(res.get(("create", "kmsfs-aws-0ms"), []))
        a20 = med(res.get(("create", "kmsfs-aws-20ms"), []))
        if a0 and a20:
            r = paired(res, "create", "kmsfs-aws-20ms", "kmsfs-aws-0ms")
            print(f"\nPer-file AWS mode, small-file create time at 20 ms vs 0 ms KMS latency: "
                  f"medians {a20:.2f} s / {a0:.2f} s = {a20 / a0:.2f}×, paired **{r:.2f}×** "
                  f"(target ≤ 1.3×: {'met' if r <= 1.3 else 'MISSED'}).")
            r0 = med(res.get(("read", "kmsfs-aws-0ms"), []))
            r20 = med(res.get(("read", "kmsfs-aws-20ms"), []))
            bk = med(res.get(("create", "kmsfs-aws-bk-20ms"), []))
            if bk:
                rb = paired(res, "create", "kmsfs-aws-bk-20ms", ref)
                print(f"Bucket-key mode at 20 ms, small-file create vs {ref}: medians {bk:.2f} s / "
                      f"{med(res.get(('create', ref), [])):.2f} s, paired **{rb:.2f}×** "
                      f"(target ≤ 0.5×: {'met' if rb <= 0.5 else 'MISSED'}).")
            if r0 and r20:
                rr = paired(res, "read", "kmsfs-aws-20ms", "kmsfs-aws-0ms")
                print(f"Cold read of the tree at 20 ms vs 0 ms: medians {r20:.2f} s / {r0:.2f} s "
                      f"= {r20 / r0:.2f}×, paired **{rr:.2f}×** (issue 5 target ≤ 2×: "
                      f"{'met' if rr <= 2 else 'MISSED'}).")
    if any("aws" in fs for (_, fs) in kms):
        print_kms(kms, fss)


def per1000(xs, idx):
    return med([x[idx] / x[0] * 1000 for x in xs]) if xs else None


def ni(v):
    return "" if v is None else f"{v:.0f}"


def n0(v):
    if v is None:
        return ""
    return f"{v:.1f}" if 0 < abs(v) < 10 else f"{v:.0f}"


def print_kms(kms, fss):
    print("\nKMS calls per 1,000 operations, medians over rounds. 'KMS' columns count the HTTP "
          "requests that reached the proxy in front of moto; 'status' columns are the deltas of "
          "`kmsfs status --json` kms_calls (provider calls). GenerateDataKey includes the data-key "
          "pool's background refills that fell in the phase.\n")
    print("| mount | workload | KMS GenerateDataKey /1000 | KMS Decrypt /1000 | status GDK /1000 "
          "| status Decrypt /1000 | max KMS requests in flight | pool misses /1000 |")
    print("|---|---|---|---|---|---|---|---|")
    for fs in fss:
        if "aws" not in fs:
            continue
        for w in ("create", "stat", "lsR", "read", "read4"):
            xs = kms.get((w, fs))
            if not xs:
                continue
            print(f"| {fs} | {w} | {n0(per1000(xs, 3))} | {n0(per1000(xs, 4))} | "
                  f"{n0(per1000(xs, 1))} | {n0(per1000(xs, 2))} | {ni(med([x[5] for x in xs]))} | "
                  f"{n0(per1000(xs, 7) if len(xs[0]) > 7 else None)} |")


def summary_kms(path):
    res, kms, meta, rss = load_results(path)
    fss = meta["fs"].split(",")
    files = int(meta["files"])
    print(f"{files} small files (100 B–12 KiB, {meta.get('dirs')} dirs), medians of "
          f"{meta.get('rounds')} interleaved rounds. Create = create+write+fsync of every file; "
          f"cold read = `kmsfs forget` (keys and pool zeroized) + drop_caches, then read every file "
          f"in readdir order, one reader. KMS = HTTP requests that reached the latency proxy; "
          f"status = `kmsfs status --json` kms_calls deltas; 'vs 0 ms' compares with the same "
          f"mode at 0 ms.\n")
    head = ["mode, latency", "files created/s", "create s", "KMS GDK /1000 creates",
            "status GDK /1000 creates", "pool misses /1000 creates", "cold read s", "KMS Decrypt /1000 reads",
            "status Decrypt /1000 reads", "max KMS in flight (read)", "create vs 0 ms (paired)",
            "read vs 0 ms (paired)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for fs in fss:
        base = fs.rsplit("-", 1)[0] + "-0ms"
        c = med(res.get(("create", fs), []))
        r = med(res.get(("read", fs), []))
        c0 = med(res.get(("create", base), []))
        r0 = med(res.get(("read", base), []))
        kc = kms.get(("create", fs), [])
        kr = kms.get(("read", fs), [])
        pc = paired(res, "create", fs, base)
        pc = "–" if pc is None else f"{pc:.2f}×"
        pr = paired(res, "read", fs, base)
        pr = "–" if pr is None else f"{pr:.2f}×"
        print(f"| {meta.get('label.' + fs, fs)} | {files / c:,.0f} | {c:.2f} | {n0(per1000(kc, 3))} | "
              f"{n0(per1000(kc, 1))} | {n0(per1000(kc, 7) if kc and len(kc[0]) > 7 else None)} | {r:.2f} | {n0(per1000(kr, 4))} | {n0(per1000(kr, 2))} | "
              f"{ni(med([x[5] for x in kr]) if kr else None)} | "
              f"{pc} | {pr} |")
    if "ceiling" in meta:
        best, boto, r1, r4, r16 = meta["ceiling"].split()
        print(f"\nmoto's own ceiling, GenerateDataKey/s direct to moto (no proxy, nothing else "
              f"using it): **{best}/s** (boto3 1 thread {boto}/s; raw HTTP 1 thread {r1}/s, "
              f"4 threads {r4}/s, 16 threads {r16}/s). Per-file mode needs one GenerateDataKey per "
              f"file: {files} files need ≥ {files / float(best):.1f} s of moto at that rate.")
    if rss:
        print("\nPeak RSS (VmHWM): " + ", ".join(f"{fs} {rss[fs] / 1024:.1f} MiB" for fs in fss if fs in rss))


def main():
    a = sys.argv[1:]
    cmd = a[0]
    if cmd == "manifest":
        manifest(a[1], int(a[2]), int(a[3]), int(a[4]) if len(a) > 4 else 1)
    elif cmd == "create":
        create(a[1], a[2])
    elif cmd == "stat":
        stat_all(a[1], a[2])
    elif cmd == "read":
        read_all(a[1], int(a[2]) if len(a) > 2 else 1)
    elif cmd == "append":
        append(a[1])
    elif cmd == "fio-iops":
        fio_iops(a[1])
    elif cmd == "status-get":
        status_get(a[1], a[2:])
    elif cmd == "create-key":
        create_key(a[1])
    elif cmd == "moto-ceiling":
        moto_ceiling(a[1], a[2], float(a[3]))
    elif cmd == "summary":
        if a[2] == "kms":
            summary_kms(a[1])
        else:
            summary(a[1], a[2])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
