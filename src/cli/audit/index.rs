//! File id → current plain path, built once per run: walk the vault (names decoded with the
//! name key) and read the first 48 bytes of every file's header (magic, volume id, file id)
//! in parallel. Events are then resolved with one hash lookup each, never a disk read.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::cli::walk::{self, Progress, Tree};
use crate::format::Id;
use crate::format::header::{MAGIC, offset};

/// Header bytes read per file: up to the end of the file id.
const ID_END: usize = offset::FILE_ID + 16;

/// Where a file of the vault is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Its plain path, from the root (`/finance/q3/minutes.txt`).
    Plain(PathBuf),
    /// A name on its way does not decrypt: its backing path.
    Undecodable(PathBuf),
}

/// The vault's files by file id.
#[derive(Debug, Default)]
pub struct Index {
    by_id: HashMap<Id, Location>,
    /// Regular files walked (0-byte files hold no header and no key yet).
    pub files: usize,
}

impl Index {
    /// Index the files of `tree` whose header names volume `volume`, reading headers on `jobs`
    /// threads (a progress line on a terminal).
    pub fn build(tree: &Tree, volume: &Id, jobs: usize) -> Index {
        let progress = Progress::new("indexing file ids", tree.files.len() as u64);
        let stop = AtomicBool::new(false);
        let ids = walk::parallel(&tree.files, jobs, &stop, &progress, |f| {
            file_id(&f.backing, volume)
        });
        progress.finish();
        let mut by_id = HashMap::with_capacity(tree.files.len());
        for (f, id) in tree.files.iter().zip(ids) {
            let Some(Some(id)) = id else { continue };
            let loc = match &f.plain {
                Some(p) => Location::Plain(Path::new("/").join(p)),
                None => Location::Undecodable(f.backing.clone()),
            };
            by_id.insert(id, loc);
        }
        Index {
            by_id,
            files: tree.files.len(),
        }
    }

    /// Where the file with id `hex_id` (as the encryption context writes it) is; `None` when
    /// no file of the vault has it.
    pub fn get(&self, hex_id: &str) -> Option<&Location> {
        let id: Id = hex::decode(hex_id).ok()?.try_into().ok()?;
        self.by_id.get(&id)
    }

    /// Files indexed (with a header of this volume).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The file id in the header of the backing file at `path`, if it is a kmsfs file of volume
/// `volume` (magic and volume id checked; the rest of the header is not needed for this).
fn file_id(path: &Path, volume: &Id) -> Option<Id> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let mut head = [0u8; ID_END];
    f.read_exact_at(&mut head, 0).ok()?;
    if head[offset::MAGIC..offset::MAGIC + MAGIC.len()] != MAGIC
        || head[offset::VOLUME_ID..offset::FILE_ID] != volume[..]
    {
        return None;
    }
    head[offset::FILE_ID..ID_END].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::walk::FileItem;

    fn header(volume: &Id, file: &Id) -> Vec<u8> {
        let mut h = vec![0u8; 1024];
        h[..8].copy_from_slice(&MAGIC);
        h[16..32].copy_from_slice(volume);
        h[32..48].copy_from_slice(file);
        h
    }

    #[test]
    fn files_are_found_by_the_id_in_their_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vol: Id = [7; 16];
        let item = |name: &str, bytes: &[u8], plain: Option<&str>| {
            let backing = dir.path().join(name);
            std::fs::write(&backing, bytes).expect("write");
            FileItem {
                backing,
                plain: plain.map(PathBuf::from),
            }
        };
        let tree = Tree {
            files: vec![
                item("a", &header(&vol, &[1; 16]), Some("finance/q3/minutes.txt")),
                item("b", &header(&vol, &[2; 16]), None),
                item("c", &header(&[8; 16], &[3; 16]), Some("other-volume")),
                item("d", b"", Some("empty")),
                item("e", b"KMSFSENC short", Some("short")),
            ],
            ..Tree::default()
        };
        let idx = Index::build(&tree, &vol, 2);
        assert_eq!((idx.files, idx.len()), (5, 2));
        assert_eq!(
            idx.get(&hex::encode([1u8; 16])),
            Some(&Location::Plain("/finance/q3/minutes.txt".into()))
        );
        assert_eq!(
            idx.get(&hex::encode([2u8; 16])),
            Some(&Location::Undecodable(dir.path().join("b")))
        );
        assert_eq!(idx.get(&hex::encode([3u8; 16])), None);
        assert_eq!(idx.get("not hex"), None);
        assert_eq!(idx.get("0102"), None);
    }
}
