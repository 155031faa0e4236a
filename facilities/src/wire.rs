//! Facilities frames over tokio streams (the framing is
//! `furnace_api::facilities::frame`).

use furnace_api::fac::v1::frame::Body;
use furnace_api::facilities::frame::{self, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub async fn write(writer: &mut (impl AsyncWrite + Unpin), body: Body) -> std::io::Result<()> {
    writer.write_all(&frame::encode(body)).await
}

/// One frame, `None` at a clean end of stream. After an I/O error the
/// stream is out of step and must be dropped; after `TooLarge` (its payload
/// skipped), `Undecodable` or `Empty` the next frame can be read.
pub async fn read(
    reader: &mut (impl AsyncRead + Unpin),
    limit: usize,
) -> Result<Option<Body>, FrameError> {
    let mut header = [0u8; 4];
    match reader.read(&mut header[..1]).await? {
        0 => return Ok(None),
        _ => reader.read_exact(&mut header[1..]).await?,
    };
    let len = match frame::check_len(header, limit) {
        Ok(len) => len,
        Err(e) => {
            // Skipped unread, so the stream stays in step and nothing
            // oversized is held in memory.
            let skip = u64::from(u32::from_be_bytes(header));
            tokio::io::copy(&mut (&mut *reader).take(skip), &mut tokio::io::sink()).await?;
            return Err(e);
        }
    };
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    frame::decode(payload).map(Some)
}

/// Whether reading can go on after this error.
pub fn recoverable(e: &FrameError) -> bool {
    matches!(
        e,
        FrameError::Undecodable(_) | FrameError::Empty | FrameError::TooLarge { .. }
    )
}

/// Reads frames into a channel until the stream ends or falls out of step,
/// so a `select!` can wait on frames without losing a half-read one.
pub fn spawn_reader(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
    limit: usize,
) -> mpsc::Receiver<Result<Body, FrameError>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match read(&mut reader, limit).await {
                Ok(Some(body)) => {
                    if tx.send(Ok(body)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let go_on = recoverable(&e);
                    if tx.send(Err(e)).await.is_err() || !go_on {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Writes frames from a channel until it closes or a write fails, so that a
/// session hands a frame over and goes on (it answers the app's next
/// message while this one is still on its way to the peer). A failed write
/// ends the task; the peer's reader sees the broken stream.
pub fn spawn_writer(
    mut writer: impl AsyncWrite + Unpin + Send + 'static,
) -> mpsc::UnboundedSender<Body> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(body) = rx.recv().await {
            if let Err(e) = write(&mut writer, body).await {
                tracing::warn!("writing a frame: {e}");
                return;
            }
        }
    });
    tx
}
