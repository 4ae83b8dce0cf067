//! Length-prefixed frames over a libp2p stream: a 4-byte little-endian length, then one value
//! in the rbee codec. Every read states its own cap and refuses a longer frame before
//! allocating.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::NetError;

pub async fn write_frame<S, T>(stream: &mut S, value: &T) -> Result<(), NetError>
where
    S: AsyncWrite + Unpin,
    T: Serialize + ?Sized,
{
    let bytes = rbee_proto::codec::encode(value).map_err(|e| NetError::Protocol(e.to_string()))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| NetError::Protocol("frame too large".into()))?;
    stream.write_all(&len.to_le_bytes()).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the peer closed the stream cleanly before a new frame.
pub async fn read_frame<S, T>(stream: &mut S, max: usize) -> Result<Option<T>, NetError>
where
    S: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = stream.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(NetError::Protocol(
                    "stream ended inside a frame header".into(),
                ))
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(NetError::Protocol(format!(
            "peer sent a frame of {len} bytes; the limit here is {max}"
        )));
    }
    // Grown as bytes arrive, not allocated at the declared length: a peer that announces
    // the cap and sends four bytes holds four bytes of ours, not the cap.
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    AsyncReadExt::take(&mut *stream, len as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() != len {
        return Err(NetError::Protocol(format!(
            "stream ended inside a frame ({} of {len} bytes)",
            buf.len()
        )));
    }
    rbee_proto::codec::decode(&buf)
        .map(Some)
        .map_err(|e| NetError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frames_round_trip_and_caps_hold() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &("hello".to_string(), 7u32))
            .await
            .unwrap();
        write_frame(&mut buf, &"x".repeat(100)).await.unwrap();
        let mut r = Cursor::new(buf.clone());
        let a: Option<(String, u32)> = read_frame(&mut r, 1024).await.unwrap();
        assert_eq!(a, Some(("hello".into(), 7)));
        let b: Option<String> = read_frame(&mut r, 1024).await.unwrap();
        assert_eq!(b.unwrap().len(), 100);
        let end: Option<String> = read_frame(&mut r, 1024).await.unwrap();
        assert_eq!(end, None);

        // Over the cap: refused before reading the body.
        let mut r = Cursor::new(buf.clone());
        let _: Option<(String, u32)> = read_frame(&mut r, 1024).await.unwrap();
        let err = read_frame::<_, String>(&mut r, 50).await.unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");

        // A huge declared length is refused without allocating it.
        let mut r = Cursor::new(u32::MAX.to_le_bytes().to_vec());
        assert!(read_frame::<_, String>(&mut r, 1 << 20).await.is_err());

        // Truncated header and truncated body are errors, not hangs or panics.
        let mut r = Cursor::new(vec![5u8, 0]);
        assert!(read_frame::<_, String>(&mut r, 1024).await.is_err());
        let mut r = Cursor::new(vec![5u8, 0, 0, 0, 1]);
        assert!(read_frame::<_, String>(&mut r, 1024).await.is_err());
        // Garbage body: a decode error.
        let mut r = Cursor::new(vec![2u8, 0, 0, 0, 0xff, 0xff]);
        assert!(read_frame::<_, String>(&mut r, 1024).await.is_err());
    }
}
