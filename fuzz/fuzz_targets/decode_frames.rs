//! Feed arbitrary bytes to the frame decoder as every message type.
//!
//! Properties checked on every input:
//! - decoding never panics (libFuzzer reports any panic or abort as a crash);
//! - frames are decoded back to back from the input, each consuming at least one byte, and a
//!   `NeedMore` count is at least 1;
//! - every successfully decoded message re-encodes into a frame no longer than the one it came
//!   from (postcard accepts over-long varints, so the canonical form may be shorter), and that
//!   frame decodes to the same message.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

use underpass_proto::{
    decode, encode, ControlMessage, Decoded, Message, StreamHeader, StreamReply,
};

fuzz_target!(|data: &[u8]| {
    decode_all::<ControlMessage>(data);
    decode_all::<StreamHeader>(data);
    decode_all::<StreamReply>(data);
});

/// Decode frames of `M` from `data` one after another until an error or the end of the input.
fn decode_all<M: Message + PartialEq + Debug>(mut data: &[u8]) {
    loop {
        match decode::<M>(data) {
            Ok(Decoded::Message { message, consumed }) => {
                assert!(consumed > 0 && consumed <= data.len());
                check_round_trip(&message, consumed);
                data = &data[consumed..];
            }
            Ok(Decoded::NeedMore(n)) => {
                assert!(n >= 1);
                return;
            }
            Err(_) => return,
        }
    }
}

fn check_round_trip<M: Message + PartialEq + Debug>(message: &M, consumed: usize) {
    let mut frame = BytesMut::new();
    encode(message, &mut frame).expect("a decoded message re-encodes within the size limit");
    assert!(
        frame.len() <= consumed,
        "canonical frame longer than its source"
    );
    match decode::<M>(&frame) {
        Ok(Decoded::Message {
            message: again,
            consumed: used,
        }) => {
            assert_eq!(&again, message);
            assert_eq!(used, frame.len());
        }
        other => panic!("re-encoded {message:?} decoded as {other:?}"),
    }
}
