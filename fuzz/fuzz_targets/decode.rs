//! Fuzz target: `p2p_proto::fuzzing::decode_target` (see that function for the invariants).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| p2p_proto::fuzzing::decode_target(data));
