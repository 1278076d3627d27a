//! Format test vectors: `tests/vectors/format.txt` holds fixed inputs (keys, ids, nonces,
//! plaintexts) and the exact bytes the on-disk format v2 makes of them (header, blocks, AADs,
//! encryption context, local-provider wrapped key, size arithmetic).
//!
//! Every vector is regenerated here from the crate's own code and compared byte for byte with
//! the file; the file's header, blocks and wrapped key are decoded, verified and opened back to
//! their inputs; and the "Test vectors" section of `docs/FORMAT.md` must hold every vector with
//! its current value, so the specification, the vector file and the code cannot drift apart.
//!
//! After an intended format change, regenerate the vector file with
//! `KMSFS_BLESS_VECTORS=1 cargo test --test format_vectors` and paste it into docs/FORMAT.md.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kmsfs::crypto::{self, BlockCipher, CryptoError, DataKey};
use kmsfs::format::header::{FileHeader, ProviderId, SLOT_CAPACITY};
use kmsfs::format::holes::{Chunk, HoleGeometry, set_bits};
use kmsfs::format::layout::{BLOCK_OVERHEAD, DEFAULT_BLOCK_SIZE};
use kmsfs::format::{HEADER_SIZE, Id, Layout};
use kmsfs::keys::local::LocalProvider;
use kmsfs::keys::{EncryptionContext, KeyProvider};
use kmsfs::vault::VaultConfig;
use kmsfs::vault::config::ConfigKey;
use sha2::{Digest, Sha256};

/// The file's data key: bytes 00 01 … 1f.
const DATA_KEY: [u8; 32] = seq(0x00);
/// The local provider's master key: bytes 80 81 … 9f.
const MASTER_KEY: [u8; 32] = seq(0x80);
/// Volume id: 40 41 … 4f.
const VOLUME_ID: Id = seq(0x40);
/// File id: 50 51 … 5f.
const FILE_ID: Id = seq(0x50);
/// Nonce of the local provider's wrap: a0 … ab.
const WRAP_NONCE: [u8; 12] = seq(0xa0);
/// Nonce of the hole-map chunk vector: b0 … bb.
const HOLE_NONCE: [u8; 12] = seq(0xb0);
/// Plaintext of the partial final block at index 1 (a file of 4096 + 13 bytes).
const PARTIAL_PLAIN: &[u8] = b"Hello, kmsfs!";
/// Plaintext of the one-byte file's only block.
const ONE_PLAIN: &[u8] = b"K";
/// Block size of the vector vault.
const BS: u32 = DEFAULT_BLOCK_SIZE;
/// When the vector file's data key was made: 2026-12-01T00:00:00Z.
const KEY_MADE: u64 = 1_796_083_200;

/// Hex characters per line when a value is wrapped.
const WRAP: usize = 64;

const fn seq<const N: usize>(start: u8) -> [u8; N] {
    let mut a = [0u8; N];
    let mut i = 0;
    while i < N {
        a[i] = start.wrapping_add(i as u8);
        i += 1;
    }
    a
}

/// Plaintext of the full block 0: byte i = i mod 256.
fn full_plain() -> Vec<u8> {
    (0..BS as usize).map(|i| i as u8).collect()
}

/// One block vector: name, block index, nonce, plaintext.
struct BlockVector {
    name: &'static str,
    index: u64,
    nonce: [u8; 12],
    plain: Vec<u8>,
    what: &'static str,
}

fn block_vectors() -> Vec<BlockVector> {
    vec![
        BlockVector {
            name: "block0_full",
            index: 0,
            nonce: seq(0xb0),
            plain: full_plain(),
            what: "full block, index 0, plaintext byte i = i mod 256 (4096 bytes)",
        },
        BlockVector {
            name: "block1_empty",
            index: 1,
            nonce: seq(0xc0),
            plain: Vec::new(),
            what: "empty final block, index 1 (ends a file of exactly 4096 bytes)",
        },
        BlockVector {
            name: "block1_partial",
            index: 1,
            nonce: seq(0xd0),
            plain: PARTIAL_PLAIN.to_vec(),
            what: "partial final block, index 1, plaintext \"Hello, kmsfs!\" (file of 4109 bytes)",
        },
        BlockVector {
            name: "block0_one",
            index: 0,
            nonce: seq(0xe0),
            plain: ONE_PLAIN.to_vec(),
            what: "only block of a 1-byte file, index 0, plaintext \"K\"",
        },
    ]
}

