#!/usr/bin/env python3
"""Workers and checkers of scripts/multihost (run by the script; see there)."""
import errno, hashlib, json, os, random, struct, sys, time

SECTOR = 512
HDR = struct.Struct("<2sBBIQ")  # magic, host, 0, sector index, sequence number


def sector(host, index, seq):
    """512 bytes that say who wrote them, where and when (and cannot be mistaken for others)."""
    h = HDR.pack(b"KM", host, 0, index, seq)
    return h + hashlib.shake_128(h).digest(SECTOR - len(h))


def parse(data, index):
    """(host, seq) of a self-consistent sector written for `index`, else None."""
    magic, host, zero, idx, seq = HDR.unpack_from(data)
    if magic != b"KM" or zero != 0 or idx != index or data != sector(host, idx, seq):
        return None
    return host, seq


def cmd_creates(d, prefix, n):
    """n exclusive creates of PREFIX-i in d, each holding its own name."""
    errs = 0
    for i in range(int(n)):
        name = f"{prefix}-{i}"
        try:
            fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, name.encode())
            os.close(fd)
        except OSError as e:
            errs += 1
            if errs <= 5:
                print(f"create {name}: {e}", file=sys.stderr)
    print(json.dumps({"errors": errs}))


def cmd_race(d, host, n):
    """Exclusive creates of the same names as the other host: count wins and EEXIST."""
    won, lost, other = [], 0, 0
    for i in range(int(n)):
        try:
            fd = os.open(os.path.join(d, f"same-{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            lost += 1
            continue
        except OSError as e:
            other += 1
            print(f"race same-{i}: {e}", file=sys.stderr)
            continue
        os.write(fd, host.encode())
        os.close(fd)
        won.append(i)
    print(json.dumps({"won": won, "eexist": lost, "errors": other}))


def cmd_checkfiles(d, names_json):
    """Every listed file exists and holds the expected content; the directory lists exactly them."""
    want = json.load(open(names_json))
    bad = []
    listed = set(os.listdir(d))
    missing = sorted(set(want) - listed)
    extra = sorted(listed - set(want))
    for name, content in want.items():
        try:
            with open(os.path.join(d, name), "rb") as f:
                if f.read() != content.encode():
                    bad.append(name)
        except OSError as e:
            bad.append(f"{name} ({e})")
    print(json.dumps({"listed": len(listed), "missing": missing[:5], "n_missing": len(missing),
                      "extra": extra[:5], "n_extra": len(extra), "bad": bad[:5], "n_bad": len(bad)}))


def record(host, i):
    rnd = random.Random(f"{host}-{i}")
    return f"[{host} {i:06d} ".encode() + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 600))) + b"]"


def cmd_append(path, host, n):
    """n appends, each open(O_APPEND) + write + close."""
    errs = 0
    for i in range(int(n)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, record(host, i))
            os.close(fd)
        except OSError as e:
            errs += 1
            print(f"append {i}: {e}", file=sys.stderr)
    print(json.dumps({"errors": errs}))


def cmd_appendcheck(path, host, n):
    want = b"".join(record(host, i) for i in range(int(n)))
    with open(path, "rb") as f:
        got = f.read()
    ok = got == want
    print(json.dumps({"ok": ok, "size": len(got), "want": len(want)}))
    sys.exit(0 if ok else 1)


def cmd_rwinit(path, size):
    n = int(size) // SECTOR
    with open(path, "wb") as f:
        f.write(b"".join(sector(0, i, 0) for i in range(n)))


def cmd_rwwriter(path, host, secs, block, out, seed):
    """Random writes for secs seconds: whole blocks, or runs of sectors inside one block (which
    kmsfs serves as a read-modify-write). Reopens every 64 writes. Logs every write."""
    host, block = int(host), int(block)
    rnd = random.Random(int(seed))
    per_block = block // SECTOR
    nblocks = os.path.getsize(path) // block
    log, errs, seq = [], [], 0
    fd = os.open(path, os.O_RDWR)
    end = time.monotonic() + float(secs)
    while time.monotonic() < end:
        seq += 1
        b = rnd.randrange(nblocks)
        if rnd.random() < 0.5:
            first, count = b * per_block, per_block
        else:
            count = rnd.randrange(1, per_block)
            first = b * per_block + rnd.randrange(per_block - count + 1)
        data = b"".join(sector(host, first + k, seq) for k in range(count))
        log.append((seq, first, count))
        try:
            n = os.pwrite(fd, data, first * SECTOR)
            if n != len(data):
                errs.append(f"seq {seq}: short write {n}")
        except OSError as e:
            errs.append(f"seq {seq}: {e}")
        if seq % 64 == 0:
            os.close(fd)
            fd = os.open(path, os.O_RDWR)
    os.close(fd)
    json.dump({"host": host, "writes": log, "errors": errs}, open(out, "w"))
    print(json.dumps({"host": host, "writes": len(log), "errors": len(errs), "first_errors": errs[:3]}))


def read_blocks(path, block):
    """Per block: bytes, or the errno of a failed read. Fresh open (close-to-open)."""
    res = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for off in range(0, size, block):
            try:
                res.append(os.pread(fd, block, off))
            except OSError as e:
                res.append(e.errno)
    finally:
        os.close(fd)
    return res


