//! The job workflow: states and the only transitions between them. Pure (no I/O), so the
//! whole table is tested here; the API applies it inside a [`crate::Writer`] and records every
//! transition in `job_transitions` and in the audit log.
//!
//! ```text
//! draft --submit--> pending_approval --(every dataset's policy met)--> approved
//! approved --schedule--> scheduled --start--> running --finish--> succeeded | failed
//! approved | scheduled --(an approval withdrawn, a policy no longer met)--> pending_approval
//! running --requeue--> scheduled            (executor lost; the workload manager bounds retries)
//! scheduled --fail--> failed                (could not start)
//! pending_approval | approved | scheduled --reject--> rejected
//! any state before succeeded/failed --cancel--> cancelled
//! ```

use serde::{Deserialize, Serialize};

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Being written; not visible to approvers.
    Draft,
    /// Waiting for the datasets' owners to approve.
    PendingApproval,
    /// Every dataset's policy is met.
    Approved,
    /// The workload manager has placed it on an executor.
    Scheduled,
    /// Running in an executor.
    Running,
    /// Finished with results.
    Succeeded,
    /// Finished without results.
    Failed,
    /// Stopped by its owner.
    Cancelled,
    /// Refused by an approver.
    Rejected,
}

/// What moves a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The owner submits the draft for approval.
    Submit,
    /// The last approval needed arrived.
    PolicyMet,
    /// An approval was withdrawn and a policy is no longer met.
    PolicyUnmet,
    /// An approver refuses.
    Reject,
    /// The workload manager places it.
    Schedule,
    /// The executor starts it (the job grant is issued now).
    Start,
    /// The executor was lost; back to the queue.
    Requeue,
    /// Finished with results.
    Succeed,
    /// Finished without.
    Fail,
    /// The owner stops it.
    Cancel,
}

impl JobState {
    /// Every state.
    pub const ALL: [Self; 9] = [
        Self::Draft,
        Self::PendingApproval,
        Self::Approved,
        Self::Scheduled,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Rejected,
    ];

    /// The state's name, as stored and answered.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::PendingApproval => "pending_approval",
            Self::Approved => "approved",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
        }
    }

    /// A state by name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether nothing can happen to the job any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Rejected
        )
    }

    /// Whether approvals may still change (before the job runs).
    pub fn approvals_open(self) -> bool {
        matches!(
            self,
            Self::PendingApproval | Self::Approved | Self::Scheduled
        )
    }
}

impl Action {
    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::PolicyMet => "policy_met",
            Self::PolicyUnmet => "policy_unmet",
            Self::Reject => "reject",
            Self::Schedule => "schedule",
            Self::Start => "start",
            Self::Requeue => "requeue",
            Self::Succeed => "succeed",
            Self::Fail => "fail",
            Self::Cancel => "cancel",
        }
    }
}

/// A transition the workflow does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a job in state {} cannot {}", from.as_str(), action.as_str())]
pub struct InvalidTransition {
    /// The job's state.
    pub from: JobState,
    /// What was asked.
    pub action: Action,
}

