//! The name cipher: plain names, symlink targets and extended attributes ↔ their backing forms.
//! Pure: no I/O, no state but the volume's name key. Every byte is specified in
//! docs/FORMAT.md, section "File names", whose test vectors `tests` below checks.
//!
//! All of it is AES-256-GCM-SIV under the volume name key (unwrapped once per mount):
//!
//! ```text
//! file name    padded to a multiple of 16 bytes (n bytes of value n, n = 1..16), then
//!              nonce = diriv[0..12], AAD = "KMSFS-N2" ‖ diriv (16 bytes)     deterministic per dir
//!              backing name = base64url-nopad(tag (16) ‖ ciphertext (len(padded name)))
//!              encoded longer than LONG_NAME_THRESHOLD → "kmsfs.longname." ‖ base64url-nopad(
//!              SHA-256(encoded)), the encoded name kept in the sidecar "<that>.name"
//! link target  random nonce (12), AAD = "KMSFS-L1"
//!              backing target = base64url-nopad(nonce ‖ ciphertext ‖ tag)
//! xattr name   nonce = 12 zero bytes, AAD = "KMSFS-X1", plaintext = the full plain name ("user.…")
//!              backing name = "user.kmsfs." ‖ base64url-nopad(tag ‖ ciphertext)
//! xattr value  random nonce (12), AAD = "KMSFS-V1" ‖ backing xattr name (bytes)
//!              backing value = nonce ‖ ciphertext ‖ tag (binary)
//! dir binding  nonce = 12 zero bytes, empty plaintext, AAD =
//!              "KMSFS-D2" ‖ diriv ‖ parent's diriv ‖ the directory's backing entry name,
//!              or for the vault root "KMSFS-R2" ‖ diriv; the 16-byte tag follows the IV in
//!              `.kmsfs.diriv`, so an IV copied to another place does not verify there
//! ```
//!
//! base64url-nopad is RFC 4648 §5 without `=` padding; decoding accepts only the canonical
//! encoding (no trailing bits) and the canonical padding, so every backing name has exactly
//! one plain name and back.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

use crate::crypto::{CryptoError, DataKey, random_nonce};
use crate::format::layout::{NONCE_LEN, TAG_LEN};

