//! Content by hash: announcing the hashes a peer shares to its tracker, and asking the
//! tracker who shares a hash.
