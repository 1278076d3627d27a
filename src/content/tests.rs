//! The content layer against backing files in a temporary directory.
use super::*;
use crate::keys::local::LocalProvider;
use std::time::Duration;

pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub vault: Arc<Volume>,
    pub path: PathBuf,
}

pub(super) fn fixture(bs: u32) -> Fixture {
    fixture_with_holes(bs, false)
}

/// A volume over a temporary directory; `holes`: with a hole-map store (else holes are
/// stored as encrypted zeros).
pub(super) fn fixture_with_holes(bs: u32, holes: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = LocalProvider::create(&dir.path().join("key")).expect("key");
    let keys = Arc::new(KeyCache::new(
        Arc::new(provider),
        Duration::from_secs(60),
        Duration::ZERO,
        16,
    ));
    let layout = Layout::new(HEADER_SIZE as u64, bs).expect("layout");
    let store = holes.then(|| {
        let maps = dir.path().join("holes");
        std::fs::create_dir(&maps).expect("holes dir");
        HoleStore::new(File::open(&maps).expect("open holes").into())
    });
    let vault = Arc::new(Volume::new([3; 16], layout, ProviderId::Local, keys).with_holes(store));
    let path = dir.path().join("f");
    File::create(&path).expect("create");
    Fixture { dir, vault, path }
}

impl Fixture {
    pub(super) fn open(&self) -> CryptFile {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .expect("open");
        CryptFile::new(f, self.vault.clone())
    }
    pub(super) fn backing(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read backing")
    }
    pub(super) fn set_backing(&self, b: &[u8]) {
        std::fs::write(&self.path, b).expect("write backing");
    }
}

pub(super) fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn round_trip_sizes_at_both_block_sizes() {
    for bs in [4096u32, 65536] {
        let b = bs as usize;
        for n in [0, 1, b - 1, b, b + 1, 3 * b + 7] {
            let fx = fixture(bs);
            let f = fx.open();
            let data = pattern(n, 1);
            f.write(0, &data).expect("write");
            assert_eq!(
                fx.backing().len() as u64,
                fx.vault.layout.backing_size(n as u64)
            );
            let g = fx.open();
            assert_eq!(g.read(0, n + 10).expect("read"), data, "bs {bs} size {n}");
        }
    }
}

#[test]
fn large_reads_split_across_cores_match() {
    let fx = fixture(4096);
    let f = fx.open();
    let data = pattern((1 << 20) + 3, 9);
    f.write(0, &data).expect("write");
    for (off, len) in [
        (0usize, data.len()),
        (5, 700_000),
        (4096 * 31, 4096 * 40 + 1),
        (1 << 19, 1 << 20),
    ] {
        let got = f.read(off as u64, len).expect("read");
        assert_eq!(
            got,
            &data[off..data.len().min(off + len)],
            "read at {off} of {len}"
        );
    }
    // a damaged block in the second half is still reported
    let mut b = fx.backing();
    let at = fx.vault.layout.backing_offset(200) as usize + 50;
    b[at] ^= 1;
    fx.set_backing(&b);
    match fx.open().read(0, 1 << 20) {
        Err(CryptError::Integrity {
            block: Some(200), ..
        }) => {}
        other => panic!("expected block 200 damaged, got {other:?}"),
    }
}

#[test]
fn random_writes_match_a_model() {
    let fx = fixture(4096);
    let f = fx.open();
    let mut model: Vec<u8> = Vec::new();
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    for round in 0..200 {
        let op = next() % 10;
        if op < 7 {
            let off = next() % 40_000;
            let len = (next() % 9000) as usize;
            let data = pattern(len, round as u8);
            f.write(off, &data).expect("write");
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
        } else if op < 9 {
            let n = next() % 45_000;
            f.truncate(n).expect("truncate");
            model.resize(n as usize, 0);
        } else {
            let off = next() % 40_000;
            let len = next() % 10_000;
            f.zero_range(off, len).expect("zero");
            let end = model.len().min((off + len) as usize);
            if (off as usize) < end {
                model[off as usize..end].fill(0);
            }
        }
        assert_eq!(f.size().expect("size"), model.len() as u64);
        let off = (next() % 45_000) as usize;
        let got = f.read(off as u64, 5000).expect("read");
        let want = model.get(off..model.len().min(off + 5000)).unwrap_or(&[]);
        assert_eq!(got, want, "round {round}");
    }
    assert_eq!(fx.open().read(0, 1 << 20).expect("reread"), model);
}

#[test]
fn empty_file_needs_no_key_until_first_byte() {
    let fx = fixture(4096);
    let f = fx.open();
    assert_eq!(f.read(0, 100).expect("read"), Vec::<u8>::new());
    f.truncate(0).expect("truncate");
    assert_eq!(fx.vault.keys.stats().kms_generate, 0);
    assert!(fx.backing().is_empty());
}

#[test]
fn append_never_changes_earlier_full_blocks() {
    let fx = fixture(4096);
    let f = fx.open();
    f.write(0, &pattern(3 * 4096 + 100, 2)).expect("write");
    let before = fx.backing();
    let full_end = fx.vault.layout.backing_offset(3) as usize;
    f.write(3 * 4096 + 100, &pattern(5000, 3)).expect("append");
    assert_eq!(&fx.backing()[..full_end], &before[..full_end]);
}

fn expect_integrity(f: &CryptFile, what: &str) {
    match f.read(0, 1 << 20) {
        Err(CryptError::Integrity { .. }) => {}
        other => panic!("{what}: expected integrity error, got {other:?}"),
    }
}