/// The state `action` moves a job in `from` to.
pub fn next(from: JobState, action: Action) -> Result<JobState, InvalidTransition> {
    use Action as A;
    use JobState as S;
    let to = match (from, action) {
        (S::Draft, A::Submit) => S::PendingApproval,
        (S::PendingApproval, A::PolicyMet) => S::Approved,
        (S::Approved | S::Scheduled, A::PolicyUnmet) => S::PendingApproval,
        (S::PendingApproval | S::Approved | S::Scheduled, A::Reject) => S::Rejected,
        (S::Approved, A::Schedule) => S::Scheduled,
        (S::Scheduled, A::Start) => S::Running,
        (S::Running, A::Requeue) => S::Scheduled,
        (S::Running, A::Succeed) => S::Succeeded,
        (S::Running | S::Scheduled, A::Fail) => S::Failed,
        (s, A::Cancel) if !s.is_final() => S::Cancelled,
        _ => return Err(InvalidTransition { from, action }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action as A;
    use JobState as S;

    const ACTIONS: [Action; 10] = [
        A::Submit,
        A::PolicyMet,
        A::PolicyUnmet,
        A::Reject,
        A::Schedule,
        A::Start,
        A::Requeue,
        A::Succeed,
        A::Fail,
        A::Cancel,
    ];

    #[test]
    fn the_happy_path_runs_from_draft_to_succeeded() {
        let mut s = S::Draft;
        for a in [A::Submit, A::PolicyMet, A::Schedule, A::Start, A::Succeed] {
            s = next(s, a).unwrap();
        }
        assert_eq!(s, S::Succeeded);
    }

    #[test]
    fn final_states_allow_nothing() {
        for s in S::ALL.into_iter().filter(|s| s.is_final()) {
            for a in ACTIONS {
                assert!(next(s, a).is_err(), "{s:?} --{a:?}--> should be refused");
            }
        }
    }

    #[test]
    fn a_job_cannot_start_without_being_approved_and_scheduled() {
        for s in [S::Draft, S::PendingApproval, S::Approved] {
            let err = next(s, A::Start).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("a job in state {} cannot start", s.as_str())
            );
        }
    }

    #[test]
    fn the_table_has_exactly_the_documented_edges() {
        let mut edges = 0;
        for s in S::ALL {
            for a in ACTIONS {
                if next(s, a).is_ok() {
                    edges += 1;
                }
            }
        }
        // 11 listed pairs (counting each from-state) + cancel from the 5 non-final states.
        assert_eq!(edges, 1 + 1 + 2 + 3 + 1 + 1 + 1 + 1 + 2 + 5);
    }

    #[test]
    fn names_round_trip() {
        for s in S::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }
}

/// Counting approvals against dataset policies: the same rule the KMS applies to a job grant
/// (a dataset's policy is met by `k` distinct users of the dataset's org, each approving in one
/// of the policy's roles), so the hub never issues a grant the KMS would refuse, and shows
/// people exactly what is missing.
pub mod policy {
    use std::collections::BTreeSet;

    use coffer_kms::authz::{ApprovalPolicy, OrgRole};
    use serde::Serialize;

    /// One approval, as counted.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Counted<'a> {
        /// The approving user.
        pub user: &'a str,
        /// Their org.
        pub org: &'a str,
        /// The role they approved in.
        pub role: OrgRole,
    }

    /// Where one dataset's policy stands.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
    #[schema(as = PolicyStatus)]
    pub struct Status {
        /// Distinct approvers that count.
        pub have: u32,
        /// How many the policy needs.
        pub need: u32,
        /// `have >= need`.
        pub met: bool,
    }

    /// Where `policy` of a dataset owned by `org` stands given `approvals`.
    pub fn status(org: &str, policy: &ApprovalPolicy, approvals: &[Counted<'_>]) -> Status {
        let users: BTreeSet<&str> = approvals
            .iter()
            .filter(|a| a.org == org && policy.roles.contains(&a.role))
            .map(|a| a.user)
            .collect();
        let have = u32::try_from(users.len()).unwrap_or(u32::MAX);
        Status {
            have,
            need: policy.k,
            met: policy.k > 0 && have >= policy.k,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn policy(roles: &[OrgRole], k: u32) -> ApprovalPolicy {
            ApprovalPolicy {
                roles: roles.to_vec(),
                k,
            }
        }

        #[test]
        fn distinct_users_of_the_owning_org_in_a_listed_role_count() {
            let p = policy(&[OrgRole::Approver, OrgRole::Owner], 2);
            let a = |user, org, role| Counted { user, org, role };
            // The same user twice counts once; another org's approver does not count; an
            // analyst's approval does not count.
            let approvals = [
                a("bob", "beta", OrgRole::Approver),
                a("bob", "beta", OrgRole::Owner),
                a("eve", "acme", OrgRole::Approver),
                a("carl", "beta", OrgRole::Analyst),
            ];
            assert_eq!(
                status("beta", &p, &approvals),
                Status {
                    have: 1,
                    need: 2,
                    met: false
                }
            );
            let mut more = approvals.to_vec();
            more.push(a("dora", "beta", OrgRole::Owner));
            assert_eq!(
                status("beta", &p, &more),
                Status {
                    have: 2,
                    need: 2,
                    met: true
                }
            );
        }

        #[test]
        fn a_policy_of_zero_is_never_met() {
            assert!(!status("beta", &policy(&[OrgRole::Approver], 0), &[]).met);
        }
    }
}
