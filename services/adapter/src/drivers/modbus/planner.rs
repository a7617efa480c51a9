//! The Modbus request planner: which read requests fetch a device's tags in the fewest round
//! trips. Pure: tags in, requests out.
//!
//! Tags are grouped by table, sorted by offset and merged into one request while the merged
//! span stays within the protocol limit (125 registers, 2000 bits) and the hole between two
//! tags is at most `max_gap` (reading a few unused registers is cheaper than another round
//! trip, but some devices reject reads of unmapped addresses, so the default gap is 0).

use fieldline_core::codec::Table;

/// Protocol limits of a single read, per Modbus Application Protocol v1.1b3 §6.
pub const MAX_REGISTERS: u16 = 125;
pub const MAX_BITS: u16 = 2000;

/// What the planner may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_registers: u16,
    pub max_bits: u16,
    /// Unused addresses a request may span to join two tags.
    pub max_gap: u16,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            max_registers: MAX_REGISTERS,
            max_bits: MAX_BITS,
            max_gap: 0,
        }
    }
}

/// A tag as the planner sees it: index into the device's tag list, where, and how wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagSpan {
    pub tag: usize,
    pub table: Table,
    pub offset: u16,
    /// Registers (or bits) the tag occupies, at least 1.
    pub width: u16,
}

impl TagSpan {
    fn end(&self) -> u32 {
        u32::from(self.offset) + u32::from(self.width)
    }
}

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Tags served by this request, as (tag index, position of the tag's first word or bit
    /// within the response).
    pub tags: Vec<(usize, u16)>,
}

/// Plans the reads for `spans`. Every tag appears in exactly one request, and no request
/// exceeds the limits (a single tag wider than the limit cannot be read and is left out of
/// the plan, to be reported as a configuration error by the caller; validation prevents it).
pub fn plan(spans: &[TagSpan], limits: PlanLimits) -> Vec<ReadRequest> {
    let mut sorted: Vec<TagSpan> = spans.to_vec();
    sorted.sort_by_key(|s| (s.table, s.offset, s.width));
    let mut requests: Vec<ReadRequest> = Vec::new();
    let mut current: Option<(ReadRequest, u32)> = None;
    for span in sorted {
        let limit = if span.table.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        };
        if span.width == 0 || span.width > limit {
            continue;
        }
        if let Some((req, end)) = &mut current {
            let joinable = req.table == span.table
                && u32::from(span.offset) <= *end + u32::from(limits.max_gap)
                && span.end().max(*end) - u32::from(req.start) <= u32::from(limit);
            if joinable {
                *end = (*end).max(span.end());
                req.count = u16::try_from(*end - u32::from(req.start)).unwrap_or(limit);
                req.tags.push((span.tag, span.offset - req.start));
                continue;
            }
        }
        if let Some((req, _)) = current.take() {
            requests.push(req);
        }
        current = Some((
            ReadRequest {
                table: span.table,
                start: span.offset,
                count: span.width,
                tags: vec![(span.tag, 0)],
            },
            span.end(),
        ));
    }
    if let Some((req, _)) = current {
        requests.push(req);
    }
    requests
}

