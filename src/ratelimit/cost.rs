//! What a call costs in rate-limit tokens: 1, or what `[rate_limit.route_costs]` says for its
//! operation (so an expensive route such as instance creation can count for more).

use std::collections::HashMap;

use crate::routes::{Operation, named as resolve_route};

/// Costs by operationId; operations not listed cost 1.
#[derive(Debug, Default)]
pub struct RouteCosts(HashMap<&'static str, u32>);

impl RouteCosts {
    /// From validated configuration (keys that name no operation are skipped).
    pub fn from_config(costs: &std::collections::BTreeMap<String, u32>) -> Self {
        Self(
            costs
                .iter()
                .filter_map(|(key, &cost)| Some((resolve_route(key)?.operation_id, cost.max(1))))
                .collect(),
        )
    }

    pub fn of(&self, route: Option<&'static Operation>) -> u32 {
        match route {
            Some(op) if !self.0.is_empty() => self.0.get(op.operation_id).copied().unwrap_or(1),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_operation_id_or_method_and_path() {
        assert_eq!(
            resolve_route("createInstance").map(|o| o.path),
            Some("/v1/compute/instances")
        );
        assert_eq!(
            resolve_route("post /v1/compute/instances").map(|o| o.operation_id),
            Some("createInstance")
        );
        assert!(resolve_route("createInstances").is_none());
        assert!(resolve_route("GET /v1/nowhere").is_none());
    }
}
