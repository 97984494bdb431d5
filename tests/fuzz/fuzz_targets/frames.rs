//! Any frame payload, in either encoding, as a request and as a response: decoding ends in a
//! message or a typed error, never a panic, an abort or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mythos_protocol::codec::decode_payload;
use mythos_protocol::{Encoding, Request, Response};

fuzz_target!(|data: &[u8]| {
    for enc in [Encoding::Bincode, Encoding::Json] {
        let _ = decode_payload::<Request>(enc, data);
        let _ = decode_payload::<Response>(enc, data);
    }
});
