//! The facilities byte stream as the relay and the app read it: length-
//! prefixed `Frame`s, and inside them the Noise handshakes and sealed
//! messages, opened with fixed keys. A forged frame fails to authenticate;
//! it must never panic or allocate out of proportion.
#![no_main]

use furnace_api::fac::v1::{frame::Body, Kind};
use furnace_api::facilities::frame::{self, FrameError};
use furnace_api::facilities::keys::public_of;
use furnace_api::facilities::seal::{AppHandshake, BackendHandshake, Channel};
use furnace_api::facilities::PrivateKey;
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

const FRAME_LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let app_key = PrivateKey([7; 32]);
    let backend_key = PrivateKey([9; 32]);
    let Ok((app, _)) = AppHandshake::start(&app_key, &public_of(&backend_key)) else {
        return;
    };
    // The backend's end of the session the last good Hello opened, which
    // is deterministic in the input, unlike the app's ephemeral key.
    let mut upstream: Option<Channel> = None;
    let mut stream = Cursor::new(data);
    for _ in 0..64 {
        match frame::read(&mut stream, FRAME_LIMIT) {
            Ok(Some(body)) => open(&body, &app, &mut upstream, &backend_key),
            Ok(None) => break,
            Err(FrameError::Undecodable(_) | FrameError::Empty) => continue,
            Err(_) => break,
        }
    }
});

fn open(body: &Body, app: &AppHandshake, upstream: &mut Option<Channel>, backend_key: &PrivateKey) {
    match body {
        Body::Hello(hello) => {
            if let Ok((handshake, channel)) =
                BackendHandshake::read_hello(backend_key, &hello.noise)
            {
                let _ = handshake.welcome(backend_key);
                *upstream = Some(channel);
            }
        }
        Body::Welcome(welcome) => {
            let _ = app.finish(&welcome.noise);
        }
        Body::Sealed(sealed) => {
            if let (Ok(kind), Some(channel)) = (Kind::try_from(sealed.kind), upstream.as_ref()) {
                let _ = channel.open(sealed.seq, kind, sealed.request_id, &sealed.ciphertext);
            }
        }
        _ => {}
    }
}
