#!/usr/bin/env python3
"""End-to-end flow and operation probes of scripts/s3 (run by the script; see there)."""
import errno, fcntl, json, mmap, os, random, struct, sys, time

OK = "ok"


def err(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) else type(e).__name__


def cmd_write(mnt, expect):
    """Files of several sizes, then random-offset writes, holes and truncates against a model;
    every file's expected content goes to `expect` (a local directory)."""
    rnd = random.Random(42)
    problems = []
    for size in (0, 1, 4095, 4096, 4097, (1 << 20) + 3, 3 << 20):
        data = rnd.randbytes(size)
        name = f"size-{size}"
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data)
        with open(os.path.join(expect, name), "wb") as f:
            f.write(data)
        with open(os.path.join(mnt, name), "rb") as f:
            if f.read() != data:
                problems.append(f"{name} reads back wrong")
    # Random-offset writes, holes, truncates: kmsfs file vs a bytearray model.
    model = bytearray()
    path = os.path.join(mnt, "random")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    for i in range(400):
        op = rnd.random()
        if op < 0.75:
            off = rnd.randrange(0, (2 << 20))
            n = rnd.choice([1, 17, 511, 4096, 4097, 65536, rnd.randrange(1, 300000)])
            data = rnd.randbytes(n)
            os.pwrite(fd, data, off)
            if len(model) < off:
                model.extend(bytes(off - len(model)))
            model[off:off + n] = data
        elif op < 0.9:
            size = rnd.randrange(0, 2 << 20)
            os.ftruncate(fd, size)
            if size < len(model):
                del model[size:]
            else:
                model.extend(bytes(size - len(model)))
        else:
            os.close(fd)
            fd = os.open(path, os.O_RDWR)
        if i % 50 == 49:
            got = os.pread(fd, len(model) + 10, 0)
            if got != bytes(model):
                problems.append(f"random: differs from the model after op {i} ({len(got)} vs {len(model)} bytes)")
                break
    os.close(fd)
    with open(os.path.join(expect, "random"), "wb") as f:
        f.write(model)
    # Rename, rename over an existing file, unlink, directories.
    def put(name, data):
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data)
    put("a", b"A" * 5000); put("b", b"B" * 7000); put("gone", b"x")
    os.rename(os.path.join(mnt, "a"), os.path.join(mnt, "a2"))
    os.rename(os.path.join(mnt, "b"), os.path.join(mnt, "a2"))  # over an existing file
    os.unlink(os.path.join(mnt, "gone"))
    os.makedirs(os.path.join(mnt, "dir/sub"))
    put("dir/sub/f", b"nested" * 1000)
    os.rename(os.path.join(mnt, "size-4097"), os.path.join(mnt, "dir/moved-4097"))
    os.rename(os.path.join(expect, "size-4097"), os.path.join(expect, "moved-4097"))
    with open(os.path.join(expect, "a2"), "wb") as f:
        f.write(b"B" * 7000)
    with open(os.path.join(expect, "f"), "wb") as f:
        f.write(b"nested" * 1000)
    listing = sorted(os.listdir(mnt))
    want = sorted([f"size-{s}" for s in (0, 1, 4095, 4096, (1 << 20) + 3, 3 << 20)] + ["random", "a2", "dir"])
    if listing != want:
        problems.append(f"listing {listing} != {want}")
    for p in ("a", "b", "gone"):
        if os.path.exists(os.path.join(mnt, p)):
            problems.append(f"{p} still exists")
    print(json.dumps(problems))
    sys.exit(1 if problems else 0)


def expected_paths(mnt, expect):
    m = {n: os.path.join(mnt, n) for n in os.listdir(expect)}
    m["moved-4097"] = os.path.join(mnt, "dir/moved-4097")
    m["f"] = os.path.join(mnt, "dir/sub/f")
    return m


def cmd_verify(mnt, expect):
    problems = []
    for name, path in expected_paths(mnt, expect).items():
        want = open(os.path.join(expect, name), "rb").read()
        try:
            got = open(path, "rb").read()
        except OSError as e:
            problems.append(f"{name}: {err(e)}")
            continue
        if got != want:
            problems.append(f"{name}: {len(got)} bytes read, {len(want)} expected, content differs")
    print(json.dumps(problems))
    sys.exit(1 if problems else 0)


