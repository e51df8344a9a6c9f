//! The framing on the wide-area hop: handshake, frame header, sealing and opening.
//!
//! Everything here is the byte format documented in the crate doc; the gateway and the
//! client only call [`handshake_client`]/[`handshake_gateway`], [`Sealer::seal`] and
//! [`read_frame`].

use crate::codec;
use crate::key::{random, RelayKey, KEY_LEN};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use crc_fast::CrcAlgorithm;
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes of every hello and frame.
pub const MAGIC: [u8; 4] = *b"SKHR";
/// Version of this format; a peer of another version is refused at the handshake.
pub const VERSION: u8 = 2;
/// Bytes in a frame header (all of it is authenticated as AAD).
pub const HEADER_LEN: usize = 64;
/// Bytes in a hello.
pub const HELLO_LEN: usize = 32;
/// The AES-GCM tag that ends every payload.
pub const TAG_LEN: usize = 16;
/// Most plaintext bytes in one frame: bounds what a corrupted length can make a peer read.
pub const MAX_CHUNK: usize = 8 << 20;

/// Which messages a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The JSON of a request; `total` is the length of its body.
    RequestMeta = 1,
    /// A piece of a request body at `offset`.
    RequestData = 2,
    /// The JSON of a response; `total` is the length of its body.
    ResponseMeta = 3,
    /// A piece of a response body at `offset`.
    ResponseData = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::RequestMeta,
            2 => Kind::RequestData,
            3 => Kind::ResponseMeta,
            4 => Kind::ResponseData,
            _ => return None,
        })
    }

    pub fn is_meta(self) -> bool {
        matches!(self, Kind::RequestMeta | Kind::ResponseMeta)
    }
}

/// A frame header. Layout (big-endian), 64 bytes:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `SKHR` |
/// | 4 | 1 | version (1) |
/// | 5 | 1 | kind ([`Kind`]) |
/// | 6 | 1 | flags: 1 = zstd, 2 = lz4, 0 = raw |
/// | 7 | 1 | reserved, 0 |
/// | 8 | 8 | session: the client's random id, the same on all its connections |
/// | 16 | 8 | stream: the message (request and its response) within the session |
/// | 24 | 8 | offset of this chunk in the message body |
/// | 32 | 8 | total length of the message body (a meta frame's JSON is its whole plaintext) |
/// | 40 | 4 | plaintext length of this chunk |
/// | 44 | 4 | wire length: bytes that follow the header (ciphertext + 16-byte tag) |
/// | 48 | 8 | CRC64-NVME of the plaintext chunk |
/// | 56 | 8 | sequence number of this frame on its connection and direction |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub session: u64,
    pub stream: u64,
    pub offset: u64,
    pub total: u64,
    pub plain_len: u32,
    pub wire_len: u32,
    pub plain_crc: u64,
    pub seq: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        b[6] = self.flags;
        b[8..16].copy_from_slice(&self.session.to_be_bytes());
        b[16..24].copy_from_slice(&self.stream.to_be_bytes());
        b[24..32].copy_from_slice(&self.offset.to_be_bytes());
        b[32..40].copy_from_slice(&self.total.to_be_bytes());
        b[40..44].copy_from_slice(&self.plain_len.to_be_bytes());
        b[44..48].copy_from_slice(&self.wire_len.to_be_bytes());
        b[48..56].copy_from_slice(&self.plain_crc.to_be_bytes());
        b[56..64].copy_from_slice(&self.seq.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        if b[0..4] != MAGIC {
            return Err(WireError::Malformed("bad magic".into()));
        }
        if b[4] != VERSION {
            return Err(WireError::Malformed(format!(
                "protocol version {} (this side speaks {VERSION})",
                b[4]
            )));
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        let kind = Kind::from_u8(b[5])
            .ok_or_else(|| WireError::Malformed(format!("unknown frame kind {}", b[5])))?;
        let h = Header {
            kind,
            flags: b[6],
            session: u64_at(8),
            stream: u64_at(16),
            offset: u64_at(24),
            total: u64_at(32),
            plain_len: u32_at(40),
            wire_len: u32_at(44),
            plain_crc: u64_at(48),
            seq: u64_at(56),
        };
        if h.plain_len as usize > MAX_CHUNK || h.wire_len as usize > MAX_CHUNK + TAG_LEN {
            return Err(WireError::Malformed(format!(
                "frame of {} bytes exceeds the limit",
                h.wire_len
            )));
        }
        Ok(h)
    }
}

