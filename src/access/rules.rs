//! The access rules, written once. The database supplies [`Facts`] (memberships and roles of
//! one user towards one owner); [`verdict`] turns them into allowed / 404 / 403. Opening a
//! stream, a JSON snapshot, a re-check after an access change and the workspace feed's
//! filter all come through here.
//!
//! * run: user not in its workspace → 404; the run has a tenant the user is not a member of,
//!   or a tenant that does not sit in the run's workspace (moved to another one, or gone) →
//!   403; otherwise allowed (tenantless runs: any workspace member). A run is its tenant's
//!   as much as its workspace's: when the two disagree nobody is shown it — on a stream,
//!   a set, a snapshot or the workspace feed alike — until the host moves the run too.
//! * review pack: tenant missing, user not in the tenant's workspace, or not in the tenant →
//!   404; a tenant role without `review_pack.view` (`readonly`) → 403.

use crate::model::Owner;

/// A verdict of the rules: access refused. (Why access could not be *decided* — the read
/// failed — is a [`ReadError`](super::batch::ReadError), kept apart so a refusal never hides
/// an outage and an outage is never mistaken for a refusal.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("not found")]
    NotFound,
    #[error("you may not watch this")]
    Forbidden,
}

/// What the database says about one user and one owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// Member of the owner's workspace (for a pack: of its tenant's workspace).
    pub workspace_member: bool,
    /// The owner's tenant exists (always true for runs, which name no tenant row).
    pub tenant_exists: bool,
    /// A run's tenant exists and sits in the run's workspace (true for a tenantless run;
    /// not asked of packs, whose workspace is their tenant's).
    pub tenant_in_workspace: bool,
    /// The user's role in the owner's tenant, if any.
    pub tenant_role: Option<String>,
}

/// Capability `review_pack.view`, as the host app grants it per tenant role.
pub(crate) fn role_can_view_review_pack(role: &str) -> bool {
    matches!(role, "owner" | "manager" | "operator")
}

/// The rule: may a user with these facts see an item of `owner`?
pub(crate) fn verdict(owner: &Owner, facts: &Facts) -> Result<(), Denied> {
    match owner {
        Owner::Run { tenant, .. } => {
            if !facts.workspace_member {
                Err(Denied::NotFound)
            } else if tenant.is_some()
                && (facts.tenant_role.is_none() || !facts.tenant_in_workspace)
            {
                Err(Denied::Forbidden)
            } else {
                Ok(())
            }
        }
        Owner::Pack { .. } => match facts.tenant_role.as_deref() {
            _ if !facts.tenant_exists || !facts.workspace_member => Err(Denied::NotFound),
            None => Err(Denied::NotFound),
            Some(role) if !role_can_view_review_pack(role) => Err(Denied::Forbidden),
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
            tenant_in_workspace: true,
            tenant_role: role.map(str::to_owned),
        }
    }

    #[test]
    fn the_rules() {
        use Denied::*;
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
        // The run's tenant moved to another workspace: nobody, whatever their roles.
        let moved = Facts {
            tenant_in_workspace: false,
            ..facts(true, Some("owner"))
        };
        assert_eq!(verdict(&run, &moved), Err(Forbidden));
        assert_eq!(verdict(&tenantless, &moved), Ok(()));
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
}