/// Length of a directory IV.
pub const DIRIV_LEN: usize = 16;
/// A directory's random IV, stored in its `.kmsfs.diriv` file.
pub type DirIv = [u8; DIRIV_LEN];
/// The file inside every backing directory that holds its IV (mode 0444, exactly 16 bytes).
pub const DIRIV_NAME: &str = ".kmsfs.diriv";
/// Domain separator in front of a file name's AAD (followed by the directory IV).
pub const NAME_AAD_PREFIX: &[u8; 8] = b"KMSFS-N2";
/// Domain separator of a directory's binding to its parent and entry name.
pub const DIR_BINDING_AAD: &[u8; 8] = b"KMSFS-D2";
/// Domain separator of the vault root's binding.
pub const ROOT_BINDING_AAD: &[u8; 8] = b"KMSFS-R2";
/// Length of a directory binding (a GCM-SIV tag).
pub const BINDING_LEN: usize = TAG_LEN;
/// Plain names are padded to a multiple of this many bytes, so the backing name shows only
/// the length rounded up (as gocryptfs does).
pub const NAME_PAD: usize = 16;
/// AAD of a symlink target.
pub const LINK_AAD: &[u8; 8] = b"KMSFS-L1";
/// AAD of an extended attribute's name.
pub const XATTR_NAME_AAD: &[u8; 8] = b"KMSFS-X1";
/// Domain separator in front of an extended attribute value's AAD (followed by the backing name).
pub const XATTR_VALUE_AAD_PREFIX: &[u8; 8] = b"KMSFS-V1";
/// Longest plain file name (bytes), as on Linux filesystems.
pub const NAME_MAX: usize = 255;
/// Encoded names longer than this many bytes are stored as long names. 175 rather than the
/// usual 255 leaves room for backing filesystems with shorter limits (eCryptfs, some network
/// filesystems); it keeps plain names of up to 115 bytes in one directory entry.
pub const LONG_NAME_THRESHOLD: usize = 175;
/// Longest plain name stored directly (without a sidecar): its padded form (at least one byte
/// of padding) must fit in the base64 of LONG_NAME_THRESHOLD characters with the tag.
pub const SHORT_NAME_MAX: usize = (LONG_NAME_THRESHOLD * 3 / 4 - TAG_LEN) / NAME_PAD * NAME_PAD - 1;
/// Prefix of a long name's backing entry and of its sidecar.
pub const LONG_NAME_PREFIX: &str = "kmsfs.longname.";
/// Suffix of a long name's sidecar (which holds the full encoded name).
pub const SIDECAR_SUFFIX: &str = ".name";
/// Prefix of every backing extended attribute name in encrypted mode.
pub const XATTR_PREFIX: &str = "user.kmsfs.";
/// The plain xattr names an encrypted-names vault stores (each encrypted whole, under
/// `user.kmsfs.`): user, trusted and security xattrs and POSIX ACLs. Their meaning is the
/// kernel's business on the mount (it enforces ACLs under FUSE_POSIX_ACL); the backing store
/// sees only user xattrs it cannot read.
pub const XATTR_NAMESPACES: &[&str] = &[
    "user.",
    "trusted.",
    "security.",
    "system.posix_acl_access",
    "system.posix_acl_default",
];
/// Longest backing xattr name the kernel accepts (XATTR_NAME_MAX).
const XATTR_NAME_MAX: usize = 255;
/// Longest plain xattr name (bytes, "user." included) whose backing name fits XATTR_NAME_MAX.
pub const XATTR_PLAIN_NAME_MAX: usize = (XATTR_NAME_MAX - XATTR_PREFIX.len()) * 3 / 4 - TAG_LEN;
/// Longest backing symlink target (PATH_MAX without its NUL).
pub const LINK_MAX: usize = 4095;
/// Bytes an encrypted symlink target or xattr value adds to the plain one (nonce and tag).
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Encrypts and decrypts names under one volume's name key (zeroized on drop).
#[derive(Debug)]
pub struct NameCipher {
    key: DataKey,
}

/// The AAD of a file name in the directory with IV `iv`.
pub fn name_aad(iv: &DirIv) -> [u8; 8 + DIRIV_LEN] {
    let mut aad = [0u8; 8 + DIRIV_LEN];
    aad[..8].copy_from_slice(NAME_AAD_PREFIX);
    aad[8..].copy_from_slice(iv);
    aad
}

fn name_nonce(iv: &DirIv) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&iv[..NONCE_LEN]);
    n
}

/// The backing entry of a long name whose encoded form is `encoded`:
/// `kmsfs.longname.` ‖ base64url-nopad(SHA-256(encoded)).
pub fn long_name(encoded: &str) -> String {
    format!(
        "{LONG_NAME_PREFIX}{}",
        B64.encode(Sha256::digest(encoded.as_bytes()))
    )
}

/// The sidecar file name of long-name entry `entry`.
pub fn sidecar_name(entry: &str) -> String {
    format!("{entry}{SIDECAR_SUFFIX}")
}

/// Whether backing name `b` is a long-name entry (not its sidecar).
pub fn is_long_name(b: &[u8]) -> bool {
    b.starts_with(LONG_NAME_PREFIX.as_bytes()) && !b.ends_with(SIDECAR_SUFFIX.as_bytes())
}

/// Whether backing name `b` is a long name's sidecar.
pub fn is_sidecar(b: &[u8]) -> bool {
    b.starts_with(LONG_NAME_PREFIX.as_bytes()) && b.ends_with(SIDECAR_SUFFIX.as_bytes())
}

/// Whether `encoded` needs a long name.
pub fn needs_long_name(encoded: &str) -> bool {
    encoded.len() > LONG_NAME_THRESHOLD
}

