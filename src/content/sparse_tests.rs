//! Holes: sparse on disk, zeros on read, and never a way to turn written data into zeros.
use super::tests::{Fixture, fixture_with_holes, pattern};
use super::*;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

const BS: u64 = 4096;

/// Bytes the backing file occupies on disk.
fn allocated(fx: &Fixture) -> u64 {
    std::fs::metadata(&fx.path).expect("stat").blocks() * 512
}

fn integrity_at(f: &CryptFile, offset: u64, len: usize) -> Option<u64> {
    match f.read(offset, len) {
        Err(CryptError::Integrity { block, .. }) => block,
        other => panic!(
            "expected an integrity error at {offset}, got {:?}",
            other.map(|v| v.len())
        ),
    }
}

/// Overwrite `len` stored bytes of block `block` of the backing file with zeros.
fn zero_stored(fx: &Fixture, block: u64) {
    let l = fx.vault.layout;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&fx.path)
        .expect("open");
    f.write_all_at(
        &vec![0u8; l.stored_block_size() as usize],
        l.backing_offset(block),
    )
    .expect("zero");
}

#[test]
fn holes_take_no_space_read_as_zeros_and_seek_finds_them() {
    let fx = fixture_with_holes(4096, true);
    let f = fx.open();
    f.truncate(1 << 30).expect("truncate 1 GiB");
    assert!(
        allocated(&fx) < 1 << 20,
        "1 GiB hole allocated {}",
        allocated(&fx)
    );
    let data = pattern(4096, 9);
    f.write(512 << 20, &data).expect("write at 512 MiB");
    assert!(allocated(&fx) < 1 << 20, "allocated {}", allocated(&fx));
    assert_eq!(f.size().expect("size"), 1 << 30);
    assert_eq!(f.read(512 << 20, 4096).expect("read"), data);
    for at in [
        0,
        4096 * 7 + 5,
        (512 << 20) - 300,
        (512 << 20) + 4096,
        (1 << 30) - 10,
    ] {
        let got = f.read(at, 200).expect("read hole");
        assert!(got.iter().all(|&b| b == 0), "hole at {at}");
    }
    assert_eq!(f.seek(0, true).expect("data"), Some(512 << 20));
    assert_eq!(f.seek(0, false).expect("hole"), Some(0));
    assert_eq!(
        f.seek(512 << 20, false).expect("hole"),
        Some((512 << 20) + 4096)
    );
    assert_eq!(f.seek(1 << 30, true).expect("past end"), None);
    // The final block, stored but holding no data (a truncate made it), is a hole too:
    // no data after the write, as on ext4.
    assert_eq!(f.seek((512 << 20) + 4096, true).expect("data"), None);
    // A fresh open (no cached map) reads the same.
    let again = fx.open();
    assert_eq!(again.read(512 << 20, 4096).expect("reread"), data);
    assert!(
        again
            .read(4096, 4096)
            .expect("hole")
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn a_zeroed_or_punched_written_block_is_eio_and_named() {
    let fx = fixture_with_holes(4096, true);
    fx.open().write(0, &pattern(1 << 20, 3)).expect("write");
    zero_stored(&fx, 10);
    let f = fx.open();
    assert_eq!(integrity_at(&f, 10 * BS, 100), Some(10));
    assert_eq!(
        f.read(11 * BS, 100).expect("block 11"),
        pattern(1 << 20, 3)[11 * 4096..11 * 4096 + 100]
    );
    let l = fx.vault.layout;
    let backing = std::fs::OpenOptions::new()
        .write(true)
        .open(&fx.path)
        .expect("open");
    crate::sys::fallocate(
        backing.as_fd(),
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        l.backing_offset(20),
        l.stored_block_size(),
    )
    .expect("punch the backing file");
    assert_eq!(integrity_at(&fx.open(), 20 * BS, 1), Some(20));
}

#[test]
fn punching_frees_space_and_writing_into_a_hole_withdraws_its_grant() {
    let fx = fixture_with_holes(4096, true);
    let data = pattern(8 << 20, 5);
    let f = fx.open();
    f.write(0, &data).expect("write");
    f.sync(true).expect("sync");
    let before = allocated(&fx);
    f.zero_range(1 << 20, 4 << 20).expect("punch 4 MiB");
    let freed = before - allocated(&fx);
    assert!(freed >= (4 << 20) - (64 << 10), "freed only {freed}");
    let got = f.read(0, 8 << 20).expect("read");
    assert_eq!(&got[..1 << 20], &data[..1 << 20]);
    assert!(got[1 << 20..5 << 20].iter().all(|&b| b == 0));
    assert_eq!(&got[5 << 20..], &data[5 << 20..]);
    // Unaligned edges are zeroed inside their blocks.
    f.zero_range(6 * 1024 * 1024 + 100, 3 * 4096)
        .expect("unaligned");
    let edge = f.read(6 * 1024 * 1024, 4 * 4096).expect("edge");
    assert_eq!(&edge[..100], &data[6 << 20..(6 << 20) + 100]);
    assert!(edge[100..100 + 3 * 4096].iter().all(|&b| b == 0));
    // Data written into the hole loses the grant: zeroed again by someone else, it is EIO.
    let block = (2 << 20) / BS;
    f.write(block * BS, &pattern(4096, 1))
        .expect("write into the hole");
    zero_stored(&fx, block);
    assert_eq!(integrity_at(&fx.open(), block * BS, 10), Some(block));
}

#[test]
fn a_missing_or_foreign_map_turns_holes_into_eio_never_data_into_zeros() {
    let fx = fixture_with_holes(4096, true);
    let f = fx.open();
    f.write(0, b"start").expect("write");
    f.write(100 * BS, b"end").expect("write past a hole");
    let id = f.file_id().expect("id");
    let maps = fx.dir.path().join("holes");
    let map = maps.join(hex::encode(id));
    assert!(map.exists(), "the hole made a map");
    // Another file with holes, whose map is copied over this one's.
    let other = fixture_with_holes(4096, true);
    let g = other.open();
    g.truncate(200 * BS).expect("holes");
    let other_map = other
        .dir
        .path()
        .join("holes")
        .join(hex::encode(g.file_id().expect("id")));
    let saved = std::fs::read(&map).expect("map");
    std::fs::copy(&other_map, &map).expect("swap maps");
    fx.vault.keys.clear();
    assert_eq!(integrity_at(&fx.open(), 50 * BS, 10), Some(50));
    std::fs::remove_file(&map).expect("delete map");
    let h = fx.open();
    assert_eq!(integrity_at(&h, 50 * BS, 10), Some(50));
    assert_eq!(h.read(0, 5).expect("data still reads"), b"start");
    std::fs::write(&map, saved).expect("restore");
    assert!(
        fx.open()
            .read(50 * BS, 10)
            .expect("hole")
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn blocks_that_become_data_again_lose_their_grants() {
    let fx = fixture_with_holes(4096, true);
    let f = fx.open();
    f.write(0, &pattern(3 * 4096, 2)).expect("write");
    f.truncate(1000 * BS).expect("grow with a hole");
    // Cut inside the hole: the new final block is stored, so zeroing it is EIO.
    f.truncate(500 * BS + 10).expect("cut");
    zero_stored(&fx, 500);
    assert_eq!(integrity_at(&fx.open(), 500 * BS, 10), Some(500));
    // A file whose size is a multiple of the block size grows: its empty final block becomes
    // part of the hole, and reads as zeros.
    let fy = fixture_with_holes(4096, true);
    let g = fy.open();
    g.write(0, &pattern(2 * 4096, 4)).expect("write");
    g.write(10 * BS, b"x").expect("grow");
    assert!(
        g.read(2 * BS, 4096)
            .expect("old final block")
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(g.seek(0, false).expect("hole"), Some(2 * BS));
}

#[test]
fn huge_holes_are_granted_high_in_the_map_and_pushed_down_on_write() {
    let fx = fixture_with_holes(4096, true);
    let f = fx.open();
    // 8 TiB of hole: granted at level 2 (units of 2^30 blocks), within ext4's 16 TiB limit.
    let size = 1u64 << 43;
    f.truncate(size).expect("truncate 8 TiB");
    let map = fx
        .dir
        .path()
        .join("holes")
        .join(hex::encode(f.file_id().expect("id")));
    let map_alloc = std::fs::metadata(&map).expect("map").blocks() * 512;
    assert!(
        map_alloc <= 64 << 10,
        "the map of an 8 TiB hole takes {map_alloc} bytes"
    );
    let block = (size / BS) / 2 + 12345;
    f.write(block * BS, b"middle").expect("write in the middle");
    assert_eq!(f.read(block * BS, 6).expect("read"), b"middle");
    assert!(
        f.read((block + 1) * BS, 10)
            .expect("hole")
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        f.read((block - 1) * BS, 10)
            .expect("hole")
            .iter()
            .all(|&b| b == 0)
    );
    zero_stored(&fx, block);
    assert_eq!(integrity_at(&fx.open(), block * BS, 6), Some(block));
    assert!(
        fx.open()
            .read(BS, 10)
            .expect("far hole")
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn without_a_map_store_gaps_are_encrypted_zeros() {
    let fx = fixture_with_holes(4096, false);
    let f = fx.open();
    f.truncate(64 * BS).expect("grow");
    assert!(f.read(0, 4096).expect("zeros").iter().all(|&b| b == 0));
    zero_stored(&fx, 3);
    assert_eq!(integrity_at(&fx.open(), 3 * BS, 1), Some(3));
}
