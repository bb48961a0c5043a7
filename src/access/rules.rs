//! The access rules, written once. The database supplies [`Facts`] (memberships and roles of
//! one user towards one owner); [`verdict`] turns them into allowed / 404 / 403. Opening a
//! stream, a JSON snapshot, a re-check after an access change and the workspace feed's
//! filter all come through here.
//!
//! * run: user not in its workspace → 404; the run has a tenant the user is not a member of
//!   → 403; otherwise allowed (tenantless runs: any workspace member).
//! * review pack: tenant missing, user not in the tenant's workspace, or not in the tenant →
//!   404; a tenant role without `review_pack.view` (`readonly`) → 403.

use crate::model::Owner;

/// Why access was refused, or why it could not be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("not found")]
    NotFound,
    #[error("you may not watch this")]
    Forbidden,
    #[error("the database is unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl AccessError {
    /// Picks the refusal for a set of items: 404 wins over 403 so nothing leaks about items
    /// the caller may not even know exist; an undecidable item wins over both.
    pub fn worst(a: Option<AccessError>, b: AccessError) -> Option<AccessError> {
        use AccessError::*;
        let rank = |e: &AccessError| match e {
            Forbidden => 0,
            NotFound => 1,
            Unavailable => 2,
            Internal => 3,
        };
        Some(match a {
            Some(a) if rank(&a) >= rank(&b) => a,
            _ => b,
        })
    }
}

/// What the database says about one user and one owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// Member of the owner's workspace (for a pack: of its tenant's workspace).
    pub workspace_member: bool,
    /// The owner's tenant exists (always true for runs, which name no tenant row).
    pub tenant_exists: bool,
    /// The user's role in the owner's tenant, if any.
    pub tenant_role: Option<String>,
}

/// Capability `review_pack.view`, as the host app grants it per tenant role.
pub(crate) fn role_can_view_review_pack(role: &str) -> bool {
    matches!(role, "owner" | "manager" | "operator")
}

/// The rule: may a user with these facts see an item of `owner`?
pub(crate) fn verdict(owner: &Owner, facts: &Facts) -> Result<(), AccessError> {
    match owner {
        Owner::Run { tenant, .. } => {
            if !facts.workspace_member {
                Err(AccessError::NotFound)
            } else if tenant.is_some() && facts.tenant_role.is_none() {
                Err(AccessError::Forbidden)
            } else {
                Ok(())
            }
        }
        Owner::Pack { .. } => match facts.tenant_role.as_deref() {
            _ if !facts.tenant_exists || !facts.workspace_member => Err(AccessError::NotFound),
            None => Err(AccessError::NotFound),
            Some(role) if !role_can_view_review_pack(role) => Err(AccessError::Forbidden),
            Some(_) => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(member: bool, role: Option<&str>) -> Facts {
        Facts {
            workspace_member: member,
            tenant_exists: true,
            tenant_role: role.map(str::to_owned),
        }
    }

    #[test]
    fn the_rules() {
        use AccessError::*;
        let run = Owner::Run {
            workspace: 1,
            tenant: Some(2),
        };
        let tenantless = Owner::Run {
            workspace: 1,
            tenant: None,
        };
        let pack = Owner::Pack { tenant: 2 };
        assert_eq!(verdict(&run, &facts(false, Some("owner"))), Err(NotFound));
        assert_eq!(verdict(&run, &facts(true, None)), Err(Forbidden));
        assert_eq!(verdict(&run, &facts(true, Some("readonly"))), Ok(()));
        assert_eq!(verdict(&tenantless, &facts(true, None)), Ok(()));
        assert_eq!(
            verdict(&pack, &facts(true, Some("readonly"))),
            Err(Forbidden)
        );
        assert_eq!(verdict(&pack, &facts(true, None)), Err(NotFound));
        assert_eq!(verdict(&pack, &facts(false, Some("owner"))), Err(NotFound));
        assert_eq!(verdict(&pack, &facts(true, Some("manager"))), Ok(()));
        let missing = Facts {
            tenant_exists: false,
            ..facts(true, Some("owner"))
        };
        assert_eq!(verdict(&pack, &missing), Err(NotFound));
    }

    #[test]
    fn not_found_wins_over_forbidden() {
        use AccessError::*;
        assert_eq!(
            AccessError::worst(Some(NotFound), Forbidden),
            Some(NotFound)
        );
        assert_eq!(
            AccessError::worst(Some(Forbidden), NotFound),
            Some(NotFound)
        );
        assert_eq!(AccessError::worst(None, Forbidden), Some(Forbidden));
    }
}