/// Whether `plain` is a name a directory may hold: 1 to 255 bytes, no `/` or NUL, not `.`/`..`.
pub fn is_valid_name(plain: &[u8]) -> bool {
    !plain.is_empty()
        && plain.len() <= NAME_MAX
        && plain != b"."
        && plain != b".."
        && !plain.iter().any(|&c| c == b'/' || c == 0)
}

/// The plain length of an encrypted symlink target whose backing target is `backing_len` bytes.
pub fn link_plain_len(backing_len: u64) -> u64 {
    let raw = backing_len / 4 * 3 + [0, 0, 1, 2][(backing_len % 4) as usize];
    raw.saturating_sub(SEAL_OVERHEAD as u64)
}

/// `plain` followed by n bytes of value n (1 ≤ n ≤ NAME_PAD), to a multiple of NAME_PAD.
fn pad_name(plain: &[u8]) -> Vec<u8> {
    let n = NAME_PAD - plain.len() % NAME_PAD;
    let mut out = Vec::with_capacity(plain.len() + n);
    out.extend_from_slice(plain);
    out.resize(plain.len() + n, n as u8);
    out
}

/// The name inside padded name `p`, if its padding is canonical.
fn unpad_name(mut p: Vec<u8>) -> Option<Vec<u8>> {
    let n = usize::from(*p.last()?);
    if n == 0 || n > NAME_PAD || p.len() % NAME_PAD != 0 || p.len() <= n {
        return None;
    }
    if !p[p.len() - n..].iter().all(|&b| usize::from(b) == n) {
        return None;
    }
    p.truncate(p.len() - n);
    Some(p)
}

/// tag ‖ ciphertext of a deterministic seal (the seal appends ciphertext ‖ tag).
fn tag_first(mut sealed: Vec<u8>) -> Vec<u8> {
    sealed.rotate_right(TAG_LEN);
    sealed
}

impl NameCipher {
    /// A cipher under the volume name key `key`.
    pub fn new(key: DataKey) -> Self {
        NameCipher { key }
    }

    fn seal_det(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plain: &[u8]) -> String {
        let mut sealed = Vec::with_capacity(plain.len() + TAG_LEN);
        self.key.seal_detached(nonce, aad, plain, &mut sealed);
        B64.encode(tag_first(sealed))
    }

    fn open_det(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        encoded: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut raw = B64.decode(encoded).map_err(|_| CryptoError::Malformed)?;
        if raw.len() <= TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        raw.rotate_left(TAG_LEN);
        let mut out = vec![0u8; raw.len() - TAG_LEN];
        self.key.open_detached(nonce, aad, &raw, &mut out)?;
        Ok(out)
    }

    fn seal_rand(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
        out.extend_from_slice(nonce);
        self.key.seal_detached(nonce, aad, plain, &mut out);
        out
    }

    fn open_rand(&self, aad: &[u8], stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if stored.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        let mut out = vec![0u8; sealed.len() - TAG_LEN];
        self.key.open_detached(nonce, aad, sealed, &mut out)?;
        Ok(out)
    }

    /// The encoded (base64url) form of plain name `plain` in the directory with IV `iv`.
    /// Deterministic: the same name in the same directory always encodes the same way.
    pub fn encrypt_name(&self, iv: &DirIv, plain: &[u8]) -> String {
        self.seal_det(&name_nonce(iv), &name_aad(iv), &pad_name(plain))
    }

    /// The plain name of encoded name `encoded` in the directory with IV `iv`.
    pub fn decrypt_name(&self, iv: &DirIv, encoded: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let padded = self.open_det(&name_nonce(iv), &name_aad(iv), encoded)?;
        unpad_name(padded).ok_or(CryptoError::Malformed)
    }

    fn binding_aad(iv: &DirIv, parent: Option<(&DirIv, &[u8])>) -> Vec<u8> {
        match parent {
            Some((piv, entry)) => [&DIR_BINDING_AAD[..], iv, piv, entry].concat(),
            None => [&ROOT_BINDING_AAD[..], iv].concat(),
        }
    }