#[test]
fn every_changed_byte_is_rejected() {
    let fx = fixture(512);
    fx.open().write(0, &pattern(1200, 4)).expect("write");
    let good = fx.backing();
    // every byte of the blocks and of the header but the inactive slot (580..1024)
    for at in (0..good.len()).filter(|&i| !(580..1024).contains(&i)) {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        fx.set_backing(&bad);
        fx.vault.keys.clear();
        expect_integrity(&fx.open(), &format!("byte {at}"));
    }
}

#[test]
fn moved_blocks_and_cuts_are_rejected() {
    let fx = fixture(512);
    fx.open().write(0, &pattern(2000, 5)).expect("write");
    let good = fx.backing();
    let l = fx.vault.layout;
    let sb = l.stored_block_size() as usize;
    let b0 = l.backing_offset(0) as usize;
    // swap blocks 0 and 1
    let mut swapped = good.clone();
    swapped[b0..b0 + 2 * sb].rotate_left(sb);
    fx.set_backing(&swapped);
    expect_integrity(&fx.open(), "swapped blocks");
    // truncation at every block boundary, and a header without blocks
    for k in 0..l.block_count(2000) {
        fx.set_backing(&good[..l.backing_offset(k) as usize]);
        expect_integrity(&fx.open(), &format!("cut at block {k}"));
    }
    // a stray block appended
    let mut longer = good.clone();
    longer.extend_from_slice(&good[b0..b0 + sb]);
    fx.set_backing(&longer);
    expect_integrity(&fx.open(), "stray block");
}

#[test]
fn shared_store_reads_retry_under_the_lock() {
    // Host B keeps the file open while host A replaces it (O_TRUNC, new file id and key):
    // B's cached header no longer opens the blocks, and on a shared store the read is
    // retried under the backing lock with the new header instead of failing.
    let fx = fixture(512);
    fx.vault
        .shared_store
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (a, b) = (fx.open(), fx.open());
    a.write(0, &pattern(3000, 1)).expect("first version");
    assert_eq!(b.read(0, 5000).expect("B reads v1"), pattern(3000, 1));
    a.truncate(0).expect("truncate");
    a.write(0, &pattern(2500, 2)).expect("second version");
    assert_eq!(b.read(0, 5000).expect("B reads v2"), pattern(2500, 2));
    let events = std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        fx.vault.tamper_events.load(events),
        0,
        "a race is no damage"
    );
    // Real damage still fails after the retry, and counts.
    let mut bad = fx.backing();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fx.set_backing(&bad);
    expect_integrity(&b, "damaged after the retry");
    assert!(fx.vault.tamper_events.load(events) > 0);
    // Not shared: no retry, the stale header fails.
    fx.vault
        .shared_store
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let c = fx.open();
    assert_eq!(c.read(0, 10).expect("C reads"), pattern(10, 2));
    a.truncate(0).expect("truncate");
    a.write(0, &pattern(2500, 3)).expect("third version");
    expect_integrity(&c, "stale header, no retry");
}

#[test]
fn blocks_and_headers_from_another_file_are_rejected() {
    let a = fixture(512);
    a.open().write(0, &pattern(2000, 6)).expect("write a");
    let b_path = a.path.with_file_name("g");
    File::create(&b_path).expect("create g");
    let open_b = || {
        CryptFile::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&b_path)
                .expect("open g"),
            a.vault.clone(),
        )
    };
    open_b().write(0, &pattern(2000, 7)).expect("write b");
    let fa = a.backing();
    let fb = std::fs::read(&b_path).expect("read g");
    let l = a.vault.layout;
    let (b1, sb) = (l.backing_offset(1) as usize, l.stored_block_size() as usize);
    // block 1 of b copied into a at the same index
    let mut x = fa.clone();
    x[b1..b1 + sb].copy_from_slice(&fb[b1..b1 + sb]);
    a.set_backing(&x);
    expect_integrity(&a.open(), "block from another file");
    // the whole header of b on a's blocks
    let mut y = fa.clone();
    y[..HEADER_SIZE].copy_from_slice(&fb[..HEADER_SIZE]);
    a.set_backing(&y);
    expect_integrity(&a.open(), "header from another file");
    // only b's wrapped key slot in a's header
    let mut z = fa.clone();
    z[128..HEADER_SIZE].copy_from_slice(&fb[128..HEADER_SIZE]);
    a.set_backing(&z);
    a.vault.keys.clear();
    expect_integrity(&a.open(), "wrapped key from another file");
}

#[test]
fn foreign_files_are_integrity_errors() {
    let fx = fixture(4096);
    fx.set_backing(b"abc");
    assert!(matches!(
        fx.open().size(),
        Err(CryptError::Integrity { .. })
    ));
    expect_integrity(&fx.open(), "three bytes");
    fx.set_backing(&[0u8; 5000]);
    expect_integrity(&fx.open(), "zeros");
}

#[test]
fn a_torn_tail_keeps_the_intact_prefix_readable() {
    let fx = fixture(4096);
    let data = pattern(5 * 4096 + 10, 8);
    fx.open().write(0, &data).expect("write");
    let good = fx.backing();
    // a crash mid-append: the backing file ends inside block 4
    fx.set_backing(&good[..fx.vault.layout.backing_offset(4) as usize + 100]);
    let f = fx.open();
    assert_eq!(
        f.read(0, 3 * 4096).expect("intact prefix"),
        &data[..3 * 4096]
    );
    match f.read(0, 10 * 4096) {
        Err(CryptError::Integrity { block: Some(4), .. }) => {}
        other => panic!("torn end not reported as block 4: {other:?}"),
    }
}