/// A named vector value with a comment for the vector file.
struct Entry {
    name: String,
    value: String,
    comment: String,
}

fn entry(name: impl Into<String>, value: impl Into<String>, comment: impl Into<String>) -> Entry {
    Entry {
        name: name.into(),
        value: value.into(),
        comment: comment.into(),
    }
}

fn file_ctx() -> EncryptionContext {
    EncryptionContext::for_file(&VOLUME_ID, &FILE_ID)
}

fn key_fingerprint(master: &DataKey) -> [u8; 16] {
    let mut out = Vec::new();
    master.seal_detached(&[0; 12], b"KMSFS-KEYID", &[], &mut out);
    out.try_into().expect("a tag is 16 bytes")
}

/// The local provider's wrapped key, computed independently of `keys::local` with a fixed nonce.
fn local_wrapped(master: &DataKey, ctx: &EncryptionContext) -> (Vec<u8>, Vec<u8>) {
    let mut aad = b"KMSFS-W1".to_vec();
    aad.extend_from_slice(&key_fingerprint(master));
    aad.extend_from_slice(&ctx.canonical_bytes());
    let mut wrapped = vec![0x01];
    wrapped.extend_from_slice(&WRAP_NONCE);
    master.seal_detached(&WRAP_NONCE, &aad, &DATA_KEY, &mut wrapped);
    (aad, wrapped)
}

/// The vector file's header as a format-2 vault holds it (no key time), with its commitment.
fn format2_header(data_key: &DataKey, wrapped: &[u8]) -> FileHeader {
    let mut h = FileHeader::new(BS, VOLUME_ID, FILE_ID, ProviderId::Local, wrapped.to_vec())
        .expect("valid header");
    h.version = 2;
    h.commitment = crypto::key_commitment(data_key, &h);
    h
}

/// The config key of the vector config: bytes 20 21 … 3f.
const CONFIG_KEY: [u8; 32] = seq(0x20);

/// The vector vault's config: volume 40…4f, local key `master_key_id`, encrypted names, with
/// placeholder wrapped keys (a1… for the name key, c2… for the config key), sealed under
/// CONFIG_KEY.
fn vector_config(fingerprint: &[u8; 16]) -> VaultConfig {
    let mut cfg = VaultConfig {
        format_version: 2,
        volume_id: hex::encode(VOLUME_ID),
        block_size: BS,
        header_size: HEADER_SIZE as u32,
        provider: "local".into(),
        key_id: format!("local:{}", hex::encode(&fingerprint[..8])),
        plaintext_names: false,
        wrapped_name_key: Some("a1".repeat(61)),
        wrapped_bucket_key: None,
        wrapped_config_key: "c2".repeat(61),
        config_tag: String::new(),
    };
    cfg.seal(&ConfigKey::from_bytes(&CONFIG_KEY));
    cfg
}

