//! What the processor takes from a line's samples topic. Anything can be published there, so
//! each message is judged before it costs memory: its size, then the number of samples it
//! carries (counted on the wire, without decoding), then the batch itself. A message that
//! breaks a limit or does not decode is refused whole; a batch with a few bad samples loses
//! those samples only. The verdict is pure; the forwarder acknowledges what is refused (holding
//! it would stop the line) and copies it to the dead-letter topic.

use fieldline_core::{SampleBatch, names::name_problem};
use fieldline_proto::v1;
use prost::Message;

/// How much one message may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_samples: usize,
}

/// Why a message was refused whole.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{bytes} bytes is more than the {max} a batch may have")]
    TooLarge { bytes: usize, max: usize },
    #[error("{samples} samples is more than the {max} a batch may have")]
    TooManySamples { samples: usize, max: usize },
    #[error("not a SampleBatch: {0}")]
    Malformed(&'static str),
    #[error("not a SampleBatch: {0}")]
    Undecodable(#[source] prost::DecodeError),
    #[error("the batch's {what} name {problem}")]
    InvalidBatch { what: &'static str, problem: String },
}

impl Refusal {
    /// The label of the refusal in metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too_large",
            Refusal::TooManySamples { .. } => "too_many_samples",
            Refusal::Malformed(_) | Refusal::Undecodable(_) => "undecodable",
            Refusal::InvalidBatch { .. } => "invalid_batch",
        }
    }
}

/// A batch taken in: the wire form (forwarded to storage) and the checked one (for the
/// engine), both without the samples that were dropped.
#[derive(Debug)]
pub struct Accepted {
    pub wire: v1::SampleBatch,
    pub checked: SampleBatch,
    /// Each dropped sample's tag and why it was dropped.
    pub dropped: Vec<(String, String)>,
}

/// Judges one message from a samples topic.
pub fn accept(payload: &[u8], limits: Limits) -> Result<Accepted, Refusal> {
    if payload.len() > limits.max_bytes {
        return Err(Refusal::TooLarge {
            bytes: payload.len(),
            max: limits.max_bytes,
        });
    }
    let samples = count_samples(payload)?;
    if samples > limits.max_samples {
        return Err(Refusal::TooManySamples {
            samples,
            max: limits.max_samples,
        });
    }
    let mut wire = v1::SampleBatch::decode(payload).map_err(Refusal::Undecodable)?;
    for (what, name) in [("line", &wire.line), ("device", &wire.device)] {
        if let Some(problem) = name_problem(name) {
            return Err(Refusal::InvalidBatch {
                what,
                problem: problem.to_string(),
            });
        }
    }
    let mut dropped = Vec::new();
    let mut checked_samples = Vec::with_capacity(wire.samples.len());
    wire.samples.retain(|s| {
        let verdict = match name_problem(&s.tag) {
            Some(problem) => Err(format!("tag name {problem}")),
            None => fieldline_core::Sample::try_from(s.clone()).map_err(|e| e.to_string()),
        };
        match verdict {
            Ok(sample) => {
                checked_samples.push(sample);
                true
            }
            Err(reason) => {
                dropped.push((s.tag.clone(), reason));
                false
            }
        }
    });
    let checked = SampleBatch {
        line: wire.line.clone(),
        device: wire.device.clone(),
        adapter_id: wire.adapter_id.clone(),
        sequence: wire.sequence,
        samples: checked_samples,
    };
    Ok(Accepted {
        wire,
        checked,
        dropped,
    })
}

/// The field number of `SampleBatch.samples`.
const SAMPLES_FIELD: u64 = 5;

/// Counts the samples of an encoded `SampleBatch` by walking its top-level fields, without
/// decoding (or allocating for) any of them.
fn count_samples(mut bytes: &[u8]) -> Result<usize, Refusal> {
    let mut samples = 0;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut bytes)?;
                0
            }
            1 => 8,
            2 => {
                if key >> 3 == SAMPLES_FIELD {
                    samples += 1;
                }
                usize::try_from(varint(&mut bytes)?)
                    .map_err(|_| Refusal::Malformed("a length beyond the address space"))?
            }
            5 => 4,
            _ => return Err(Refusal::Malformed("an unknown wire type")),
        };
        if skip > bytes.len() {
            return Err(Refusal::Malformed("a field runs past the end"));
        }
        bytes = &bytes[skip..];
    }
    Ok(samples)
}

