//! Spreading a device's tags over subscriptions and requests within the server's limits.
//! Pure: the limits come in, the plan goes out.

use std::ops::Range;

/// What the server allows, as far as it says (0 or absent means no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerLimits {
    /// `ServerCapabilities.MaxMonitoredItemsPerSubscription`.
    pub monitored_items_per_subscription: Option<u32>,
    /// `OperationLimits.MaxMonitoredItemsPerCall`.
    pub monitored_items_per_call: Option<u32>,
    /// `OperationLimits.MaxNodesPerRead`.
    pub nodes_per_read: Option<u32>,
}

/// One subscription: the tags (indices into the device's tags) it monitors, and the
/// CreateMonitoredItems calls that create them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSubscription {
    pub items: Range<usize>,
    pub calls: Vec<Range<usize>>,
}

fn limit(configured: u32, server: Option<u32>) -> usize {
    let server = server.filter(|&s| s > 0).unwrap_or(u32::MAX);
    usize::try_from(configured.min(server).max(1)).unwrap_or(usize::MAX)
}

/// Splits `tags` monitored items into subscriptions of at most `max_per_subscription` (and
/// the server's limit), each created in calls within the server's per-call limit.
pub fn subscriptions(
    tags: usize,
    max_per_subscription: u32,
    server: ServerLimits,
) -> Vec<PlannedSubscription> {
    let per_subscription = limit(
        max_per_subscription,
        server.monitored_items_per_subscription,
    );
    let per_call = limit(u32::MAX, server.monitored_items_per_call);
    chunks(0..tags, per_subscription)
        .into_iter()
        .map(|items| PlannedSubscription {
            calls: chunks(items.clone(), per_call),
            items,
        })
        .collect()
}

/// The Read requests of one poll: every tag, in requests within the server's limit.
pub fn reads(tags: usize, server: ServerLimits) -> Vec<Range<usize>> {
    chunks(0..tags, limit(u32::MAX, server.nodes_per_read))
}

fn chunks(range: Range<usize>, size: usize) -> Vec<Range<usize>> {
    let size = size.max(1);
    let mut out = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let end = range.end.min(start.saturating_add(size));
        out.push(start..end);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one call of one item is the point
    fn the_smaller_limit_wins() {
        let server = ServerLimits {
            monitored_items_per_subscription: Some(3),
            monitored_items_per_call: Some(2),
            nodes_per_read: Some(0),
        };
        let plan = subscriptions(7, 1000, server);
        assert_eq!(
            plan,
            vec![
                PlannedSubscription {
                    items: 0..3,
                    calls: vec![0..2, 2..3]
                },
                PlannedSubscription {
                    items: 3..6,
                    calls: vec![3..5, 5..6]
                },
                PlannedSubscription {
                    items: 6..7,
                    calls: vec![6..7]
                },
            ]
        );
        assert_eq!(
            subscriptions(5, 2, ServerLimits::default())
                .iter()
                .map(|s| s.items.clone())
                .collect::<Vec<_>>(),
            vec![0..2, 2..4, 4..5]
        );
        assert_eq!(reads(5, server), vec![0..5]);
        assert!(subscriptions(0, 10, server).is_empty());
    }

    proptest! {
        #[test]
        fn every_tag_is_planned_once_within_the_limits(
            tags in 0usize..500,
            configured in 1u32..100,
            per_subscription in proptest::option::of(0u32..50),
            per_call in proptest::option::of(0u32..20),
        ) {
            let server = ServerLimits {
                monitored_items_per_subscription: per_subscription,
                monitored_items_per_call: per_call,
                nodes_per_read: per_call,
            };
            let plan = subscriptions(tags, configured, server);
            let mut next = 0;
            for s in &plan {
                prop_assert!(!s.items.is_empty());
                prop_assert!(s.items.len() <= configured as usize);
                if let Some(max) = per_subscription.filter(|&m| m > 0) {
                    prop_assert!(s.items.len() <= max as usize);
                }
                prop_assert_eq!(s.items.start, next);
                let mut call_next = s.items.start;
                for call in &s.calls {
                    prop_assert_eq!(call.start, call_next);
                    if let Some(max) = per_call.filter(|&m| m > 0) {
                        prop_assert!(call.len() <= max as usize);
                    }
                    call_next = call.end;
                }
                prop_assert_eq!(call_next, s.items.end);
                next = s.items.end;
            }
            prop_assert_eq!(next, tags);
            let read_total: usize = reads(tags, server).iter().map(|r| r.len()).sum();
            prop_assert_eq!(read_total, tags);
        }
    }
}