    /// The binding of a directory with IV `iv` to its place: as entry `entry` (its backing
    /// name) of the directory with IV `parent_iv`, or (`None`) as the vault root.
    pub fn dir_binding(&self, iv: &DirIv, parent: Option<(&DirIv, &[u8])>) -> [u8; BINDING_LEN] {
        let mut tag = Vec::with_capacity(BINDING_LEN);
        self.key.seal_detached(
            &[0; NONCE_LEN],
            &Self::binding_aad(iv, parent),
            &[],
            &mut tag,
        );
        let mut out = [0u8; BINDING_LEN];
        out.copy_from_slice(&tag);
        out
    }

    /// Whether `binding` binds IV `iv` to that place (constant time).
    pub fn verify_dir_binding(
        &self,
        iv: &DirIv,
        parent: Option<(&DirIv, &[u8])>,
        binding: &[u8],
    ) -> bool {
        binding.len() == BINDING_LEN
            && self
                .key
                .open_detached(
                    &[0; NONCE_LEN],
                    &Self::binding_aad(iv, parent),
                    binding,
                    &mut [],
                )
                .is_ok()
    }

    /// The backing target of symlink target `plain`, under a fresh random nonce.
    pub fn encrypt_link(&self, plain: &[u8]) -> Result<String, CryptoError> {
        Ok(self.encrypt_link_with_nonce(&random_nonce()?, plain))
    }

    /// `encrypt_link` with a given nonce (test vectors only; never reuse a nonce).
    pub fn encrypt_link_with_nonce(&self, nonce: &[u8; NONCE_LEN], plain: &[u8]) -> String {
        B64.encode(self.seal_rand(nonce, LINK_AAD, plain))
    }

    /// The plain target of backing symlink target `backing`.
    pub fn decrypt_link(&self, backing: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let raw = B64.decode(backing).map_err(|_| CryptoError::Malformed)?;
        self.open_rand(LINK_AAD, &raw)
    }

    /// The backing name of plain xattr name `plain` (deterministic across the volume).
    pub fn encrypt_xattr_name(&self, plain: &[u8]) -> String {
        format!(
            "{XATTR_PREFIX}{}",
            self.seal_det(&[0; NONCE_LEN], XATTR_NAME_AAD, plain)
        )
    }

    /// The plain name of backing xattr name `backing`; `None` for names kmsfs did not make.
    pub fn decrypt_xattr_name(&self, backing: &[u8]) -> Option<Result<Vec<u8>, CryptoError>> {
        let encoded = backing.strip_prefix(XATTR_PREFIX.as_bytes())?;
        Some(self.open_det(&[0; NONCE_LEN], XATTR_NAME_AAD, encoded))
    }

    fn xattr_value_aad(backing_name: &[u8]) -> Vec<u8> {
        [XATTR_VALUE_AAD_PREFIX.as_slice(), backing_name].concat()
    }

    /// The stored form of value `plain` of the xattr whose backing name is `backing_name`.
    pub fn seal_xattr_value(
        &self,
        backing_name: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        Ok(self.seal_xattr_value_with_nonce(&random_nonce()?, backing_name, plain))
    }