/// Why a frame or connection was refused.
#[derive(Debug)]
pub enum WireError {
    Io(std::io::Error),
    Malformed(String),
    /// The AES-GCM tag did not match: a changed byte, a replayed, reordered or foreign frame.
    Auth {
        seq: u64,
    },
    /// The plaintext did not match its CRC (decrypted fine, but decoded wrongly).
    Checksum {
        stream: u64,
        offset: u64,
    },
    /// The peer's hello is of this other protocol version.
    Version(u8),
    /// The gateway's proof of the transfer key did not match: it holds another key.
    Key,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Malformed(m) => write!(f, "malformed frame: {m}"),
            WireError::Auth { seq } => write!(
                f,
                "frame {seq} failed authentication (tampered, replayed, reordered or sealed with another key)"
            ),
            WireError::Checksum { stream, offset } => write!(
                f,
                "chunk at offset {offset} of message {stream} failed its plaintext CRC"
            ),
            WireError::Version(v) => write!(
                f,
                "the peer speaks relay protocol version {v}, this side {VERSION}: run the same skyhaul version at both ends"
            ),
            WireError::Key => write!(
                f,
                "the peer holds another transfer key: both ends need the same {}",
                crate::KEY_ENV
            ),
        }
    }
}

impl WireError {
    /// Whether the peer sent something wrong (as opposed to the connection ending).
    pub fn is_rejection(&self) -> bool {
        !matches!(self, WireError::Io(_))
    }
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e)
    }
}

/// Which way a frame travels; part of every nonce, so the two directions of a connection,
/// which share its key, never share a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToGateway = 0,
    ToClient = 1,
}

fn nonce(dir: Direction, seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0..4].copy_from_slice(&(dir as u32).to_be_bytes());
    n[4..12].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aead_key(k: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32-byte AES-256 key"))
}

/// A frame ready to seal: header fields but the sequence number and wire length, and the
/// (possibly compressed) payload.
#[derive(Debug)]
pub struct Plain {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Plain {
    /// Checksums and compresses one chunk of a message.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: Kind,
        session: u64,
        stream: u64,
        offset: u64,
        total: u64,
        chunk: &[u8],
        compression: codec::Compression,
    ) -> Plain {
        let (flags, payload) = compression.compress(chunk);
        Plain {
            header: Header {
                kind,
                flags,
                session,
                stream,
                offset,
                total,
                plain_len: chunk.len() as u32,
                wire_len: 0,
                plain_crc: crc_fast::checksum(CrcAlgorithm::Crc64Nvme, chunk),
                seq: 0,
            },
            payload,
        }
    }
}

/// Seals frames for one direction of one connection, numbering them.
pub struct Sealer {
    key: LessSafeKey,
    dir: Direction,
    seq: u64,
}