/// Every vector, computed from the crate's code, in file order.
fn generate() -> Vec<Entry> {
    let data_key = DataKey::from_slice(&DATA_KEY).expect("data key");
    let master = DataKey::from_slice(&MASTER_KEY).expect("master key");
    let ctx = file_ctx();
    let fingerprint = key_fingerprint(&master);
    let (wrap_aad, wrapped) = local_wrapped(&master, &ctx);

    let mut header = FileHeader::new(BS, VOLUME_ID, FILE_ID, ProviderId::Local, wrapped.clone())
        .expect("valid header");
    header.key_made = Some(KEY_MADE);
    header.commitment = crypto::key_commitment(&data_key, &header);
    let mut commit_input = crypto::COMMITMENT_PREFIX.to_vec();
    commit_input.extend_from_slice(&header.committed_bytes());
    let old = format2_header(&data_key, &wrapped);
    let mut commit_input_v2 = crypto::COMMITMENT_PREFIX.to_vec();
    commit_input_v2.extend_from_slice(&old.committed_bytes());

    let mut v = vec![
        entry(
            "data_key",
            hex::encode(DATA_KEY),
            "inputs: the file's data key",
        ),
        entry("volume_id", hex::encode(VOLUME_ID), ""),
        entry("file_id", hex::encode(FILE_ID), ""),
        entry(
            "block_size",
            BS.to_string(),
            "block size of the vector vault (decimal)",
        ),
        entry(
            "context_canonical",
            hex::encode(ctx.canonical_bytes()),
            "encryption context {kmsfs:file-id, kmsfs:volume-id}, canonical encoding",
        ),
        entry(
            "context_volume_names",
            hex::encode(EncryptionContext::for_volume(&VOLUME_ID, "names").canonical_bytes()),
            "a volume-level key's context {kmsfs:purpose = \"names\", kmsfs:volume-id}, canonical encoding",
        ),
        entry(
            "master_key",
            hex::encode(MASTER_KEY),
            "local provider: master key (key file = these 64 hex digits and a newline)",
        ),
        entry(
            "master_fingerprint",
            hex::encode(fingerprint),
            "GCM-SIV tag: master key, zero nonce, AAD \"KMSFS-KEYID\", empty plaintext",
        ),
        entry(
            "master_key_id",
            format!("\"local:{}\"", hex::encode(&fingerprint[..8])),
            "ASCII string",
        ),
        entry("wrap_nonce", hex::encode(WRAP_NONCE), ""),
        entry(
            "wrap_aad",
            hex::encode(&wrap_aad),
            "\"KMSFS-W1\" ‖ fingerprint ‖ context_canonical",
        ),
        entry(
            "wrapped_key",
            hex::encode(&wrapped),
            "01 ‖ nonce ‖ ciphertext of data_key ‖ tag (61 bytes); stored in header slot 0",
        ),
        entry(
            "commitment_input",
            hex::encode(&commit_input),
            "header: \"KMSFS-C2\" ‖ header bytes 0..96",
        ),
        entry(
            "key_commitment",
            hex::encode(header.commitment),
            "HMAC-SHA256(data key, commitment_input)",
        ),
        entry(
            "header",
            hex::encode(header.encode()),
            "the full 1024-byte header (format 3, key made 2026-12-01T00:00:00Z = 1796083200, provider local, active slot 0, slot 1 empty)",
        ),
        entry(
            "commitment_input_v2",
            hex::encode(&commit_input_v2),
            "the same file in a format-2 vault: version 2, no key time (bytes 52..60 zero)",
        ),
        entry(
            "key_commitment_v2",
            hex::encode(old.commitment),
            "HMAC-SHA256(data key, commitment_input_v2)",
        ),
        entry(
            "header_v2",
            hex::encode(old.encode()),
            "the full format-2 header (read by this build; written into format-2 vaults)",
        ),
    ];

    let config = vector_config(&fingerprint);
    v.push(entry(
        "config_key",
        hex::encode(CONFIG_KEY),
        "vault config (docs/FORMAT.md 1.1): the config key (its wrapped form is in the config)",
    ));
    v.push(entry(
        "config_canonical",
        hex::encode(config.canonical_bytes()),
        "\"KMSFS-CFG2\" ‖ (u16 LE len ‖ name ‖ u16 LE len ‖ value) per field, in order",
    ));
    v.push(entry(
        "config_tag",
        config.config_tag.clone(),
        "HMAC-SHA256(config key, config_canonical)",
    ));

    for index in [0u64, 1] {
        v.push(entry(
            format!("block_aad{index}"),
            hex::encode(crypto::block_aad(&VOLUME_ID, &FILE_ID, index)),
            format!("AAD of block {index}: \"KMSFS-B1\" ‖ volume id ‖ file id ‖ u64 LE index"),
        ));
    }

    let cipher = BlockCipher::new(Arc::new(data_key), VOLUME_ID, FILE_ID);
    for b in block_vectors() {
        v.push(entry(
            format!("{}_nonce", b.name),
            hex::encode(b.nonce),
            b.what,
        ));
        if b.plain.len() < 64 {
            v.push(entry(
                format!("{}_plain", b.name),
                hex::encode(&b.plain),
                "",
            ));
        }
        let mut stored = Vec::new();
        cipher.seal_with_nonce(b.index, &b.nonce, &b.plain, &mut stored);
        v.push(entry(
            b.name,
            hex::encode(stored),
            "stored: nonce ‖ ciphertext ‖ tag",
        ));
    }

    // Hole maps (docs/FORMAT.md 4.1): a level-0 chunk granting blocks 1..=4 and 10 of the
    // vector file, and where chunks sit in the map file.
    let geometry = HoleGeometry::new(BS as usize);
    let leaf = Chunk { level: 0, index: 0 };
    v.push(entry(
        "hole_chunk_aad",
        hex::encode(crypto::chunk_aad(&VOLUME_ID, &FILE_ID, leaf)),
        "hole map: AAD of level-0 chunk 0: \"KMSFS-H0\" ‖ volume id ‖ file id ‖ u64 LE index",
    ));
    let mut bitmap = vec![0u8; BS as usize];
    set_bits(&mut bitmap, 1..5, true);
    set_bits(&mut bitmap, 10..11, true);
    v.push(entry(
        "hole_chunk_plain_head",
        hex::encode(&bitmap[..4]),
        "its bitmap's first 4 bytes (bit i of byte j = block 8j + i); the other 4092 are zero",
    ));
    v.push(entry("hole_chunk_nonce", hex::encode(HOLE_NONCE), ""));
    let mut stored = Vec::new();
    cipher.seal_chunk_with_nonce(leaf, &HOLE_NONCE, &bitmap, &mut stored);
    v.push(entry(
        "hole_chunk",
        hex::encode(Sha256::digest(&stored)),
        "SHA-256 of the stored chunk (nonce ‖ ciphertext ‖ tag, 4124 bytes)",
    ));
    v.push(entry(
        "hole_chunk_tag",
        hex::encode(&stored[stored.len() - 16..]),
        "its tag",
    ));
    for (level, index) in [(0u8, 0u64), (1, 0), (0, 1), (4, 0)] {
        let offset = geometry.offset(Chunk { level, index }).expect("offset");
        v.push(entry(
            format!("hole_chunk_offset.{level}.{index}"),
            offset.to_string(),
            if (level, index) == (0, 0) {
                "map-file offset of chunk (level.index), decimal: (index · 5 + level) · 4124"
            } else {
                ""
            },
        ));
    }

    let layout = Layout::new(HEADER_SIZE as u64, BS).expect("layout");
    for (i, p) in [0u64, 1, 4095, 4096, 4097, 8191, 8192, 1 << 30]
        .into_iter()
        .enumerate()
    {
        let comment = if i == 0 {
            "sizes at block size 4096 (decimal): backing_size.P = backing size of a plain file of P bytes"
        } else {
            ""
        };
        v.push(entry(
            format!("backing_size.{p}"),
            layout.backing_size(p).to_string(),
            comment,
        ));
    }
    let invalid = invalid_backing_sizes(&layout);
    v.push(entry(
        "invalid_backing_sizes",
        invalid
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "backing sizes no plain size produces (decimal, block size 4096)",
    ));
    v
}

