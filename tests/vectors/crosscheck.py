#!/usr/bin/env python3
"""Recompute every vector of format.txt with an independent AES-GCM-SIV implementation.

Needs Python's `cryptography` package (>= 42, which has AESGCMSIV). Usage:
    python3 tests/vectors/crosscheck.py   (exit 0: all vectors agree)
Not part of `cargo test`: it checks the vectors against a second implementation, once.
"""
import hashlib
import hmac
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

HERE = pathlib.Path(__file__).resolve().parent


def load():
    v, cur = {}, None
    for line in (HERE / "format.txt").read_text().splitlines():
        t = line.strip()
        if not t or t.startswith("#"):
            cur = None
        elif "=" in t:
            k, val = t.split("=", 1)
            cur = k.strip()
            v[cur] = val.strip()
        elif cur is not None:
            v[cur] += t
    return v


def canonical(pairs):
    out = b""
    for k in sorted(pairs):
        for s in (k.encode(), pairs[k].encode()):
            out += struct.pack("<H", len(s)) + s
    return out


def seal(key, nonce, plain, aad):
    """ciphertext ‖ tag"""
    return AESGCMSIV(key).encrypt(nonce, plain, aad)


def main():
    v = load()
    h = lambda k: bytes.fromhex(v[k])  # noqa: E731
    dk, vol, fid, mk = h("data_key"), h("volume_id"), h("file_id"), h("master_key")
    bs = int(v["block_size"])

    ctx = canonical({"kmsfs:volume-id": vol.hex(), "kmsfs:file-id": fid.hex()})
    assert ctx == h("context_canonical")
    names = canonical({"kmsfs:volume-id": vol.hex(), "kmsfs:purpose": "names"})
    assert names == h("context_volume_names")

    fp = seal(mk, bytes(12), b"", b"KMSFS-KEYID")
    assert fp == h("master_fingerprint")
    assert v["master_key_id"] == '"local:%s"' % fp[:8].hex()
    wrap_aad = b"KMSFS-W1" + fp + ctx
    assert wrap_aad == h("wrap_aad")
    wrapped = b"\x01" + h("wrap_nonce") + seal(mk, h("wrap_nonce"), dk, wrap_aad)
    assert wrapped == h("wrapped_key")

    # format 3 records when the key was made (u64 LE at 52); format 2 has zeros there
    for version, key_made, suffix in ((3, 1796083200, ""), (2, 0, "_v2")):
        hdr = bytearray(1024)
        hdr[0:8] = b"KMSFSENC"
        hdr[8:16] = struct.pack("<HHI", version, 1024, bs)
        hdr[16:32], hdr[32:48] = vol, fid
        hdr[48] = 1  # provider: local
        hdr[50:52] = struct.pack("<H", 442)
        hdr[52:60] = struct.pack("<Q", key_made)
        commit_input = b"KMSFS-C2" + bytes(hdr[:96])
        assert commit_input == h("commitment_input" + suffix)
        commitment = hmac.new(dk, commit_input, hashlib.sha256).digest()
        assert commitment == h("key_commitment" + suffix)
        hdr[96:128] = commitment
        hdr[136:138] = struct.pack("<H", len(wrapped))
        hdr[138 : 138 + len(wrapped)] = wrapped
        assert bytes(hdr) == h("header" + suffix)

    blocks = {
        "block0_full": (0, bytes(i % 256 for i in range(bs))),
        "block1_empty": (1, b""),
        "block1_partial": (1, h("block1_partial_plain")),
        "block0_one": (0, h("block0_one_plain")),
    }
    for name, (index, plain) in blocks.items():
        aad = b"KMSFS-B1" + vol + fid + struct.pack("<Q", index)
        assert aad == h("block_aad%d" % index)
        nonce = h(name + "_nonce")
        assert nonce + seal(dk, nonce, plain, aad) == h(name), name

    fields = [
        ("format_version", "2"),
        ("volume_id", vol.hex()),
        ("block_size", str(bs)),
        ("header_size", "1024"),
        ("provider", "local"),
        ("key_id", "local:" + fp[:8].hex()),
        ("plaintext_names", "false"),
        ("wrapped_name_key", "a1" * 61),
        ("wrapped_config_key", "c2" * 61),
    ]
    cfg_bytes = b"KMSFS-CFG2"
    for name, value in fields:
        for s in (name.encode(), value.encode()):
            cfg_bytes += struct.pack("<H", len(s)) + s
    assert cfg_bytes == h("config_canonical")
    tag = hmac.new(h("config_key"), cfg_bytes, hashlib.sha256).digest()
    assert tag == h("config_tag")

    # hole maps (section 4.1): a level-0 chunk granting blocks 1..4 and 10
    aad = b"KMSFS-H0" + vol + fid + struct.pack("<Q", 0)
    assert aad == h("hole_chunk_aad")
    bitmap = bytearray(bs)
    for blk in (1, 2, 3, 4, 10):
        bitmap[blk // 8] |= 1 << (blk % 8)
    assert bytes(bitmap[:4]) == h("hole_chunk_plain_head")
    nonce = h("hole_chunk_nonce")
    stored = nonce + seal(dk, nonce, bytes(bitmap), aad)
    assert len(stored) == bs + 28
    assert hashlib.sha256(stored).digest() == h("hole_chunk")
    assert stored[-16:] == h("hole_chunk_tag")
    levels = -(-64 // ((bs * 8).bit_length() - 1))  # ceil(64 / log2(8·bs))
    for k in v:
        if k.startswith("hole_chunk_offset."):
            level, index = map(int, k.split(".")[1:])
            assert (index * levels + level) * (bs + 28) == int(v[k]), k

    def backing(p):
        return 0 if p == 0 else 1024 + (p // bs) * (bs + 28) + 28 + p % bs

    for k in v:
        if k.startswith("backing_size."):
            assert backing(int(k.split(".", 1)[1])) == int(v[k]), k
    valid = {backing(p) for p in range(0, 3 * bs)}
    for b in map(int, v["invalid_backing_sizes"].split(",")):
        assert b not in valid, b

    print("all %d vectors agree with an independent AES-GCM-SIV" % len(v))


if __name__ == "__main__":
    sys.exit(main())