impl Sealer {
    /// Header and ciphertext, ready to write.
    pub fn seal(&mut self, mut p: Plain) -> Vec<u8> {
        p.header.seq = self.seq;
        p.header.wire_len = (p.payload.len() + TAG_LEN) as u32;
        let head = p.header.encode();
        self.key
            .seal_in_place_append_tag(nonce(self.dir, self.seq), Aad::from(head), &mut p.payload)
            .expect("AES-GCM seal of a bounded chunk cannot fail");
        self.seq += 1;
        let mut out = Vec::with_capacity(HEADER_LEN + p.payload.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(&p.payload);
        out
    }
}

/// Opens frames for one direction of one connection; only the next sequence number passes.
pub struct Opener {
    key: LessSafeKey,
    dir: Direction,
    next: u64,
}

/// Writes one sealed frame, and flushes when `more_queued` is false: TLS holds back what it
/// could not write yet until the next write or a flush, so a connection's writer flushes
/// whenever nothing else waits behind this frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
    more_queued: bool,
) -> std::io::Result<()> {
    w.write_all(frame).await?;
    if !more_queued {
        w.flush().await?;
    }
    Ok(())
}

/// Reads, authenticates, decompresses and checks one frame. Returns its header, plaintext and
/// the bytes it took on the wire. Any error leaves the stream unusable: the caller closes it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    opener: &mut Opener,
) -> Result<(Header, Vec<u8>, usize), WireError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let h = Header::decode(&head)?;
    let mut payload = vec![0u8; h.wire_len as usize];
    r.read_exact(&mut payload).await?;
    if h.seq != opener.next {
        return Err(WireError::Auth { seq: h.seq });
    }
    let plain_len = opener
        .key
        .open_in_place(
            nonce(opener.dir, opener.next),
            Aad::from(head),
            &mut payload,
        )
        .map_err(|_| WireError::Auth { seq: h.seq })?
        .len();
    opener.next += 1;
    payload.truncate(plain_len);
    let plain = codec::decompress(h.flags, payload, h.plain_len as usize)
        .map_err(|e| WireError::Malformed(format!("chunk does not decompress: {e}")))?;
    if crc_fast::checksum(CrcAlgorithm::Crc64Nvme, &plain) != h.plain_crc {
        return Err(WireError::Checksum {
            stream: h.stream,
            offset: h.offset,
        });
    }
    Ok((h, plain, HEADER_LEN + h.wire_len as usize))
}

/// What the client says first: who it is and how it compresses.
#[derive(Debug, Clone, Copy)]
pub struct ClientHello {
    pub session: u64,
    pub compression: codec::Compression,
}

fn compression_code(c: codec::Compression) -> (u8, u8) {
    match c {
        codec::Compression::None => (0, 0),
        codec::Compression::Lz4 => (1, 0),
        codec::Compression::Zstd(l) => (2, l.clamp(1, 19) as u8),
    }
}

fn compression_from(code: u8, level: u8) -> codec::Compression {
    match code {
        1 => codec::Compression::Lz4,
        2 => codec::Compression::Zstd(level.clamp(1, 19) as i32),
        _ => codec::Compression::None,
    }
}

/// Hello layout: magic (4), version (1), role `C`/`G` (1), compression code (1), level (1),
/// session (8, zero from a gateway), random (16).
fn hello(role: u8, comp: (u8, u8), session: u64, rand: &[u8; 16]) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = role;
    b[6] = comp.0;
    b[7] = comp.1;
    b[8..16].copy_from_slice(&session.to_be_bytes());
    b[16..32].copy_from_slice(rand);
    b
}

/// Reads a skyhaul relay peer's hello of `role`, of any version ([`same_version`] checks it).
async fn read_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    role: u8,
) -> Result<[u8; HELLO_LEN], WireError> {
    let mut b = [0u8; HELLO_LEN];
    r.read_exact(&mut b).await?;
    if b[0..4] != MAGIC || b[5] != role {
        return Err(WireError::Malformed(
            "not a skyhaul relay peer (bad hello)".into(),
        ));
    }
    Ok(b)
}

fn same_version(hello: &[u8; HELLO_LEN]) -> Result<(), WireError> {
    match hello[4] {
        VERSION => Ok(()),
        v => Err(WireError::Version(v)),
    }
}

