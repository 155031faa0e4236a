//! The client against a peer that misbehaves on the wire (a unit-level
//! stand-in for a broken sidecar; the real one is tested end to end).

use super::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

/// A peer that answers the first request with a header announcing more
/// than a frame may hold, then stays to see what the client does.
#[test]
fn a_framing_error_closes_the_connection_so_no_later_call_reads_stale_bytes() {
    let dir = std::env::temp_dir().join(format!("furnace-api-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("peer.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let header = wire::read_header(&mut stream).unwrap().unwrap();
        let mut request = vec![0u8; header.length as usize];
        stream.read_exact(&mut request).unwrap();
        let oversized = wire::Header {
            length: wire::MAX_PAYLOAD + 1,
            stream_id: header.stream_id,
            kind: TYPE_RESPONSE,
            flags: 0,
        };
        // One write, so the bytes are queued before the client can read
        // the header and hang up (a second write could meet EPIPE).
        let mut reply = oversized.encode().to_vec();
        reply.extend_from_slice(&[0xaa; 64]);
        stream.write_all(&reply).unwrap();
        // The client must hang up rather than send a second request.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        rest.len()
    });
    let mut connection = Connection::open(&path, Duration::from_secs(5)).unwrap();
    let first = connection.call("s", "m", Vec::new()).unwrap_err();
    assert_eq!(first.code, ErrorCode::Internal, "{first}");
    let second = connection.call("s", "m", Vec::new()).unwrap_err();
    assert_eq!(second.code, ErrorCode::Unavailable, "{second}");
    assert!(second.message.contains("closed after"), "{second}");
    assert_eq!(
        peer.join().unwrap(),
        0,
        "nothing was sent after the framing error"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
