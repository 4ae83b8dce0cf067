//! The pool key's layer of every connection: libp2p's private-network protocol ("pnet"),
//! byte for byte as `libp2p::pnet` speaks it, with a faster cipher.
//!
//! The protocol: each side sends a random 24-byte nonce, then everything it writes is XORed
//! with the XSalsa20 keystream of (pool key, its own nonce); it reads with the keystream of
//! (pool key, the other side's nonce). A node without the key reads noise and the noise
//! handshake that follows fails, so it can never complete a connection.
//!
//! Why not `libp2p::pnet` itself: its cipher (the `salsa20` crate) computes one 64-byte block
//! at a time in scalar code, about 0.4 GB/s here, and every byte of a model pull passes it
//! twice (once per side). It was the largest single cost of a pull. Here 16 blocks are
//! computed side by side as 16-lane vectors (plain Rust that the compiler turns into SIMD),
//! several times faster. The tests check the keystream against the `salsa20` crate and a
//! connection against `libp2p::pnet`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const NONCE_SIZE: usize = 24;
/// Blocks computed at once: 16 lanes of `u32` are two AVX2 registers per state word.
const LANES: usize = 16;
const BLOCK: usize = 64;
const BATCH: usize = LANES * BLOCK;
/// The most plaintext taken per write (noise frames are at most 64 KiB).
const WRITE_CAP: usize = 64 << 10;

/// "expand 32-byte k"
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

fn le_words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    })
}

type Lanes = [u32; LANES];

#[inline(always)]
fn quarter(s: &mut [Lanes; 16], a: usize, b: usize, c: usize, d: usize) {
    // b ^= (a + d) <<< 7; c ^= (b + a) <<< 9; d ^= (c + b) <<< 13; a ^= (d + c) <<< 18,
    // each on all lanes.
    for (x, y, z, r) in [(a, d, b, 7), (b, a, c, 9), (c, b, d, 13), (d, c, a, 18)] {
        let sum: Lanes = std::array::from_fn(|l| s[x][l].wrapping_add(s[y][l]));
        for (t, v) in s[z].iter_mut().zip(sum) {
            *t ^= v.rotate_left(r);
        }
    }
}

/// The Salsa20/20 double rounds, on 16 independent states at once.
#[inline(always)]
fn rounds(s: &mut [Lanes; 16]) {
    for _ in 0..10 {
        quarter(s, 0, 4, 8, 12);
        quarter(s, 5, 9, 13, 1);
        quarter(s, 10, 14, 2, 6);
        quarter(s, 15, 3, 7, 11);
        quarter(s, 0, 1, 2, 3);
        quarter(s, 5, 6, 7, 4);
        quarter(s, 10, 11, 8, 9);
        quarter(s, 15, 12, 13, 14);
    }
}

/// The input words of a Salsa20 state: constants, key, and the 16 bytes in the middle
/// (nonce and counter for Salsa20, the nonce's first half for HSalsa20).
fn state(key: &[u32; 8], middle: &[u32; 4]) -> [u32; 16] {
    [
        SIGMA[0], key[0], key[1], key[2], key[3], SIGMA[1], middle[0], middle[1], middle[2],
        middle[3], SIGMA[2], key[4], key[5], key[6], key[7], SIGMA[3],
    ]
}

/// XSalsa20 (Salsa20/20 with a 192-bit nonce): HSalsa20 derives a subkey from the key and
/// the nonce's first 16 bytes; Salsa20 runs with that subkey and the last 8.
#[derive(Debug)]
pub struct XSalsa20 {
    input: [u32; 16],
    /// The next block counter not yet in `keystream`.
    counter: u64,
    keystream: [u8; BATCH],
    /// How much of `keystream` is used up.
    used: usize,
}

impl XSalsa20 {
    pub fn new(key: &[u8; 32], nonce: &[u8; NONCE_SIZE]) -> XSalsa20 {
        let key: [u32; 8] = le_words(key);
        let mut h: [Lanes; 16] = state(&key, &le_words(&nonce[..16])).map(|w| [w; LANES]);
        rounds(&mut h);
        let sub = [
            h[0][0], h[5][0], h[10][0], h[15][0], h[6][0], h[7][0], h[8][0], h[9][0],
        ];
        let n: [u32; 2] = le_words(&nonce[16..]);
        XSalsa20 {
            input: state(&sub, &[n[0], n[1], 0, 0]),
            counter: 0,
            keystream: [0; BATCH],
            used: BATCH,
        }
    }

    /// The next `LANES` keystream blocks.
    fn refill(&mut self) {
        let mut init: [Lanes; 16] = self.input.map(|w| [w; LANES]);
        let block = |l: usize| self.counter.wrapping_add(l as u64);
        init[8] = std::array::from_fn(|l| block(l) as u32);
        init[9] = std::array::from_fn(|l| (block(l) >> 32) as u32);
        let mut s = init;
        rounds(&mut s);
        for (l, out) in self.keystream.chunks_exact_mut(BLOCK).enumerate() {
            for (w, word) in out.chunks_exact_mut(4).enumerate() {
                word.copy_from_slice(&s[w][l].wrapping_add(init[w][l]).to_le_bytes());
            }
        }
        self.counter = self.counter.wrapping_add(LANES as u64);
        self.used = 0;
    }

    /// XORs the keystream into `data` (encrypts or decrypts).
    pub fn apply(&mut self, mut data: &mut [u8]) {
        while !data.is_empty() {
            if self.used == BATCH {
                self.refill();
            }
            let n = data.len().min(BATCH - self.used);
            let (now, rest) = data.split_at_mut(n);
            for (d, k) in now
                .iter_mut()
                .zip(&self.keystream[self.used..self.used + n])
            {
                *d ^= k;
            }
            self.used += n;
            data = rest;
        }
    }
}

