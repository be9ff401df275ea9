//! The decoder target.

use crate::testing::seal;
use crate::wire::decode;

/// `decode` never panics on any input, and whatever it accepts re-encodes to an equal message.
pub fn decode_target(data: &[u8]) {
    for bytes in [data.to_vec(), seal(data)] {
        if let Ok(m) = decode(&bytes) {
            assert_eq!(m.validate(), Ok(()), "decode returned an invalid message");
            let again = m.encode();
            assert_eq!(
                decode(&again),
                Ok(m),
                "re-encoded message does not round-trip"
            );
        }
    }
}
