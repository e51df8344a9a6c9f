//! Per-chunk compression. Each chunk is compressed on its own (so chunks of one object can
//! travel over different connections and be decoded in any order), and a chunk that does not
//! shrink is sent as it is: already-compressed data costs no extra bytes and no decode time.

use std::fmt;
use std::str::FromStr;

/// Frame flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// Frame flag: the payload is an LZ4 block.
pub const FLAG_LZ4: u8 = 2;

/// How chunks are compressed before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// LZ4: about 3x faster than zstd level 1, a lower ratio.
    Lz4,
    /// zstd at this level. Level 1 keeps up with a few hundred Mbit/s per core, which is
    /// what one wide-area connection set carries; higher levels trade CPU for egress.
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(1)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

impl FromStr for Compression {
    type Err = String;

    /// `none`, `lz4`, `zstd` (level 1) or `zstd:LEVEL` (1-19).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd(1)),
            _ => match s.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(l)) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(format!(
                    "unknown compression '{s}' (use zstd, zstd:LEVEL with LEVEL 1-19, lz4 or none)"
                )),
            },
        }
    }
}

impl Compression {
    /// Compresses `plain`; returns the frame flags and the payload, which is `plain` itself
    /// (flags 0) when compressing did not make it smaller.
    pub fn compress(self, plain: &[u8]) -> (u8, Vec<u8>) {
        let packed = match self {
            Compression::None => None,
            Compression::Lz4 => Some((FLAG_LZ4, lz4_flex::block::compress(plain))),
            Compression::Zstd(level) => zstd::bulk::compress(plain, level)
                .ok()
                .map(|z| (FLAG_ZSTD, z)),
        };
        match packed {
            Some((flag, p)) if p.len() < plain.len() => (flag, p),
            _ => (0, plain.to_vec()),
        }
    }
}

/// Undoes [`Compression::compress`]; `plain_len` is the length the header promises.
pub fn decompress(flags: u8, payload: Vec<u8>, plain_len: usize) -> Result<Vec<u8>, String> {
    let plain = match flags & (FLAG_ZSTD | FLAG_LZ4) {
        0 => payload,
        FLAG_ZSTD => zstd::bulk::decompress(&payload, plain_len).map_err(|e| e.to_string())?,
        FLAG_LZ4 => lz4_flex::block::decompress(&payload, plain_len).map_err(|e| e.to_string())?,
        _ => return Err("both zstd and lz4 flags set".into()),
    };
    if plain.len() != plain_len {
        return Err(format!(
            "decompressed to {} bytes, header says {plain_len}",
            plain.len()
        ));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_incompressible() {
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(1000);
        let mut noise = vec![0u8; 50_000];
        crate::key::random(&mut noise);
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            let (flags, packed) = c.compress(&text);
            assert_eq!(decompress(flags, packed.clone(), text.len()).unwrap(), text);
            if c != Compression::None {
                assert!(packed.len() < text.len() / 10, "{c}: {}", packed.len());
            }
            let (flags, packed) = c.compress(&noise);
            assert_eq!(flags, 0, "{c} kept noise compressed");
            assert_eq!(packed, noise);
        }
    }

    #[test]
    fn parses_names() {
        assert_eq!("zstd".parse(), Ok(Compression::Zstd(1)));
        assert_eq!("zstd:5".parse(), Ok(Compression::Zstd(5)));
        assert_eq!("lz4".parse(), Ok(Compression::Lz4));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
    }
}