/// Runs the pnet handshake on a fresh connection with the pool key `key`: both sides
/// exchange nonces. It succeeds whatever key the other side has; with another key both
/// sides read garbage and the next layer's handshake fails.
pub async fn handshake<S>(key: [u8; 32], mut socket: S) -> io::Result<PnetStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut local = [0u8; NONCE_SIZE];
    getrandom::fill(&mut local).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    socket.write_all(&local).await?;
    socket.flush().await?;
    let mut remote = [0u8; NONCE_SIZE];
    socket.read_exact(&mut remote).await?;
    Ok(PnetStream {
        inner: socket,
        read: XSalsa20::new(&key, &remote),
        write: XSalsa20::new(&key, &local),
        pending: Vec::with_capacity(WRITE_CAP),
        sent: 0,
    })
}

/// A connection after the pnet handshake.
#[derive(Debug)]
pub struct PnetStream<S> {
    inner: S,
    read: XSalsa20,
    write: XSalsa20,
    /// Encrypted bytes accepted from the caller but not yet taken by the socket. The
    /// keystream has moved past them, so they must go out before anything else.
    pending: Vec<u8>,
    sent: usize,
}

impl<S: AsyncWrite + Unpin> PnetStream<S> {
    /// Writes out `pending`; Ready(Ok) once it is all sent.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PnetStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read.apply(&mut buf[..n]);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PnetStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        let n = buf.len().min(WRITE_CAP);
        this.pending.extend_from_slice(&buf[..n]);
        this.write.apply(&mut this.pending);
        // The bytes are ours now (encrypted); try to send them at once, and if the socket is
        // full they go out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use libp2p::pnet::{PnetConfig, PreSharedKey};
    use salsa20::cipher::{KeyIvInit, StreamCipher};

    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    /// Two ends of a loopback TCP connection.
    async fn pipe() -> (Compat<tokio::net::TcpStream>, Compat<tokio::net::TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (a.unwrap().compat(), b.unwrap().0.compat())
    }

    fn bytes<const N: usize>(seed: u8) -> [u8; N] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
    }

    #[test]
    fn keystream_matches_the_salsa20_crate_across_uneven_pieces() {
        for seed in 0..4u8 {
            let (key, nonce) = (bytes::<32>(seed), bytes::<24>(seed.wrapping_mul(7)));
            // Long enough to cross several batches; the counter's high word is covered below.
            let mut expected = vec![0u8; 3 * BATCH + 1000];
            salsa20::XSalsa20::new(&key.into(), &nonce.into()).apply_keystream(&mut expected);
            let mut ours = vec![0u8; expected.len()];
            let mut cipher = XSalsa20::new(&key, &nonce);
            let mut at = 0;
            for piece in [1usize, 63, 64, 65, 1023, 1024, 7, 2000].iter().cycle() {
                if at == ours.len() {
                    break;
                }
                let end = (at + piece).min(ours.len());
                cipher.apply(&mut ours[at..end]);
                at = end;
            }
            assert_eq!(ours, expected, "seed {seed}");
        }
    }

    #[test]
    fn keystream_matches_past_four_billion_blocks() {
        use salsa20::cipher::StreamCipherSeek;
        let (key, nonce) = (bytes::<32>(9), bytes::<24>(5));
        let start = (u32::MAX as u64 - 3) * BLOCK as u64;
        let mut expected = vec![0u8; 8 * BLOCK];
        let mut reference = salsa20::XSalsa20::new(&key.into(), &nonce.into());
        reference.seek(start);
        reference.apply_keystream(&mut expected);
        let mut ours = XSalsa20::new(&key, &nonce);
        ours.counter = u32::MAX as u64 - 3;
        let mut got = vec![0u8; expected.len()];
        ours.apply(&mut got);
        assert_eq!(got, expected);
    }

    /// Our side on one end of a pipe, `libp2p::pnet` on the other: they must understand each
    /// other both ways, over writes of many sizes.
    #[tokio::test]
    async fn talks_to_libp2p_pnet() {
        let key = bytes::<32>(42);
        let (a, b) = pipe().await;
        let ours = tokio::spawn(async move { handshake(key, a).await.unwrap() });
        let mut theirs = PnetConfig::new(PreSharedKey::new(key))
            .handshake(b)
            .await
            .unwrap();
        let mut ours = ours.await.unwrap();
        let message: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let send = message.clone();
        let writer = tokio::spawn(async move {
            for piece in send.chunks(70_001) {
                ours.write_all(piece).await.unwrap();
            }
            ours.flush().await.unwrap();
            let mut back = vec![0u8; 1000];
            ours.read_exact(&mut back).await.unwrap();
            back
        });
        let mut got = vec![0u8; message.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message);
        theirs.write_all(&message[..1000]).await.unwrap();
        theirs.flush().await.unwrap();
        assert_eq!(writer.await.unwrap(), &message[..1000]);
    }

    #[tokio::test]
    async fn another_key_reads_garbage() {
        let (a, b) = pipe().await;
        let ours = tokio::spawn(async move { handshake(bytes::<32>(1), a).await.unwrap() });
        let mut theirs = handshake(bytes::<32>(2), b).await.unwrap();
        let mut ours = ours.await.unwrap();
        ours.write_all(b"hello, pool").await.unwrap();
        ours.flush().await.unwrap();
        let mut got = [0u8; 11];
        theirs.read_exact(&mut got).await.unwrap();
        assert_ne!(&got, b"hello, pool");
    }
}