    /// `seal_xattr_value` with a given nonce (test vectors only).
    pub fn seal_xattr_value_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        backing_name: &[u8],
        plain: &[u8],
    ) -> Vec<u8> {
        self.seal_rand(nonce, &Self::xattr_value_aad(backing_name), plain)
    }

    /// The plain value of stored xattr value `stored` of backing xattr `backing_name`.
    pub fn open_xattr_value(
        &self,
        backing_name: &[u8],
        stored: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_rand(&Self::xattr_value_aad(backing_name), stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector key (bytes 00..1f) and directory IV (bytes a0..af) of docs/FORMAT.md.
    fn vector_cipher() -> (NameCipher, DirIv) {
        let key: Vec<u8> = (0u8..32).collect();
        let iv: Vec<u8> = (0xa0u8..0xb0).collect();
        (
            NameCipher::new(DataKey::from_slice(&key).expect("key")),
            iv.try_into().expect("iv"),
        )
    }

    fn cipher() -> NameCipher {
        NameCipher::new(DataKey::generate().expect("key"))
    }

    #[test]
    fn names_round_trip_for_every_length_and_byte() {
        let c = cipher();
        let iv = [7u8; DIRIV_LEN];
        for len in 1..=NAME_MAX {
            let name: Vec<u8> = (0..len)
                .map(|i| (i % 255) as u8 + 1)
                .map(|b| if b == b'/' { b'x' } else { b })
                .collect();
            let enc = c.encrypt_name(&iv, &name);
            assert!(
                enc.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{enc}"
            );
            assert_eq!(
                needs_long_name(&enc),
                len > SHORT_NAME_MAX,
                "len {len}: {}",
                enc.len()
            );
            assert_eq!(c.decrypt_name(&iv, enc.as_bytes()).expect("decrypt"), name);
        }
    }

    #[test]
    fn names_are_deterministic_per_directory_and_differ_between_directories() {
        let c = cipher();
        let (a, b) = ([1u8; DIRIV_LEN], [2u8; DIRIV_LEN]);
        assert_eq!(
            c.encrypt_name(&a, b"report.txt"),
            c.encrypt_name(&a, b"report.txt")
        );
        assert_ne!(
            c.encrypt_name(&a, b"report.txt"),
            c.encrypt_name(&b, b"report.txt")
        );
        assert_ne!(
            c.encrypt_name(&a, b"report.txt"),
            c.encrypt_name(&a, b"report.txu")
        );
        // A name moved to another directory does not decrypt there.
        let enc = c.encrypt_name(&a, b"report.txt");
        assert!(c.decrypt_name(&b, enc.as_bytes()).is_err());
        // Another key does not decrypt it either.
        assert!(cipher().decrypt_name(&a, enc.as_bytes()).is_err());
    }

    #[test]
    fn tampered_or_foreign_names_fail() {
        let c = cipher();
        let iv = [3u8; DIRIV_LEN];
        let enc = c.encrypt_name(&iv, b"secret");
        for i in 0..enc.len() {
            let mut bad = enc.clone().into_bytes();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(c.decrypt_name(&iv, &bad).is_err(), "flipped char {i}");
        }
        for foreign in [
            &b"hello.txt"[..],
            b"",
            b"AAAA",
            b"not base64!",
            &enc.as_bytes()[..enc.len() - 1],
        ] {
            assert!(c.decrypt_name(&iv, foreign).is_err(), "{foreign:?}");
        }
    }

    #[test]
    fn long_names_hash_the_encoded_name() {
        let enc = "A".repeat(300);
        let long = long_name(&enc);
        assert!(long.starts_with(LONG_NAME_PREFIX));
        assert_eq!(long.len(), LONG_NAME_PREFIX.len() + 43);
        assert_eq!(long, long_name(&enc), "deterministic");
        assert_ne!(long, long_name(&"A".repeat(301)));
        assert!(is_long_name(long.as_bytes()) && !is_sidecar(long.as_bytes()));
        let side = sidecar_name(&long);
        assert!(is_sidecar(side.as_bytes()) && !is_long_name(side.as_bytes()));
        assert!(side.len() <= LONG_NAME_THRESHOLD);
        assert!(!is_long_name(b"kmsfs") && !is_sidecar(b"x.name"));
        assert_eq!(SHORT_NAME_MAX, 111);
    }

    /// Item 10 of the hostile-store issue: a backing name shows the plain length only rounded
    /// up to 16 bytes; padding that is not canonical does not decrypt.
    #[test]
    fn names_are_padded_to_sixteen_bytes() {
        let c = cipher();
        let iv = [4u8; DIRIV_LEN];
        let len_of = |n: usize| c.encrypt_name(&iv, &vec![b'x'; n]).len();
        for n in 1..=15 {
            assert_eq!(len_of(n), len_of(1), "{n} bytes");
        }
        assert!(len_of(16) > len_of(15));
        assert_eq!(len_of(16), len_of(31));
        for bad in [
            vec![b'a'; 16],
            [vec![b'a'; 15], vec![2]].concat(),
            vec![16; 16],
        ] {
            let enc = c.seal_det(&name_nonce(&iv), &name_aad(&iv), &bad);
            assert!(c.decrypt_name(&iv, enc.as_bytes()).is_err(), "{bad:?}");
        }
    }

    /// Attack 7 of the hostile-store issue, in the cipher: a binding verifies only for its own
    /// IV, parent and entry name.
    #[test]
    fn directory_bindings_verify_only_in_place() {
        let c = cipher();
        let (iv, parent, other) = ([1u8; DIRIV_LEN], [2u8; DIRIV_LEN], [3u8; DIRIV_LEN]);
        let b = c.dir_binding(&iv, Some((&parent, b"hr")));
        assert!(c.verify_dir_binding(&iv, Some((&parent, b"hr")), &b));
        assert!(!c.verify_dir_binding(&iv, Some((&parent, b"hs")), &b));
        assert!(!c.verify_dir_binding(&iv, Some((&other, b"hr")), &b));
        assert!(!c.verify_dir_binding(&other, Some((&parent, b"hr")), &b));
        assert!(
            !c.verify_dir_binding(&iv, None, &b),
            "a directory is not the root"
        );
        let root = c.dir_binding(&iv, None);
        assert!(c.verify_dir_binding(&iv, None, &root));
        assert!(!c.verify_dir_binding(&iv, Some((&parent, b"hr")), &root));
        assert!(
            !cipher().verify_dir_binding(&iv, None, &root),
            "another key"
        );
    }

    #[test]
    fn link_targets_round_trip_and_sizes_follow_from_the_backing_length() {
        let c = cipher();
        for len in [1usize, 2, 3, 4, 100, 3000] {
            let t = vec![b'x'; len];
            let enc = c.encrypt_link(&t).expect("seal");
            assert_ne!(enc, c.encrypt_link(&t).expect("seal"), "random nonce");
            assert_eq!(link_plain_len(enc.len() as u64), len as u64);
            assert_eq!(c.decrypt_link(enc.as_bytes()).expect("open"), t);
        }
        assert!(c.decrypt_link(b"../plain/target").is_err());
    }

    #[test]
    fn xattrs_round_trip_and_bind_the_value_to_its_name() {
        let c = cipher();
        let a = c.encrypt_xattr_name(b"user.a");
        assert_eq!(a, c.encrypt_xattr_name(b"user.a"));
        assert_eq!(
            c.decrypt_xattr_name(a.as_bytes())
                .expect("ours")
                .expect("opens"),
            b"user.a"
        );
        assert!(c.decrypt_xattr_name(b"user.other").is_none());
        let v = c.seal_xattr_value(a.as_bytes(), b"value").expect("seal");
        assert_eq!(
            c.open_xattr_value(a.as_bytes(), &v).expect("open"),
            b"value"
        );
        let b = c.encrypt_xattr_name(b"user.b");
        assert!(
            c.open_xattr_value(b.as_bytes(), &v).is_err(),
            "value moved to another name"
        );
        let empty = c.seal_xattr_value(a.as_bytes(), b"").expect("seal");
        assert_eq!(c.open_xattr_value(a.as_bytes(), &empty).expect("open"), b"");
        let longest = vec![b'n'; XATTR_PLAIN_NAME_MAX];
        assert!(c.encrypt_xattr_name(&longest).len() <= XATTR_NAME_MAX);
        assert!(c.encrypt_xattr_name(&[longest, vec![b'n']].concat()).len() > XATTR_NAME_MAX);
    }

    /// The test vectors of docs/FORMAT.md, "File names" (cross-checked there against an
    /// independent AES-GCM-SIV implementation).
    #[test]
    fn format_vectors_match() {
        let (c, iv) = vector_cipher();
        let want = [
            "Voqf6y3_LGN-zPg8EuEhiapA2f7R4b64z1CpParcGHs",
            "GVtpv9May9e5DqI7OQ7qL03uncxxcxtFzBDaEvGVAhU",
            "FZ23y18RvOz3gY50R5cs0QYb5r6n6cOqofRM5fGSv5M",
            "TOx9iqPNDeRW-NYcBfAR2wf5iNcf52LT0kyFMBxdQclzKLMzsC9kMPhn2CmdUYWIVKfrqPqAUMqe_4FImgW-nsZ0\
             rx4R09BvL8eI9V_LCRE48oImyVHW2tKKDBv8VgUFG2zi1bEiP7VVUtYHItu02ydEDp4hV3QnauGqRIDsTBvmPFij-\
             qxtyQiTnHXoEIn0",
        ];
        for (name, want) in vector_names().iter().zip(want) {
            let enc = c.encrypt_name(&iv, name.as_bytes());
            assert_eq!(enc, want, "{name:?}");
            assert_eq!(
                c.decrypt_name(&iv, enc.as_bytes()).expect("decrypt"),
                name.as_bytes()
            );
            assert_eq!(needs_long_name(&enc), name.len() == 120);
        }
        assert_eq!(
            long_name(want[3]),
            "kmsfs.longname.fv_mfmMxFoQJ9ivXu8pruI5qYTRZJwqoXPzHPxuyts0"
        );
        let root = c.dir_binding(&iv, None);
        assert_eq!(hex::encode(root), "6c70fac7a46d6986078fca682e41f135");
        let child_iv: DirIv = std::array::from_fn(|i| 0xb0 + i as u8);
        let child = c.dir_binding(&child_iv, Some((&iv, want[1].as_bytes())));
        assert_eq!(hex::encode(child), "1ec659d553f6d119d8f1865b80aecd0c");
        let link = c.encrypt_link_with_nonce(&VECTOR_NONCE, b"../docs/report.txt");
        assert_eq!(
            link,
            "wMHCw8TFxsfIycrLoEmm_4BMtPbI1TIHhfQBkaXEMGFT1lMxcyFxEbWWZNZfDg"
        );
        assert_eq!(link_plain_len(link.len() as u64), 18);
        let x = c.encrypt_xattr_name(b"user.comment");
        assert_eq!(x, "user.kmsfs.COKhNkxcSqOyglee3le5rHAePUphPNcF4Riqlw");
        let v = c.seal_xattr_value_with_nonce(&VECTOR_NONCE, x.as_bytes(), b"hello");
        assert_eq!(
            hex::encode(&v),
            "c0c1c2c3c4c5c6c7c8c9cacbc9ead22bd4ddc54d6dc81334ff1158f5e2e61fc970"
        );
        assert_eq!(
            c.open_xattr_value(x.as_bytes(), &v).expect("open"),
            b"hello"
        );

        // docs/FORMAT.md, section "File names", lists the same vectors.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md");
        let doc = std::fs::read_to_string(path).expect("read docs/FORMAT.md");
        let at = doc.find("File names").expect("a \"File names\" section");
        let all = want[..3].iter().map(|s| s.to_string());
        let all = all.chain([
            long_name(want[3]),
            link,
            x,
            hex::encode(&v),
            hex::encode(root),
            hex::encode(child),
        ]);
        for vector in all {
            assert!(
                doc[at..].contains(&vector),
                "docs/FORMAT.md lacks the vector {vector}"
            );
        }
    }

    /// "a", "hello.txt", "Zürich-日本" and 120 × "N" (a long name).
    fn vector_names() -> Vec<String> {
        vec![
            "a".into(),
            "hello.txt".into(),
            "Zürich-日本".into(),
            "N".repeat(120),
        ]
    }

    const VECTOR_NONCE: [u8; NONCE_LEN] = [
        0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb,
    ];
}