/// Splits a request the device refused as too large into smaller ones serving the same tags:
/// the tags are planned again with at most half the span. `None` when the request serves a
/// single tag (nothing to split; the refusal is about that tag itself).
pub fn split(
    request: &ReadRequest,
    spans: &[TagSpan],
    limits: PlanLimits,
) -> Option<Vec<ReadRequest>> {
    if request.tags.len() < 2 {
        return None;
    }
    let half = (request.count / 2).max(1);
    let narrower = if request.table.is_bits() {
        PlanLimits {
            max_bits: half,
            ..limits
        }
    } else {
        PlanLimits {
            max_registers: half,
            ..limits
        }
    };
    let own: Vec<TagSpan> = request
        .tags
        .iter()
        .filter_map(|(tag, _)| spans.iter().find(|s| s.tag == *tag).copied())
        .collect();
    let mut parts = plan(&own, narrower);
    // A tag wider than half the span would be dropped by the narrower plan; keep it whole.
    let planned: usize = parts.iter().map(|r| r.tags.len()).sum();
    if planned < own.len() {
        let missing: Vec<TagSpan> = own
            .iter()
            .filter(|s| {
                !parts
                    .iter()
                    .any(|r| r.tags.iter().any(|(t, _)| *t == s.tag))
            })
            .copied()
            .collect();
        parts.extend(plan(&missing, limits));
    }
    (parts.len() > 1).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(tag: usize, table: Table, offset: u16, width: u16) -> TagSpan {
        TagSpan {
            tag,
            table,
            offset,
            width,
        }
    }

    #[test]
    fn contiguous_tags_share_one_request_per_table() {
        let spans = [
            span(0, Table::Holding, 0, 2),
            span(1, Table::Holding, 2, 2),
            span(2, Table::Holding, 4, 1),
            span(3, Table::Coil, 0, 1),
            span(4, Table::Coil, 1, 1),
            span(5, Table::Input, 10, 2),
        ];
        let plan = plan(&spans, PlanLimits::default());
        assert_eq!(
            plan,
            vec![
                ReadRequest {
                    table: Table::Coil,
                    start: 0,
                    count: 2,
                    tags: vec![(3, 0), (4, 1)]
                },
                ReadRequest {
                    table: Table::Input,
                    start: 10,
                    count: 2,
                    tags: vec![(5, 0)]
                },
                ReadRequest {
                    table: Table::Holding,
                    start: 0,
                    count: 5,
                    tags: vec![(0, 0), (1, 2), (2, 4)]
                },
            ]
        );
    }

    #[test]
    fn gaps_split_unless_gap_fill_allows_them() {
        let spans = [span(0, Table::Holding, 0, 1), span(1, Table::Holding, 5, 1)];
        assert_eq!(plan(&spans, PlanLimits::default()).len(), 2);
        let filled = plan(
            &spans,
            PlanLimits {
                max_gap: 4,
                ..PlanLimits::default()
            },
        );
        assert_eq!(
            filled,
            vec![ReadRequest {
                table: Table::Holding,
                start: 0,
                count: 6,
                tags: vec![(0, 0), (1, 5)]
            }]
        );
    }

    #[test]
    fn overlapping_tags_share_words() {
        // A bit tag inside a register also read as u16.
        let spans = [
            span(0, Table::Holding, 3, 1),
            span(1, Table::Holding, 3, 1),
            span(2, Table::Holding, 2, 2),
        ];
        let plan = plan(&spans, PlanLimits::default());
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].start, plan[0].count), (2, 2));
    }

    #[test]
    fn requests_never_exceed_the_protocol_limit() {
        let spans: Vec<TagSpan> = (0..200)
            .map(|i| span(i, Table::Holding, i as u16, 1))
            .collect();
        let plan = plan(&spans, PlanLimits::default());
        assert_eq!(
            plan.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![125, 75]
        );
    }

    #[test]
    fn a_refused_request_splits_into_halves_serving_the_same_tags() {
        let spans: Vec<TagSpan> = (0..10)
            .map(|i| span(i, Table::Holding, (i * 2) as u16, 2))
            .collect();
        let whole = plan(&spans, PlanLimits::default());
        assert_eq!(whole.len(), 1);
        let parts = split(&whole[0], &spans, PlanLimits::default()).unwrap();
        assert_eq!(
            parts.iter().map(|r| (r.start, r.count)).collect::<Vec<_>>(),
            vec![(0, 10), (10, 10)]
        );
        let again = split(&parts[0], &spans, PlanLimits::default()).unwrap();
        assert_eq!(
            again.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let single = plan(&spans[..1], PlanLimits::default());
        assert_eq!(split(&single[0], &spans, PlanLimits::default()), None);
    }

    #[test]
    fn a_wide_tag_survives_a_split() {
        let spans = [span(0, Table::Holding, 0, 4), span(1, Table::Holding, 4, 1)];
        let whole = plan(&spans, PlanLimits::default());
        let parts = split(&whole[0], &spans, PlanLimits::default()).unwrap();
        let mut tags: Vec<usize> = parts
            .iter()
            .flat_map(|r| r.tags.iter().map(|(t, _)| *t))
            .collect();
        tags.sort_unstable();
        assert_eq!(tags, vec![0, 1]);
    }

    fn any_table() -> impl Strategy<Value = Table> {
        prop_oneof![
            Just(Table::Coil),
            Just(Table::Discrete),
            Just(Table::Input),
            Just(Table::Holding)
        ]
    }

    proptest! {
        #[test]
        fn every_tag_is_read_exactly_once_within_limits(
            raw in proptest::collection::vec((any_table(), 0u16..400, 1u16..5), 0..80),
            max_gap in 0u16..10,
            max_registers in 4u16..=125,
        ) {
            let spans: Vec<TagSpan> = raw.iter().enumerate().map(|(i, (t, o, w))| span(i, *t, *o, *w)).collect();
            let limits = PlanLimits { max_registers, max_bits: 2000, max_gap };
            let plan = plan(&spans, limits);
            let mut seen = vec![0; spans.len()];
            for req in &plan {
                let limit = if req.table.is_bits() { limits.max_bits } else { limits.max_registers };
                prop_assert!(req.count >= 1 && req.count <= limit);
                for (tag, pos) in &req.tags {
                    let s = spans[*tag];
                    seen[*tag] += 1;
                    prop_assert_eq!(s.table, req.table);
                    prop_assert_eq!(u32::from(req.start) + u32::from(*pos), u32::from(s.offset));
                    prop_assert!(u32::from(*pos) + u32::from(s.width) <= u32::from(req.count));
                }
            }
            prop_assert!(seen.iter().all(|n| *n == 1), "{:?}", seen);
        }
    }
}