/// Examples of backing sizes that must be rejected: shorter than a header plus one block's
/// overhead, a header alone, or ending on a full block (end of file not authenticated).
fn invalid_backing_sizes(layout: &Layout) -> Vec<u64> {
    let h = layout.header_size();
    let sb = layout.stored_block_size();
    vec![
        1,
        1023,
        h,
        h + BLOCK_OVERHEAD - 1,
        h + BLOCK_OVERHEAD,
        h + sb,
        h + sb + BLOCK_OVERHEAD - 1,
        h + 2 * sb,
    ]
}

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn vectors_path() -> PathBuf {
    manifest_path("tests/vectors/format.txt")
}

/// Render the vector file: `# comment` lines, `name = value`, long values wrapped at 64 hex
/// characters on indented continuation lines.
fn render(entries: &[Entry]) -> String {
    let mut s = String::from(
        "# kmsfs on-disk format v3 (and the format-2 header): test vectors (docs/FORMAT.md, \"Test vectors\").\n\
         # Generated by tests/format_vectors.rs (KMSFS_BLESS_VECTORS=1); checked by the same test.\n\
         # name = value; hex unless noted; long values continue on indented lines.\n",
    );
    for e in entries {
        if !e.comment.is_empty() {
            s.push_str(&format!("\n# {}\n", e.comment));
        }
        if e.value.len() <= WRAP {
            let line = format!("{} = {}", e.name, e.value);
            s.push_str(line.trim_end());
            s.push('\n');
        } else {
            s.push_str(&format!("{} =\n", e.name));
            for chunk in e.value.as_bytes().chunks(WRAP) {
                s.push_str("    ");
                s.push_str(std::str::from_utf8(chunk).expect("ascii"));
                s.push('\n');
            }
        }
    }
    s
}