/// A connection's two directions, both under its key, starting at sequence number 0.
fn channel(k: &[u8; KEY_LEN], send: Direction, receive: Direction) -> (Sealer, Opener) {
    (
        Sealer {
            key: aead_key(k),
            dir: send,
            seq: 0,
        },
        Opener {
            key: aead_key(k),
            dir: receive,
            next: 0,
        },
    )
}

/// Reads the peer's proof of the transfer key and checks it against `want`.
async fn proven<R: AsyncRead + Unpin>(r: &mut R, want: &[u8; KEY_LEN]) -> Result<(), WireError> {
    let mut proof = [0u8; KEY_LEN];
    r.read_exact(&mut proof).await?;
    aws_lc_rs::constant_time::verify_slices_are_equal(&proof, want).map_err(|_| WireError::Key)
}

/// What a connection's key and both proofs are salted with: both hellos.
fn salt(client: &[u8; HELLO_LEN], gateway: &[u8; HELLO_LEN]) -> Vec<u8> {
    [&client[..], &gateway[..]].concat()
}

/// The client's side of the handshake: returns its sealer (to the gateway) and opener,
/// once the gateway has shown that it holds `key` ([`WireError::Key`] if not).
pub async fn handshake_client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &RelayKey,
    hello_c: ClientHello,
) -> Result<(Sealer, Opener), WireError> {
    let mut rand = [0u8; 16];
    random(&mut rand);
    let mine = hello(
        b'C',
        compression_code(hello_c.compression),
        hello_c.session,
        &rand,
    );
    s.write_all(&mine).await?;
    s.flush().await?;
    let theirs = read_hello(s, b'G').await?;
    same_version(&theirs)?;
    let salt = salt(&mine, &theirs);
    // This side proves first: the gateway answers with its own proof only to a client
    // that holds the key (see `handshake_gateway`).
    s.write_all(&key.client_proof(&salt)).await?;
    s.flush().await?;
    proven(s, &key.gateway_proof(&salt)).await?;
    let k = key.connection_key(&salt);
    Ok(channel(&k, Direction::ToGateway, Direction::ToClient))
}

/// The gateway's side: returns the client's hello, the sealer (to the client) and opener.
/// Both ends prove that they hold `key`, the client first: a peer that only connects
/// learns nothing that would let it test guesses of the key offline. A client with another
/// key gets [`REFUSED_PROOF`] instead of this gateway's proof, so that both ends can say
/// which key is wrong ([`WireError::Key`]).
pub async fn handshake_gateway<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &RelayKey,
) -> Result<(ClientHello, Sealer, Opener), WireError> {
    let theirs = read_hello(s, b'C').await?;
    let mut rand = [0u8; 16];
    random(&mut rand);
    let mine = hello(b'G', (0, 0), 0, &rand);
    let salt = salt(&theirs, &mine);
    s.write_all(&mine).await?;
    s.flush().await?;
    // Refused only after answering: a client of another version reads this gateway's
    // version and says which versions differ, rather than that the connection closed.
    same_version(&theirs)?;
    let client_proven = proven(s, &key.client_proof(&salt)).await;
    let proof = match client_proven {
        Ok(()) => key.gateway_proof(&salt),
        Err(_) => REFUSED_PROOF,
    };
    s.write_all(&proof).await?;
    s.flush().await?;
    client_proven?;
    let k = key.connection_key(&salt);
    let client = ClientHello {
        session: u64::from_be_bytes(theirs[8..16].try_into().unwrap()),
        compression: compression_from(theirs[6], theirs[7]),
    };
    let (sealer, opener) = channel(&k, Direction::ToClient, Direction::ToGateway);
    Ok((client, sealer, opener))
}

