//! The control stream: the first stream of a connection, opened by the connector.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use underpass_proto::{ControlMessage, TunnelId, TunnelSecret, REGISTRATION_EXPORTER_LABEL};
use underpass_transport::{Connection, RecvStream, SendStream};

use crate::frame::{write_frame, FrameReader, MuxError};

/// Both halves of the control stream.
pub struct ControlChannel<S, R> {
    send: S,
    reader: FrameReader<R>,
}

impl<S: SendStream, R: RecvStream> ControlChannel<S, R> {
    /// Open the control stream (connector side).
    pub async fn open<C>(conn: &C) -> Result<Self, MuxError>
    where
        C: Connection<Send = S, Recv = R>,
    {
        let (send, recv) = conn.open_bi().await?;
        Ok(Self::from_parts(send, recv))
    }

    /// Accept the control stream (edge side).
    pub async fn accept<C>(conn: &C) -> Result<Self, MuxError>
    where
        C: Connection<Send = S, Recv = R>,
    {
        let (send, recv) = conn.accept_bi().await?;
        Ok(Self::from_parts(send, recv))
    }

    /// Wrap an already opened stream.
    pub fn from_parts(send: S, recv: R) -> Self {
        ControlChannel {
            send,
            reader: FrameReader::new(recv),
        }
    }

    /// Send one control message.
    pub async fn send(&mut self, message: &ControlMessage) -> Result<(), MuxError> {
        write_frame(&mut self.send, message).await
    }

    /// Receive the next control message; `Ok(None)` when the peer finished the stream.
    pub async fn recv(&mut self) -> Result<Option<ControlMessage>, MuxError> {
        self.reader.next().await
    }

    /// Split into sending and receiving halves, so they can live in different tasks.
    pub fn split(self) -> (S, FrameReader<R>) {
        (self.send, self.reader)
    }
}

/// Compute the registration proof for `tunnel_id` on this connection.
///
/// `HMAC-SHA256(secret, exporter(REGISTRATION_EXPORTER_LABEL, context = tunnel id, 32 bytes))`:
/// bound to this TLS session, so a captured proof is useless on any other connection. Both
/// sides compute it; the edge compares in constant time.
pub fn registration_proof<C: Connection>(
    conn: &C,
    tunnel_id: &TunnelId,
    secret: &TunnelSecret,
) -> Result<[u8; 32], MuxError> {
    let mut exported = [0u8; 32];
    conn.export_keying_material(&mut exported, REGISTRATION_EXPORTER_LABEL, &tunnel_id.0)?;
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0)
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(&exported);
    Ok(mac.finalize().into_bytes().into())
}
