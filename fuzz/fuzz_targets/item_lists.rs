#![no_main]
//! `/v1/streams` query strings: accepted lists are non-empty, de-duplicated, within the caps.
use libfuzzer_sys::fuzz_target;
use runwire::parsing::{parse_item_lists, MAX_ITEMS, MAX_WORKSPACES};

fuzz_target!(|query: &str| {
    if let Ok(lists) = parse_item_lists(Some(query)) {
        let total = lists.runs.len() + lists.tenants.len() + lists.workspaces.len();
        assert!(total >= 1 && total <= MAX_ITEMS);
        assert!(lists.workspaces.len() <= MAX_WORKSPACES);
        let ids = lists
            .runs
            .iter()
            .chain(&lists.tenants)
            .chain(&lists.workspaces);
        assert!(ids.copied().all(|id| id > 0));
        let mut runs = lists.runs.clone();
        runs.sort();
        runs.dedup();
        assert_eq!(runs.len(), lists.runs.len());
    }
});