/// What a gateway sends in place of its proof to a client that proved another key: no
/// proof of any key (HKDF output is never all zeros in practice), so the client says
/// "another key" as the gateway does.
const REFUSED_PROOF: [u8; KEY_LEN] = [0; KEY_LEN];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use std::time::Duration;

    async fn pair(key_c: &RelayKey, key_g: &RelayKey) -> ((Sealer, Opener), (Sealer, Opener)) {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = ClientHello {
            session: 7,
            compression: Compression::Zstd(1),
        };
        let (c, g) = tokio::join!(
            handshake_client(&mut a, key_c, hello),
            handshake_gateway(&mut b, key_g)
        );
        let (h, gs, go) = g.unwrap();
        assert_eq!(h.session, 7);
        (c.unwrap(), (gs, go))
    }

    /// A peer of another version is refused at the handshake, and both ends say which
    /// versions differ: the gateway answers its hello before refusing, so the client does not
    /// only see the connection close.
    #[tokio::test]
    async fn another_version_is_named_at_both_ends() {
        let k = RelayKey::generate();
        let mut other = hello(b'C', (0, 0), 1, &[0; 16]);
        other[4] = VERSION + 1;
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&other).await.unwrap();
        let refused = handshake_gateway(&mut b, &k).await.err().unwrap();
        assert!(matches!(refused, WireError::Version(v) if v == VERSION + 1));
        let answer = read_hello(&mut a, b'G').await.unwrap();
        assert_eq!(answer[4], VERSION);

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut newer_gateway = hello(b'G', (0, 0), 0, &[0; 16]);
        newer_gateway[4] = VERSION + 1;
        b.write_all(&newer_gateway).await.unwrap();
        let hello_c = ClientHello {
            session: 1,
            compression: Compression::None,
        };
        let refused = handshake_client(&mut a, &k, hello_c).await.err().unwrap();
        assert!(matches!(refused, WireError::Version(v) if v == VERSION + 1));
    }

    /// Both ends learn at the handshake that the other holds another key, and can say so,
    /// rather than see the connection closed at the first frame, as if by the network.
    #[tokio::test]
    async fn a_gateway_with_another_key_is_named_at_the_handshake() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = ClientHello {
            session: 1,
            compression: Compression::None,
        };
        let (key_c, key_g) = (RelayKey::generate(), RelayKey::generate());
        let (c, g) = tokio::join!(
            handshake_client(&mut a, &key_c, hello),
            handshake_gateway(&mut b, &key_g)
        );
        assert!(matches!(c.err().unwrap(), WireError::Key));
        assert!(matches!(g.err().unwrap(), WireError::Key));
    }

    /// A peer that connects without the key gets the gateway's hello and, after a wrong
    /// proof, nothing derived from the key: no answer to test guesses of a weak key
    /// against offline.
    #[tokio::test]
    async fn a_peer_without_the_key_learns_nothing_of_it() {
        let key = RelayKey::generate();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let gateway = tokio::spawn(async move { handshake_gateway(&mut b, &key).await.err() });
        a.write_all(&hello(b'C', (0, 0), 1, &[7; 16]))
            .await
            .unwrap();
        let theirs = read_hello(&mut a, b'G').await.unwrap();
        // Nothing more comes before this side proves something.
        let mut more = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(200), a.read(&mut more)).await;
        assert!(waited.is_err(), "the gateway sent more than its hello");
        a.write_all(&[1; KEY_LEN]).await.unwrap();
        let mut answer = [0u8; KEY_LEN];
        a.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, REFUSED_PROOF);
        assert!(matches!(gateway.await.unwrap(), Some(WireError::Key)));
        assert_eq!(theirs[4], VERSION);
    }

    /// A gateway of the release before, which sent its proof with its hello rather than
    /// after the client's, and a client of this release understand each other: each side
    /// only waits for what the other sends.
    #[tokio::test]
    async fn a_gateway_that_proves_first_is_still_understood() {
        let key = RelayKey::generate();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello_c = ClientHello {
            session: 3,
            compression: Compression::None,
        };
        let older_gateway = async {
            let theirs = read_hello(&mut b, b'C').await.unwrap();
            let mine = hello(b'G', (0, 0), 0, &[9; 16]);
            let salt = salt(&theirs, &mine);
            b.write_all(&mine).await.unwrap();
            b.write_all(&key.gateway_proof(&salt)).await.unwrap();
            proven(&mut b, &key.client_proof(&salt)).await
        };
        let (client, gateway) =
            tokio::join!(handshake_client(&mut a, &key, hello_c), older_gateway);
        assert!(
            client.is_ok() && gateway.is_ok(),
            "{:?} {:?}",
            client.err(),
            gateway.err()
        );
    }

    fn frame(i: u64) -> Plain {
        let text = format!("chunk {i} ").repeat(100);
        Plain::new(
            Kind::RequestData,
            7,
            1,
            i * 1000,
            10_000,
            text.as_bytes(),
            Compression::Zstd(1),
        )
    }

    async fn open(bytes: &[u8], o: &mut Opener) -> Result<(Header, Vec<u8>, usize), WireError> {
        let mut r = bytes;
        read_frame(&mut r, o).await
    }

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let k = RelayKey::generate();
        let ((mut cs, _), (_, mut go)) = pair(&k, &k).await;
        for i in 0..3 {
            let sealed = cs.seal(frame(i));
            let (h, plain, n) = open(&sealed, &mut go).await.unwrap();
            assert_eq!((h.seq, h.offset, n), (i, i * 1000, sealed.len()));
            assert_eq!(plain, format!("chunk {i} ").repeat(100).into_bytes());
            assert!(h.flags & codec::FLAG_ZSTD != 0);
        }
    }

    #[tokio::test]
    async fn flipped_bytes_anywhere_are_rejected() {
        let k = RelayKey::generate();
        let ((mut cs, _), _) = pair(&k, &k).await;
        let sealed = cs.seal(frame(0));
        for i in 0..sealed.len() {
            let ((_, _), (_, mut go)) = pair(&k, &k).await;
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(
                open(&bad, &mut go).await.is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[tokio::test]
    async fn a_chunk_that_decodes_wrongly_fails_its_crc() {
        let k = RelayKey::generate();
        let ((mut cs, _), (_, mut go)) = pair(&k, &k).await;
        // Sealed correctly, but the plaintext is not what the CRC was taken of (as when
        // compression or decompression goes wrong between the two ends).
        let mut f = frame(0);
        f.header.plain_crc ^= 1;
        assert!(matches!(
            open(&cs.seal(f), &mut go).await,
            Err(WireError::Checksum {
                stream: 1,
                offset: 0
            })
        ));
    }

    #[tokio::test]
    async fn replayed_reordered_and_foreign_frames_are_rejected() {
        let k = RelayKey::generate();
        let ((mut cs, _), (_, mut go)) = pair(&k, &k).await;
        let f0 = cs.seal(frame(0));
        let f1 = cs.seal(frame(1));
        // Out of order.
        assert!(matches!(
            open(&f1, &mut go).await,
            Err(WireError::Auth { seq: 1 })
        ));
        open(&f0, &mut go).await.unwrap();
        // Replayed.
        assert!(matches!(
            open(&f0, &mut go).await,
            Err(WireError::Auth { .. })
        ));
        open(&f1, &mut go).await.unwrap();
        // The same bytes on another connection (other randoms, so another key).
        let ((_, _), (_, mut go2)) = pair(&k, &k).await;
        assert!(open(&f0, &mut go2).await.is_err());
        // Sealed under another transfer key (which the handshake now refuses first).
        let ((_, _), (_, mut go3)) = pair(&k, &k).await;
        let other = RelayKey::generate().connection_key(b"salt");
        let (mut foreign, _) = channel(&other, Direction::ToGateway, Direction::ToClient);
        assert!(matches!(
            open(&foreign.seal(frame(0)), &mut go3).await,
            Err(WireError::Auth { .. })
        ));
    }
}
