//! A deterministic, position-dependent byte pattern for large transfers: cheap to generate at
//! any offset, and a reordered or repeated chunk changes the SHA-256.

use sha2::{Digest, Sha256};

/// Fills `buf` with the pattern bytes at `offset..offset + buf.len()`.
pub fn fill(offset: u64, buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let word = splitmix64(pos / 8);
        // `pos % 8` < 8, so the index is in range.
        *byte = word.to_le_bytes()[(pos % 8) as usize];
    }
}

/// The first `len` pattern bytes (for small sizes; stream large ones with [`fill`]).
pub fn bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill(0, &mut buf);
    buf
}

/// The lower-case hex SHA-256 of the first `len` pattern bytes.
pub fn sha256_hex(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill(offset, &mut buf[..n]);
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hex::encode(hasher.finalize())
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_at_offset_matches_whole() {
        let whole = bytes(1000);
        let mut part = vec![0; 100];
        fill(333, &mut part);
        assert_eq!(&whole[333..433], &part[..]);
        assert_eq!(
            sha256_hex(1000),
            hex::encode(Sha256::digest(&whole)),
            "streamed and whole digests agree"
        );
    }
}