def cmd_rwreader(path, block, stop, out):
    """Reads the file block by block until `stop` exists, while writers run; every sector must be
    self-consistent (someone's data for that sector) or the block read fails with EIO."""
    block = int(block)
    seen, bad, eio, other, passes = set(), [], 0, [], 0
    while not os.path.exists(stop):
        passes += 1
        try:
            blocks = read_blocks(path, block)
        except OSError as e:
            other.append(f"open: {e}")
            continue
        for bi, data in enumerate(blocks):
            if isinstance(data, int):
                if data == errno.EIO:
                    eio += 1
                else:
                    other.append(f"block {bi}: {os.strerror(data)}")
                continue
            if len(data) != block:
                other.append(f"block {bi}: short read {len(data)}")
                continue
            for k in range(block // SECTOR):
                idx = bi * (block // SECTOR) + k
                p = parse(data[k * SECTOR:(k + 1) * SECTOR], idx)
                if p is None:
                    bad.append([idx, data[k * SECTOR:(k + 1) * SECTOR].hex() if len(bad) < 20 else ""])
                else:
                    seen.add((idx, p[0], p[1]))
    json.dump({"passes": passes, "seen": sorted(seen), "bad": bad, "eio": eio, "other": other},
              open(out, "w"))


def cmd_rwcheck(path, block, out, *logs):
    """Attribute every sector of the final file to a logged write; find EIO blocks and lost
    updates (a host's write undone by an older one of its own)."""
    block = int(block)
    covered = {0: None}  # host -> {sector: sorted seqs}; host 0 wrote every sector once (seq 0)
    for lf in logs:
        lg = json.load(open(lf))
        m = {}
        for seq, first, count in lg["writes"]:
            for s in range(first, first + count):
                m.setdefault(s, []).append(seq)
        covered[lg["host"]] = m
    blocks = read_blocks(path, block)
    per = block // SECTOR
    eio, other, wrong, lost, by_host = [], [], [], 0, {}
    digest = hashlib.sha256()
    for bi, data in enumerate(blocks):
        if isinstance(data, int):
            (eio if data == errno.EIO else other).append(bi)
            digest.update(b"E%d" % data)
            continue
        digest.update(data)
        for k in range(per):
            idx = bi * per + k
            p = parse(data[k * SECTOR:(k + 1) * SECTOR], idx)
            if p is None:
                wrong.append(idx)
                continue
            host, seq = p
            if host == 0:
                ok = seq == 0
                later = [s for h, m in covered.items() if h and m.get(idx)]
            else:
                seqs = covered.get(host, {}).get(idx, [])
                ok = seq in seqs
                later = [s for s in seqs if s > seq]
            if not ok:
                wrong.append(idx)
                continue
            by_host[host] = by_host.get(host, 0) + 1
            if later:
                lost += 1
    res = {"blocks": len(blocks), "eio_blocks": eio, "other_errors": other, "wrong_sectors": wrong[:10],
           "n_wrong": len(wrong), "sectors_by_host": by_host, "lost_updates": lost, "sha256": digest.hexdigest()}
    json.dump(res, open(out, "w"))
    print(json.dumps(res))


def cmd_seen(logs_json, *readers):
    """Every sector a concurrent reader saw was written by the host it names, at that sequence."""
    covered = {0: {}}
    for lf in json.loads(logs_json):
        lg = json.load(open(lf))
        m = {}
        for seq, first, count in lg["writes"]:
            for s in range(first, first + count):
                m.setdefault(s, set()).add(seq)
        covered[lg["host"]] = m
    out = {}
    for rf in readers:
        r = json.load(open(rf))
        unknown = [t for t in r["seen"] if not (t[1] == 0 and t[2] == 0) and t[2] not in covered.get(t[1], {}).get(t[0], ())]
        res = {"passes": r["passes"], "distinct_sectors_seen": len(r["seen"]),
               "garbage": len(r["bad"]) + len(unknown), "eio_blocks": r["eio"],
               "other_errors": r["other"][:5], "n_other": len(r["other"])}
        if unknown:
            res["unlogged"] = unknown[:5]
        if r["bad"]:
            res["bad_sectors"] = [explain(idx, bytes.fromhex(h), covered) for idx, h in r["bad"][:5] if h]
        out[os.path.basename(rf)] = res
    print(json.dumps(out))


def explain(idx, data, covered):
    """What a sector that is not one write's data is made of: a splice of two writes' data?"""
    cands = [(0, 0)] + [(h, s) for h, m in covered.items() if h for s in m.get(idx, ())]
    pats = {c: sector(c[0], idx, c[1]) for c in cands}
    def common(a, b):
        n = 0
        while n < len(a) and a[n] == b[n]:
            n += 1
        return n
    best = max(cands, key=lambda c: common(pats[c], data))
    n = common(pats[best], data)
    for c in cands:
        if pats[c][n:] == data[n:]:
            return f"sector {idx}: bytes 0-{n - 1} from host {best[0]} seq {best[1]}, bytes {n}-511 from host {c[0]} seq {c[1]}"
    zeros = data.count(0)
    return f"sector {idx}: bytes 0-{n - 1} from host {best[0]} seq {best[1]}, rest from no logged write ({zeros} zero bytes); hex {data[:32].hex()}..."


def cmd_readloop(path, stop, out):
    """Reads the whole file, open to close, until `stop` exists (fsx runs on the other host)."""
    passes, errs, eio, nbytes = 0, {}, 0, 0
    while not os.path.exists(stop):
        try:
            with open(path, "rb", buffering=0) as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    nbytes += len(b)
            passes += 1
        except FileNotFoundError:
            time.sleep(0.01)
        except OSError as e:
            if e.errno == errno.EIO:
                eio += 1
            else:
                errs[e.strerror] = errs.get(e.strerror, 0) + 1
    res = {"passes": passes, "bytes": nbytes, "eio": eio, "errors": errs}
    json.dump(res, open(out, "w"))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