fn varint(bytes: &mut &[u8]) -> Result<u64, Refusal> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or(Refusal::Malformed("a number cut short"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Refusal::Malformed("a number longer than ten bytes"))
}

/// Most of a refused payload a dead letter carries.
pub const DEAD_LETTER_PAYLOAD: usize = 64 << 10;

/// The dead letter of a refused message (or of the samples dropped from one).
pub fn dead_letter(
    topic: &str,
    kind: &str,
    reason: String,
    payload: &[u8],
    received_ns: i64,
) -> v1::DeadLetter {
    let kept = payload.len().min(DEAD_LETTER_PAYLOAD);
    v1::DeadLetter {
        topic: topic.to_string(),
        kind: kind.to_string(),
        reason,
        payload_bytes: payload.len() as u64,
        payload: payload[..kept].to_vec(),
        truncated: kept < payload.len(),
        received_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_samples: 1000,
    };

    fn sample(tag: &str) -> v1::Sample {
        fieldline_proto::v1::Sample::from(fieldline_core::Sample::good(
            tag,
            fieldline_core::Value::F64(1.5),
            1,
        ))
    }

    fn batch(samples: Vec<v1::Sample>) -> v1::SampleBatch {
        v1::SampleBatch {
            line: "l".into(),
            device: "d".into(),
            adapter_id: "a".into(),
            sequence: 7,
            samples,
            previous_sequence: 0,
        }
    }

    #[test]
    fn samples_are_counted_on_the_wire_as_prost_decodes_them() {
        let b = batch((0..50).map(|i| sample(&format!("t{i}"))).collect());
        assert_eq!(count_samples(&b.encode_to_vec()).unwrap(), 50);
        assert_eq!(count_samples(&[]).unwrap(), 0);
    }

    #[test]
    fn a_million_empty_samples_are_refused_before_decoding() {
        // Two bytes a sample: field 5, length 0.
        let payload: Vec<u8> = std::iter::repeat_n([0x2a, 0x00], 1_000_000)
            .flatten()
            .collect();
        let refusal = accept(
            &payload,
            Limits {
                max_bytes: 4 << 20,
                max_samples: 100_000,
            },
        )
        .unwrap_err();
        assert_eq!(refusal.kind(), "too_many_samples", "{refusal}");
    }

    #[test]
    fn limits_and_junk_are_refused_with_their_kind() {
        let big = vec![0u8; (1 << 20) + 1];
        assert_eq!(accept(&big, LIMITS).unwrap_err().kind(), "too_large");
        assert_eq!(
            accept(&[0xff; 40], LIMITS).unwrap_err().kind(),
            "undecodable"
        );
        assert_eq!(
            accept(&[0x2a, 0x05, 1], LIMITS).unwrap_err().kind(),
            "undecodable"
        );
        let mut bad_line = batch(vec![sample("t")]);
        bad_line.line = "Bad Line".into();
        assert_eq!(
            accept(&bad_line.encode_to_vec(), LIMITS)
                .unwrap_err()
                .kind(),
            "invalid_batch"
        );
    }

    #[test]
    fn a_bad_sample_costs_that_sample_not_the_batch() {
        let mut no_quality = sample("ok2");
        no_quality.quality = None;
        let b = batch(vec![
            sample("ok"),
            sample("Not A Tag"),
            no_quality,
            sample("ok3"),
        ]);
        let accepted = accept(&b.encode_to_vec(), LIMITS).unwrap();
        let kept: Vec<&str> = accepted
            .wire
            .samples
            .iter()
            .map(|s| s.tag.as_str())
            .collect();
        assert_eq!(kept, ["ok", "ok3"]);
        assert_eq!(accepted.checked.samples.len(), 2);
        let dropped: Vec<&str> = accepted.dropped.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(dropped, ["Not A Tag", "ok2"]);
        assert_eq!(accepted.checked.sequence, 7);
    }

    #[test]
    fn dead_letters_keep_at_most_64_kib_of_the_payload() {
        let letter = dead_letter("t", "too_large", "r".into(), &vec![7u8; 100_000], 5);
        assert_eq!(
            (letter.payload.len(), letter.payload_bytes, letter.truncated),
            (DEAD_LETTER_PAYLOAD, 100_000, true)
        );
        let small = dead_letter("t", "undecodable", "r".into(), b"junk", 5);
        assert_eq!(
            (small.payload.as_slice(), small.truncated),
            (&b"junk"[..], false)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_get_a_verdict_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = accept(&bytes, LIMITS);
        }
    }
}
