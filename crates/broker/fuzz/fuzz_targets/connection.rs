//! Feeds arbitrary bytes, as a client would send them, to one connection's
//! protocol core: CONNECT (the input's own, or none, or a prepared one),
//! then every packet it decodes, in reads of a size the input picks, with
//! the store and the hub pretended (`rookery_broker::fuzz`). The core must
//! never panic, and all it writes must decode as the client's version.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rookery_broker::fuzz::drive_connection(data));