def cmd_plaintext(backing, expect):
    """No expected file's content (a 64-byte sample of each) appears in any backing file."""
    samples = []
    for n in os.listdir(expect):
        d = open(os.path.join(expect, n), "rb").read()
        s = d[len(d) // 2:len(d) // 2 + 64]
        if len(s) == 64 and len(set(s)) > 1:  # not a run of one byte (zeros: holes, header padding)
            samples.append((n, s))
    hits = []
    for root, _, files in os.walk(backing):
        for f in files:
            blob = open(os.path.join(root, f), "rb").read()
            hits += [f"{n} in {f}" for n, s in samples if s in blob]
    print(json.dumps(hits))
    sys.exit(1 if hits else 0)


def probe(d):
    """Try each operation in directory d; return {operation: "ok" | errno name | note}."""
    res = {}

    def p(name, fn):
        try:
            r = fn()
            res[name] = OK if r in (None, True) else (r if isinstance(r, str) else f"wrong result {r!r}")
        except Exception as e:  # noqa: BLE001 - the probe reports any failure
            res[name] = err(e)

    j = lambda *a: os.path.join(d, *a)
    with open(j("base"), "wb") as f:
        f.write(b"0123456789" * 1000)

    def excl():
        os.close(os.open(j("excl"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            os.open(j("excl"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return True
        return "second O_EXCL create succeeded"
    p("O_EXCL create (second one EEXIST)", excl)
    p("hard link", lambda: os.link(j("base"), j("hard")))
    p("symlink", lambda: os.symlink("base", j("sym")) or (os.readlink(j("sym")) == "base" or "readlink differs"))

    def xattr():
        os.setxattr(j("base"), "user.k", b"v")
        return os.getxattr(j("base"), "user.k") == b"v" or "getxattr differs"
    p("xattr set/get", xattr)

    def chmod():
        os.chmod(j("base"), 0o600)
        m = os.stat(j("base")).st_mode & 0o777
        return m == 0o600 or f"ignored (mode stays {m:o})"
    p("chmod", chmod)

    def chown():
        os.chown(j("base"), 1234, 1234)
        st = os.stat(j("base"))
        return st.st_uid == 1234 or f"ignored (uid stays {st.st_uid})"
    p("chown", chown)

    def utime():
        os.utime(j("base"), (1_000_000_000, 1_000_000_000))
        return int(os.stat(j("base")).st_mtime) == 1_000_000_000 or "mtime not kept"
    p("utimes", utime)

    def dirrename(wait, a, b):
        def read():
            try:
                return open(j(b, "sub/f"), "rb").read() == b"in a dir" or "wrong content"
            except OSError as e:
                return err(e)
        os.makedirs(j(a, "sub"))
        with open(j(a, "sub/f"), "wb") as f:
            f.write(b"in a dir")
        time.sleep(wait)
        os.rename(j(a), j(b))
        if os.path.exists(j(a)):
            return "old name still there"
        first = read()
        if first is True:
            return True
        time.sleep(4)
        later = read()
        return f"file inside: {first}; 4 s later: {'ok' if later is True else later}"
    p("rename of a directory (new file)", lambda: dirrename(0, "d1", "d2"))
    p("rename of a directory (uploaded)", lambda: dirrename(4, "d3", "d4"))

    def dirrename_fd(a, b):
        """Reopen, through an O_PATH descriptor taken before, an uploaded file whose directory
        was renamed (kmsfs opens files through the O_PATH descriptors it keeps per inode)."""
        os.makedirs(j(a, "sub"))
        with open(j(a, "sub/f"), "wb") as f:
            f.write(b"in a dir")
        time.sleep(4)
        pfd = os.open(j(a, "sub/f"), os.O_PATH)
        try:
            os.rename(j(a), j(b))
            out = []
            for wait in (0, 4):
                time.sleep(wait)
                try:
                    fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY)
                    try:
                        out.append("ok" if os.read(fd, 100) == b"in a dir" else "wrong content")
                    finally:
                        os.close(fd)
                except OSError as e:
                    out.append(err(e))
        finally:
            os.close(pfd)
        return True if out == ["ok", "ok"] else f"{out[0]}; 4 s later: {out[1]}"
    p("reopen by fd after a dir rename", lambda: dirrename_fd("d5", "d6"))

    def rename_excl():
        with open(j("r1"), "wb") as f:
            f.write(b"1")
        with open(j("r2"), "wb") as f:
            f.write(b"2")
        os.rename(j("r1"), j("r2"))
        return open(j("r2"), "rb").read() == b"1" or "target keeps old content"
    p("rename over an existing file", rename_excl)
    p("mkfifo", lambda: os.mkfifo(j("fifo")))
    p("mknod (char device)", lambda: os.mknod(j("dev"), 0o600 | 0o020000, os.makedev(1, 3)))

    def ofd():
        fd = os.open(j("base"), os.O_RDWR)
        try:
            F_OFD_SETLK = 37
            fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
            return "ok (kernel-local)"
        finally:
            os.close(fd)
    p("OFD lock", ofd)

    def flock():
        fd = os.open(j("base"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    p("flock", flock)

    def mm():
        fd = os.open(j("base"), os.O_RDWR)
        m = mmap.mmap(fd, 10000)
        m[5000:5004] = b"MMAP"
        m.flush()
        m.close()
        os.close(fd)
        return open(j("base"), "rb").read()[5000:5004] == b"MMAP" or "mmap write lost"
    p("mmap shared write", mm)

    def falloc():
        fd = os.open(j("base"), os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, 20000)
            return os.fstat(fd).st_size == 20000 or "size not extended"
        finally:
            os.close(fd)
    p("fallocate", falloc)

    def punch():
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(j("base"), os.O_RDWR)
        try:
            if libc.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(4096)) != 0:  # KEEP_SIZE|PUNCH_HOLE
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            return os.pread(fd, 4096, 0) == bytes(4096) or "hole not zero"
        finally:
            os.close(fd)
    p("fallocate punch hole", punch)

    def tmpfile():
        fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
        os.close(fd)
    p("O_TMPFILE", tmpfile)

    def cfr():
        src = os.open(j("base"), os.O_RDONLY)
        dst = os.open(j("copy"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            n = os.copy_file_range(src, dst, 8192)
            return n == 8192 or f"copied {n}"
        finally:
            os.close(src)
            os.close(dst)
    p("copy_file_range", cfr)
    p("long name (200 chars)", lambda: open(j("n" * 200), "wb").close())
    p("statfs", lambda: os.statvfs(d) and None)
    return res


def cmd_probe(out, *dirs):
    json.dump({d: probe(d) for d in dirs}, open(out, "w"))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