/// Parse the vector file into (name, value) pairs, in order.
fn parse(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = t.split_once('=') {
            out.push((name.trim().to_string(), value.trim().to_string()));
        } else {
            let last = out
                .last_mut()
                .unwrap_or_else(|| panic!("line {}: continuation before any name", n + 1));
            assert!(
                line.starts_with(char::is_whitespace),
                "line {}: neither `name = value` nor an indented continuation",
                n + 1
            );
            last.1.push_str(t);
        }
    }
    out
}

fn load() -> Vec<(String, String)> {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse(&text)
}

fn get<'a>(vectors: &'a [(String, String)], name: &str) -> &'a str {
    vectors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("vector {name} missing from the vector file"))
}

fn get_hex(vectors: &[(String, String)], name: &str) -> Vec<u8> {
    hex::decode(get(vectors, name)).unwrap_or_else(|e| panic!("vector {name} is not hex: {e}"))
}

#[test]
fn vector_file_matches_code() {
    let generated = generate();
    if std::env::var_os("KMSFS_BLESS_VECTORS").is_some() {
        let path = vectors_path();
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // Write aside and rename, so the tests reading the file meanwhile see old or new.
        let tmp = path.with_extension("txt.new");
        std::fs::write(&tmp, render(&generated)).expect("write vectors");
        std::fs::rename(&tmp, &path).expect("replace vectors");
        eprintln!("wrote {}", path.display());
    }
    let stored = load();
    let names: Vec<&str> = generated.iter().map(|e| e.name.as_str()).collect();
    let stored_names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        stored_names, names,
        "vector names or order differ from the code"
    );
    for (e, (_, value)) in generated.iter().zip(&stored) {
        assert_eq!(
            value, &e.value,
            "vector {} differs: the code computes {}, the file says {}",
            e.name, e.value, value
        );
    }
}

/// The `name = value` entries inside the fenced code blocks of a Markdown document, values
/// continued on indented lines joined as in the vector file. Other lines end an entry.
fn doc_entries(doc: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_code = false;
    let mut open = false;
    for line in doc.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_code = !in_code;
            open = false;
            continue;
        }
        if !in_code || t.is_empty() || t.starts_with('#') {
            open = false;
            continue;
        }
        if let Some((name, value)) = t.split_once('=') {
            out.push((name.trim().to_string(), value.trim().to_string()));
            open = true;
        } else if open && line.starts_with(char::is_whitespace) {
            if let Some(last) = out.last_mut() {
                last.1.push_str(t);
            }
        } else {
            open = false;
        }
    }
    out
}

