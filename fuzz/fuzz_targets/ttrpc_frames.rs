//! The sidecar's frame loop over a fuzzed byte stream: ttrpc headers,
//! `ttrpc.Request` decoding, and the batch decoder behind it. Whatever comes
//! in, every frame that goes out is a `ttrpc.Response` within the frame
//! limit, at most one per request frame.
#![no_main]

use furnace_api::ttrpc::Response;
use furnace_api::v1::BatchRequest;
use furnace_api::wire::{self, MAX_PAYLOAD, TYPE_RESPONSE};
use furnace_api::{ApiError, ErrorCode};
use furnace_vmi::server::decoders::{serve_frames, validate_batch};
use furnace_vmi::server::SidecarConfig;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let limits = SidecarConfig::default();
    let mut out = Vec::new();
    let mut requests = 0usize;
    serve_frames(
        Cursor::new(data),
        &mut out,
        |_service, method, payload, reply| {
            requests += 1;
            match method {
                "Batch" => {
                    let batch = BatchRequest::decode(payload)
                        .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))?;
                    validate_batch(&batch.calls, &limits)?;
                    reply.encoded(&[]);
                    Ok(())
                }
                _ => Err(ApiError::new(ErrorCode::Unsupported, "no such method")),
            }
        },
    );
    let mut replies = Cursor::new(out);
    let mut buf = Vec::new();
    let mut responses = 0usize;
    while let Some(header) = wire::read_header(&mut replies).expect("whole frames out") {
        assert!(header.length <= MAX_PAYLOAD);
        assert_eq!(header.kind, TYPE_RESPONSE);
        let payload =
            wire::read_payload(&mut replies, header.length, &mut buf).expect("whole frames out");
        Response::decode(payload).expect("a ttrpc.Response");
        responses += 1;
    }
    // Frames that are not requests, or not decodable, are answered without
    // reaching the handler; one oversized frame is answered and ends it.
    let frames_in = count_frames(data);
    assert!(
        responses <= frames_in,
        "{responses} responses to {frames_in} frames"
    );
    assert!(requests <= responses);
});

/// Frames whose header arrived whole, as the loop reads them.
fn count_frames(mut data: &[u8]) -> usize {
    let mut frames = 0;
    while data.len() >= wire::HEADER_LEN {
        let header = wire::Header::decode(data[..wire::HEADER_LEN].try_into().expect("a header"));
        frames += 1;
        let body = header.length as usize;
        data = &data[wire::HEADER_LEN..];
        if header.length > MAX_PAYLOAD || data.len() < body {
            break;
        }
        data = &data[body..];
    }
    frames
}
