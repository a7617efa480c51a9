//! An MQTT payload → wire `SampleBatch` → core `SampleBatch`, as the processor (and the
//! storage service's gRPC intake) handle every message they receive.
//!
//! Any bytes must give a batch or an error, never a panic; a batch that is accepted must
//! survive the trip back to bytes unchanged.

#![no_main]

use fieldline_core::SampleBatch;
use fieldline_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = v1::SampleBatch::decode(data) else {
        return;
    };
    let Ok(batch) = SampleBatch::try_from(wire) else {
        return;
    };
    let bytes = v1::SampleBatch::from(batch.clone()).encode_to_vec();
    let wire = v1::SampleBatch::decode(bytes.as_slice()).expect("our own encoding decodes");
    let again = SampleBatch::try_from(wire).expect("an accepted batch is accepted again");
    assert_eq!(again, batch);
});
