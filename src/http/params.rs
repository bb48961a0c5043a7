//! Parsing what clients send in paths and queries. Anything unexpected is a 400 with a
//! message that says what was wrong; nothing here can panic.

use super::ApiError;

/// Most items one multiplexed stream may watch.
pub const MAX_ITEMS: usize = 100;

/// A positive decimal id (`abc`, `-1`, `0`, `1e3` and values beyond i64 are refused).
pub fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "{what} must be a positive integer"
        )));
    }
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be a positive integer"
        ))),
    }
}

/// Most workspace feeds one multiplexed stream may carry: a page shows one dashboard, and
/// one feed keeps the stream's feed events free of routing (they carry its id anyway).
pub const MAX_WORKSPACES: usize = 1;

/// The items of a multiplexed stream: `runs=1,2,3&review_pack_tenants=7,8&workspaces=3`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ItemLists {
    pub runs: Vec<i64>,
    pub tenants: Vec<i64>,
    /// Workspace feeds, at most [`MAX_WORKSPACES`].
    pub workspaces: Vec<i64>,
}

/// The limit counts ids as sent, duplicates included: de-duplicating 5,000 copies of one id
/// is work too.
pub fn parse_item_lists(query: Option<&str>) -> Result<ItemLists, ApiError> {
    let mut lists = ItemLists::default();
    let mut sent = 0usize;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let (list, what) = match key.as_ref() {
            "runs" => (&mut lists.runs, "runs"),
            "review_pack_tenants" => (&mut lists.tenants, "review_pack_tenants"),
            "workspaces" => (&mut lists.workspaces, "workspaces"),
            _ => continue,
        };
        if value.is_empty() {
            return Err(ApiError::bad_request(format!("{what} is empty")));
        }
        for part in value.split(',') {
            sent += 1;
            if sent > MAX_ITEMS {
                return Err(ApiError::bad_request(format!(
                    "at most {MAX_ITEMS} items per stream"
                )));
            }
            let id = parse_id(part.trim(), &format!("each id in {what}"))?;
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }
    if lists.workspaces.len() > MAX_WORKSPACES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_WORKSPACES} workspace per stream: open another for more"
        )));
    }
    if lists.runs.is_empty() && lists.tenants.is_empty() && lists.workspaces.is_empty() {
        return Err(ApiError::bad_request(
            "name at least one item: runs=1,2, review_pack_tenants=3 and/or workspaces=4",
        ));
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("42", "id").unwrap(), 42);
        for bad in [
            "",
            "abc",
            "-1",
            "0",
            "1e3",
            "+5",
            " 5",
            "99999999999999999999",
            "9223372036854775808",
        ] {
            assert!(parse_id(bad, "id").is_err(), "{bad}");
        }
        assert_eq!(parse_id("9223372036854775807", "id").unwrap(), i64::MAX);
    }

    #[test]
    fn lists() {
        let l = parse_item_lists(Some("runs=1,2,2&review_pack_tenants=7&access_token=x")).unwrap();
        assert_eq!(l.runs, vec![1, 2]);
        assert_eq!(l.tenants, vec![7]);
        assert!(parse_item_lists(None).is_err());
        assert!(parse_item_lists(Some("runs=")).is_err());
        assert!(parse_item_lists(Some("runs=1,,2")).is_err());
        assert!(parse_item_lists(Some("runs=a")).is_err());
        let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
        assert!(parse_item_lists(Some(&format!("runs={}", many.join(",")))).is_err());
        let hundred: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
        assert!(parse_item_lists(Some(&format!("runs={}", hundred.join(",")))).is_ok());
        // Counted as sent: duplicates and both lists together.
        let copies = vec!["7"; 5001].join(",");
        assert!(parse_item_lists(Some(&format!("runs={copies}"))).is_err());
        let copies = vec!["7"; 101].join(",");
        assert!(parse_item_lists(Some(&format!("runs={copies}"))).is_err());
        let fifty = vec!["7"; 50].join(",");
        assert!(
            parse_item_lists(Some(&format!("runs={fifty}&review_pack_tenants={fifty}"))).is_ok()
        );
        assert!(
            parse_item_lists(Some(&format!("runs={fifty}&review_pack_tenants={fifty},8"))).is_err()
        );
    }

    #[test]
    fn workspaces() {
        let l = parse_item_lists(Some("workspaces=3")).unwrap();
        assert_eq!(
            (l.runs.len(), l.tenants.len(), l.workspaces),
            (0, 0, vec![3])
        );
        let l = parse_item_lists(Some("runs=1&workspaces=3,3&review_pack_tenants=2")).unwrap();
        assert_eq!(
            (l.runs, l.tenants, l.workspaces),
            (vec![1], vec![2], vec![3])
        );
        // Without `workspaces=` nothing changes.
        assert!(parse_item_lists(Some("runs=1"))
            .unwrap()
            .workspaces
            .is_empty());
        for bad in [
            "workspaces=",
            "workspaces=0",
            "workspaces=a",
            "workspaces=3,4",
            "workspaces=3&workspaces=4",
        ] {
            assert!(parse_item_lists(Some(bad)).is_err(), "{bad}");
        }
        // A workspace counts towards the cap like any id sent.
        let hundred = vec!["7"; 100].join(",");
        assert!(parse_item_lists(Some(&format!("runs={hundred}&workspaces=3"))).is_err());
    }
}
