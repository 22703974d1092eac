//! Feed arbitrary bytes to the frame decoder as every message type.
//!
//! Properties checked on every input:
//! - decoding never panics (libFuzzer reports any panic or abort as a crash);
//! - frames are decoded back to back from the input, each consuming at least one byte, and a
//!   `NeedMore` count is at least 1;
//! - every successfully decoded message re-encodes into a frame no longer than the one it came
//!   from (postcard accepts over-long varints, so the canonical form may be shorter), and that
//!   frame decodes to the same message;
//! - the control messages decoded from one input, fed in order to a `PolicyAssembler` (as the
//!   connector does), never panic it, and a policy it completes re-splits into messages that
//!   reassemble to the same policy.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

use underpass_proto::{
    decode, encode, ControlMessage, Decoded, Message, OriginPolicy, PolicyAssembler,
    StreamHeader, StreamReply,
};

fuzz_target!(|data: &[u8]| {
    let control = decode_all::<ControlMessage>(data);
    decode_all::<StreamHeader>(data);
    decode_all::<StreamReply>(data);
    assemble(control);
});

/// Decode frames of `M` from `data` one after another until an error or the end of the input.
fn decode_all<M: Message + PartialEq + Debug>(mut data: &[u8]) -> Vec<M> {
    let mut decoded = Vec::new();
    loop {
        match decode::<M>(data) {
            Ok(Decoded::Message { message, consumed }) => {
                assert!(consumed > 0 && consumed <= data.len());
                check_round_trip(&message, consumed);
                decoded.push(message);
                data = &data[consumed..];
            }
            Ok(Decoded::NeedMore(n)) => {
                assert!(n >= 1);
                return decoded;
            }
            Err(_) => return decoded,
        }
    }
}

/// Feed policy messages to an assembler as the connector does; a completed policy must split
/// and reassemble to itself.
fn assemble(messages: Vec<ControlMessage>) {
    let mut assembler = PolicyAssembler::new();
    for message in messages {
        let result = match message {
            ControlMessage::ServicePolicy(head) => assembler.policy(head),
            ControlMessage::ServicePolicyCa(chunk) => assembler.chunk(chunk),
            _ => continue,
        };
        match result {
            Ok(Some(policy)) => check_policy(&policy),
            Ok(None) => {}
            // An out-of-order message ends the connection; start over as a new one would.
            Err(_) => assembler = PolicyAssembler::new(),
        }
    }
}

fn check_policy(policy: &OriginPolicy) {
    let messages = policy.to_messages().expect("an assembled policy is within the limits");
    let mut again = PolicyAssembler::new();
    let mut done = None;
    for message in messages {
        done = match message {
            ControlMessage::ServicePolicy(head) => again.policy(head),
            ControlMessage::ServicePolicyCa(chunk) => again.chunk(chunk),
            other => panic!("to_messages produced {other:?}"),
        }
        .expect("a split policy reassembles");
    }
    assert_eq!(done.as_ref(), Some(policy));
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