#[test]
fn docs_contain_every_vector() {
    let path = manifest_path("docs/FORMAT.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let section = doc
        .find("Test vectors\n")
        .and_then(|at| doc[..at].rfind("\n#").map(|start| &doc[start..]))
        .expect("docs/FORMAT.md has a \"Test vectors\" section");
    let in_doc = doc_entries(section);
    let vectors = load();
    for (name, value) in &in_doc {
        if let Some((_, want)) = vectors.iter().find(|(n, _)| n == name) {
            assert_eq!(
                value, want,
                "docs/FORMAT.md has a stale value for vector {name}"
            );
        }
    }
    let missing: Vec<String> = vectors
        .into_iter()
        .filter(|entry| !in_doc.contains(entry))
        .map(|(name, value)| format!("{name} = {value}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/FORMAT.md lacks these vectors (paste tests/vectors/format.txt into a code \
         block of its \"Test vectors\" section): {missing:?}"
    );
}

#[test]
fn header_vector_decodes_round_trips_and_verifies() {
    let v = load();
    let bytes = get_hex(&v, "header");
    assert_eq!(bytes.len(), HEADER_SIZE);
    let header = FileHeader::decode(&bytes).expect("the header vector decodes");
    assert_eq!(
        header.encode().as_slice(),
        bytes.as_slice(),
        "encode(decode(x)) == x"
    );
    assert_eq!(header.block_size, BS);
    assert_eq!((header.version, header.key_made), (3, Some(KEY_MADE)));
    assert_eq!(header.volume_id.as_slice(), get_hex(&v, "volume_id"));
    assert_eq!(header.file_id.as_slice(), get_hex(&v, "file_id"));
    assert_eq!(header.provider, ProviderId::Local);
    assert_eq!(header.active, 0);
    assert_eq!(header.wrapped_key(), get_hex(&v, "wrapped_key").as_slice());
    assert!(header.slots[1].is_empty());
    assert_eq!(header.commitment.as_slice(), get_hex(&v, "key_commitment"));

    let key = DataKey::from_slice(&get_hex(&v, "data_key")).expect("key");
    crypto::verify_header(&key, &header).expect("the header vector's commitment verifies");
    let other = DataKey::from_slice(&MASTER_KEY).expect("key");
    assert_eq!(
        crypto::verify_header(&other, &header),
        Err(CryptoError::Authentication)
    );

    // The commitment covers bytes 0..96 and is bytes 96..128: any change is caught, either by
    // decode (structure) or by verify_header.
    for at in 0..128 {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        if let Ok(h) = FileHeader::decode(&b) {
            assert!(
                crypto::verify_header(&key, &h).is_err(),
                "byte {at} changed unnoticed"
            );
        }
    }
    // The slot area is outside the commitment; the active slot's wrapped key is authenticated
    // by its wrapping (see local_provider_vector_unwraps_to_the_data_key) and the key it
    // unwraps to by the commitment (see two_slots_with_two_keys_cannot_both_open).
    let mut b = bytes.clone();
    b[HEADER_SIZE - 1] = 0xff; // a damaged inactive slot is ignored
    let h = FileHeader::decode(&b).expect("inactive slot damage is tolerated");
    crypto::verify_header(&key, &h).expect("slot area is not covered by the commitment");
    assert_eq!(SLOT_CAPACITY, 442);
}

/// A format-2 header (a vault made before key times) still decodes and verifies, its key time
/// unknown; it differs from the format-3 header only in the version and the key time.
#[test]
fn format_2_header_vector_still_reads() {
    let v = load();
    let old = get_hex(&v, "header_v2");
    let new = get_hex(&v, "header");
    let h = FileHeader::decode(&old).expect("the format-2 header decodes");
    assert_eq!((h.version, h.key_made), (2, None));
    assert_eq!(
        h.encode().as_slice(),
        old.as_slice(),
        "encode(decode(x)) == x"
    );
    assert_eq!(h.commitment.as_slice(), get_hex(&v, "key_commitment_v2"));
    let key = DataKey::from_slice(&get_hex(&v, "data_key")).expect("key");
    crypto::verify_header(&key, &h).expect("the format-2 commitment verifies");
    let differ: Vec<usize> = (0..96).filter(|&i| old[i] != new[i]).collect();
    assert!(
        differ.iter().all(|&i| i == 8 || (52..60).contains(&i)),
        "format 2 and 3 differ elsewhere: {differ:?}"
    );
}

#[test]
fn block_vectors_open_to_their_plaintext() {
    let v = load();
    let key = DataKey::from_slice(&get_hex(&v, "data_key")).expect("key");
    let volume: Id = get_hex(&v, "volume_id").try_into().expect("16 bytes");
    let file: Id = get_hex(&v, "file_id").try_into().expect("16 bytes");
    let cipher = BlockCipher::new(Arc::new(key), volume, file);
    for b in block_vectors() {
        let stored = get_hex(&v, b.name);
        assert_eq!(
            stored.len(),
            b.plain.len() + BLOCK_OVERHEAD as usize,
            "{}",
            b.name
        );
        assert_eq!(stored[..12], b.nonce, "{}: nonce first", b.name);
        let mut out = vec![0u8; b.plain.len()];
        cipher
            .open(b.index, &stored, &mut out)
            .expect("block vector opens");
        assert_eq!(out, b.plain, "{}", b.name);
        assert_eq!(
            cipher.open(b.index + 1, &stored, &mut out),
            Err(CryptoError::Authentication),
            "{} opened at another index",
            b.name
        );
        if b.plain.len() < 64 {
            assert_eq!(get_hex(&v, &format!("{}_plain", b.name)), b.plain);
        }
        let aad = get_hex(&v, &format!("block_aad{}", b.index));
        assert_eq!(aad, crypto::block_aad(&volume, &file, b.index));
    }
}

#[test]
fn whole_file_vectors_parse_through_the_layout() {
    let v = load();
    let header = get_hex(&v, "header");
    let key = DataKey::from_slice(&get_hex(&v, "data_key")).expect("key");
    let full = get_hex(&v, "block0_full");
    // plain size → backing file made of the vector blocks
    let files: [(u64, Vec<&str>); 3] = [
        (1, vec!["block0_one"]),
        (4096, vec!["block0_full", "block1_empty"]),
        (
            4096 + PARTIAL_PLAIN.len() as u64,
            vec!["block0_full", "block1_partial"],
        ),
    ];
    for (plain_size, blocks) in files {
        let mut backing = header.clone();
        for name in &blocks {
            backing.extend_from_slice(&get_hex(&v, name));
        }
        let h = FileHeader::decode(&backing).expect("header");
        crypto::verify_header(&key, &h).expect("commitment");
        let layout = h.layout().expect("layout");
        assert_eq!(layout.backing_size(plain_size), backing.len() as u64);
        assert_eq!(layout.plain_size(backing.len() as u64), Ok(plain_size));
        let cipher = BlockCipher::new(
            Arc::new(DataKey::from_slice(key.expose()).expect("key")),
            h.volume_id,
            h.file_id,
        );
        let mut plain = Vec::new();
        for index in 0..layout.block_count(plain_size) {
            let len = layout.block_len(index, plain_size);
            let at = layout.backing_offset(index) as usize;
            let mut out = vec![0u8; len];
            cipher
                .open(
                    index,
                    &backing[at..at + len + BLOCK_OVERHEAD as usize],
                    &mut out,
                )
                .expect("block opens");
            plain.extend_from_slice(&out);
        }
        assert_eq!(plain.len() as u64, plain_size);
        if plain_size >= 4096 {
            assert_eq!(plain[..4096], full_plain()[..]);
        }
        // Dropping the final block leaves a size no plain size has.
        let cut = backing.len() - get_hex(&v, blocks[blocks.len() - 1]).len();
        assert!(
            layout.plain_size(cut as u64).is_err(),
            "cut at {cut} accepted"
        );
    }
    assert_eq!(full.len(), 4096 + 28);
}

#[test]
fn size_vectors_match_the_layout() {
    let v = load();
    let layout = Layout::new(HEADER_SIZE as u64, BS).expect("layout");
    let mut seen = 0;
    for (name, value) in &v {
        if let Some(p) = name.strip_prefix("backing_size.") {
            let p: u64 = p.parse().expect("plain size");
            let b: u64 = value.parse().expect("backing size");
            let expected = if p == 0 {
                0
            } else {
                1024 + (p / 4096) * (4096 + 28) + 28 + p % 4096
            };
            assert_eq!(b, expected, "formula of docs/FORMAT.md for P = {p}");
            assert_eq!(layout.backing_size(p), b);
            assert_eq!(layout.plain_size(b), Ok(p));
            seen += 1;
        }
    }
    assert!(seen >= 5);
    for bad in get(&v, "invalid_backing_sizes").split(',') {
        let bad: u64 = bad.parse().expect("decimal");
        assert!(
            layout.plain_size(bad).is_err(),
            "backing size {bad} accepted"
        );
    }
}

#[test]
fn local_provider_vector_unwraps_to_the_data_key() {
    let v = load();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("key file");
    writeln!(f, "{}", get(&v, "master_key")).expect("write key file");
    drop(f);

    let provider = LocalProvider::open(&path).expect("open key file");
    assert_eq!(
        format!("\"{}\"", provider.key_id()),
        get(&v, "master_key_id")
    );
    assert_eq!(provider.provider_id(), ProviderId::Local);
    let ctx = file_ctx();
    assert_eq!(ctx.canonical_bytes(), get_hex(&v, "context_canonical"));
    let wrapped = get_hex(&v, "wrapped_key");
    assert_eq!(wrapped.len(), kmsfs::keys::local::WRAPPED_LEN);
    let key = provider
        .decrypt(&wrapped, &ctx)
        .expect("the wrapped-key vector unwraps");
    assert_eq!(key.expose().as_slice(), get_hex(&v, "data_key"));
    // Bound to the file: the same blob under another file's context is refused.
    let other = EncryptionContext::for_file(&VOLUME_ID, &seq(0x51));
    assert!(provider.decrypt(&wrapped, &other).is_err());
    // The provider's own (random-nonce) wraps follow the documented layout: they open with
    // the master key, the nonce in bytes 1..13 and the vector's wrap AAD.
    let rewrapped = provider.wrap(&key, &ctx).expect("wrap");
    assert_eq!(rewrapped.len(), wrapped.len());
    assert_eq!(rewrapped[0], 0x01);
    let master = DataKey::from_slice(&get_hex(&v, "master_key")).expect("master");
    let nonce: [u8; 12] = rewrapped[1..13].try_into().expect("nonce");
    let mut raw = [0u8; 32];
    master
        .open_detached(&nonce, &get_hex(&v, "wrap_aad"), &rewrapped[13..], &mut raw)
        .expect("documented wrap layout");
    assert_eq!(raw.as_slice(), get_hex(&v, "data_key"));
}

/// Attack 8 of the hostile-store issue: someone with KMS rights for one file's context wraps a
/// second data key for it into the inactive slot. Flipping the active-slot byte (which rewrap
/// flips, so it is outside the commitment) makes the file open under the second key, unless the
/// header commits to its key. It does: the second key fails `verify_header`.
#[test]
fn two_slots_with_two_keys_cannot_both_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = LocalProvider::create(&dir.path().join("k")).expect("key");
    let ctx = file_ctx();
    let first = provider.generate_data_key(&ctx).expect("key 1");
    let second = provider.generate_data_key(&ctx).expect("key 2");
    let mut header =
        FileHeader::new(BS, VOLUME_ID, FILE_ID, ProviderId::Local, first.wrapped).expect("header");
    header.commitment = crypto::key_commitment(&first.key, &header);
    header.slots[1] = second.wrapped;
    let mut bytes = header.encode();
    let h = FileHeader::decode(&bytes).expect("decode");
    let k = provider.decrypt(h.wrapped_key(), &ctx).expect("slot 0");
    crypto::verify_header(&k, &h).expect("the committed key opens");
    bytes[128] = 1; // the attacker's flip
    let h = FileHeader::decode(&bytes).expect("a flipped header still decodes");
    let k = provider
        .decrypt(h.wrapped_key(), &ctx)
        .expect("slot 1 unwraps");
    assert_eq!(
        crypto::verify_header(&k, &h),
        Err(CryptoError::Authentication),
        "a second key opened a header committed to the first"
    );
}

#[test]
fn config_vector_parses_and_its_tag_covers_every_field() {
    let v = load();
    let canonical = get_hex(&v, "config_canonical");
    assert!(canonical.starts_with(b"KMSFS-CFG2"));
    let tag = get_hex(&v, "config_tag");
    let key: [u8; 32] = get_hex(&v, "config_key").try_into().expect("32 bytes");
    assert_eq!(tag, kmsfs::crypto::hmac_sha256(&key, &[&canonical]));
    let fingerprint: [u8; 16] = get_hex(&v, "master_fingerprint").try_into().expect("16");
    let cfg = vector_config(&fingerprint);
    let json = serde_json::to_vec(&cfg).expect("json");
    let back = VaultConfig::parse(&json, "vector", Path::new("/vector")).expect("parses");
    assert_eq!(back.canonical_bytes(), canonical);
    let mut changed = back.clone();
    changed.plaintext_names = true;
    changed.wrapped_name_key = None;
    assert_ne!(changed.canonical_bytes(), canonical);
}
