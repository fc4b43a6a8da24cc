//! Jobs, their workflow and their approvals; the workload manager's side (queue, schedule,
//! start with a job grant, finish).
//!
//! A job carries an encrypted definition (the SQL and its variables, sealed by the client
//! appliance so that only an attested executor can open it: the hub stores base64 it cannot
//! read), the datasets it reads and who receives its results. Every transition goes through
//! [`crate::workflow::next`], is stored in `job_transitions` and appended to the audit log.
//!
//! Approvals: a user of a dataset's owning org, holding a role the dataset's policy lists,
//! approves (never their own job: separation of duties). Counting uses
//! [`crate::workflow::policy`], the KMS's own rule, over approvals not withdrawn whose approver
//! *still* holds the role. The job grant the KMS checks is issued only at start, after a
//! final recount, and lists exactly those approvals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use base64ct::{Base64, Encoding};
use coffer_kms::authz::{
    Approval, ApprovalPolicy, GrantDataset, JobGrantClaims, OrgRole, Recipient,
};
use coffer_kms::{KeyId, OrgId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{AnyConnection, Row};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::orgs::{require_workspace, workspace_exists, MANAGERS};
use crate::audit::AuditRecord;
use crate::auth::{self, role_name, Caller, User};
use crate::config::JOB_GRANT_LIFETIME_SECS;
use crate::error::{ApiError, ApiResult, ErrorBody, Json, OptionalJson, Path, Query};
use crate::notify::Event;
use crate::state::{Hub, Writer};
use crate::workflow::{self, policy, Action, JobState};

pub(super) fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(describe))
        .routes(routes!(submit))
        .routes(routes!(cancel))
        .routes(routes!(approve))
        .routes(routes!(withdraw))
        .routes(routes!(reject))
        .routes(routes!(queue))
        .routes(routes!(schedule))
        .routes(routes!(start))
        .routes(routes!(requeue))
        .routes(routes!(finish))
}

/// The largest encrypted definition (1 MiB after base64 decoding).
pub const MAX_DEFINITION_BYTES: usize = 1024 * 1024;
/// The most datasets one job may read.
pub const MAX_JOB_DATASETS: usize = 64;
/// The most recipients.
pub const MAX_RECIPIENTS: usize = 16;
/// The service-account kind of the workload manager.
pub const SCHEDULER: &str = "scheduler";

/// Who receives a job's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Recipient)]
pub struct RecipientSpec {
    /// The org.
    #[schema(example = "acme")]
    pub org: String,
    /// Its workspace.
    #[schema(example = "research")]
    pub workspace: String,
}

/// A job's id and state (what most job actions answer).
#[derive(Serialize, ToSchema)]
struct JobRef {
    /// The job's id.
    id: String,
    /// Its state now.
    state: JobState,
}

impl JobRef {
    fn of(job: &Job) -> Json<Self> {
        Json(Self {
            id: job.id.clone(),
            state: job.state,
        })
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
struct Job {
    id: String,
    org: String,
    workspace: String,
    name: String,
    created_by: String,
    creator: String,
    state: JobState,
    recipients: Vec<RecipientSpec>,
    created_at: i64,
    updated_at: i64,
}

/// A dataset a job reads.
#[derive(Debug, Clone)]
struct JobDataset {
    id: String,
    org: String,
    workspace: String,
    name: String,
    location: String,
    key_id: String,
    policy: ApprovalPolicy,
    deleted: bool,
}

/// An approval that counts now (not withdrawn; the approver still holds the role).
#[derive(Debug, Clone)]
struct ApprovalRow {
    id: String,
    user_id: String,
    username: String,
    org: String,
    role: OrgRole,
    at: i64,
}

async fn load_job(conn: &mut AnyConnection, id: &str) -> ApiResult<Job> {
    let row = sqlx::query(
        "SELECT j.id, j.org_id, j.workspace, j.name, j.created_by, u.username, j.state, \
         j.recipients_json, j.created_at, j.updated_at FROM jobs j JOIN users u ON u.id = j.created_by \
         WHERE j.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("job {id:?}")))?;
    let state: String = row.try_get("state")?;
    let recipients: String = row.try_get("recipients_json")?;
    Ok(Job {
        id: row.try_get("id")?,
        org: row.try_get("org_id")?,
        workspace: row.try_get("workspace")?,
        name: row.try_get("name")?,
        created_by: row.try_get("created_by")?,
        creator: row.try_get("username")?,
        state: JobState::parse(&state).ok_or_else(|| {
            ApiError::internal("stored job state", format!("unknown state {state:?}"))
        })?,
        recipients: serde_json::from_str(&recipients)
            .map_err(|e| ApiError::internal("stored recipients", e))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn load_datasets(conn: &mut AnyConnection, job: &str) -> ApiResult<Vec<JobDataset>> {
    let rows = sqlx::query(
        "SELECT d.id, d.org_id, d.workspace, d.name, d.location, d.key_id, d.policy_json, d.deleted_at \
         FROM job_datasets jd JOIN datasets d ON d.id = jd.dataset_id WHERE jd.job_id = $1 ORDER BY d.id",
    )
    .bind(job)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let policy: String = r.try_get("policy_json")?;
        let deleted: Option<i64> = r.try_get("deleted_at")?;
        out.push(JobDataset {
            id: r.try_get("id")?,
            org: r.try_get("org_id")?,
            workspace: r.try_get("workspace")?,
            name: r.try_get("name")?,
            location: r.try_get("location")?,
            key_id: r.try_get("key_id")?,
            policy: serde_json::from_str(&policy)
                .map_err(|e| ApiError::internal("stored policy", e))?,
            deleted: deleted.is_some(),
        });
    }
    Ok(out)
}

/// The approvals that count now: not withdrawn, and the approver still holds the role.
async fn load_approvals(conn: &mut AnyConnection, job: &str) -> ApiResult<Vec<ApprovalRow>> {
    let rows = sqlx::query(
        "SELECT a.id, a.user_id, u.username, a.org_id, a.role, a.at FROM approvals a \
         JOIN users u ON u.id = a.user_id \
         JOIN memberships m ON m.user_id = a.user_id AND m.org_id = a.org_id AND m.role = a.role \
         WHERE a.job_id = $1 AND a.withdrawn_at IS NULL ORDER BY a.at, a.id",
    )
    .bind(job)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let role: String = r.try_get("role")?;
        out.push(ApprovalRow {
            id: r.try_get("id")?,
            user_id: r.try_get("user_id")?,
            username: r.try_get("username")?,
            org: r.try_get("org_id")?,
            role: auth::parse_role(&role)?,
            at: r.try_get("at")?,
        });
    }
    Ok(out)
}

/// Each dataset's policy status, and whether all are met.
fn statuses(
    datasets: &[JobDataset],
    approvals: &[ApprovalRow],
) -> (Vec<(String, policy::Status)>, bool) {
    let counted: Vec<policy::Counted<'_>> = approvals
        .iter()
        .map(|a| policy::Counted {
            user: &a.user_id,
            org: &a.org,
            role: a.role,
        })
        .collect();
    let list: Vec<(String, policy::Status)> = datasets
        .iter()
        .map(|d| (d.id.clone(), policy::status(&d.org, &d.policy, &counted)))
        .collect();
    let all =
        !list.is_empty() && list.iter().all(|(_, s)| s.met) && datasets.iter().all(|d| !d.deleted);
    (list, all)
}

/// Moves `job` by `action`, recording the transition and its audit entry.
async fn transition(
    w: &mut Writer<'_>,
    job: &mut Job,
    action: Action,
    actor: &str,
    reason: Option<&str>,
) -> ApiResult<JobState> {
    let to = workflow::next(job.state, action)
        .map_err(|e| ApiError::conflict("invalid_transition", e.to_string()))?;
    let now = crate::db::now();
    let seq: i64 =
        sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM job_transitions WHERE job_id = $1")
            .bind(&job.id)
            .fetch_one(w.conn())
            .await?
            .try_get("s")?;
    sqlx::query(
        "INSERT INTO job_transitions (job_id, seq, from_state, to_state, actor, reason, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&job.id)
    .bind(seq + 1)
    .bind(job.state.as_str())
    .bind(to.as_str())
    .bind(actor)
    .bind(reason)
    .bind(now)
    .execute(w.conn())
    .await?;
    sqlx::query("UPDATE jobs SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(to.as_str())
        .bind(now)
        .bind(&job.id)
        .execute(w.conn())
        .await?;
    w.audit(
        AuditRecord::ok(actor, format!("job.{}", action.as_str()))
            .org(&job.org)
            .target(&job.id)
            .detail(json!({"from": job.state.as_str(), "to": to.as_str(), "reason": reason})),
    )
    .await?;
    job.state = to;
    job.updated_at = now;
    Ok(to)
}

/// After approvals changed: approved when every policy is met, back to pending when not.
async fn reevaluate(w: &mut Writer<'_>, job: &mut Job) -> ApiResult<()> {
    let datasets = load_datasets(w.conn(), &job.id).await?;
    let approvals = load_approvals(w.conn(), &job.id).await?;
    let (_, all) = statuses(&datasets, &approvals);
    match job.state {
        JobState::PendingApproval if all => {
            transition(
                w,
                job,
                Action::PolicyMet,
                "hub",
                Some("every dataset's policy is met"),
            )
            .await?;
            w.notify(Event {
                kind: "job.approved",
                org: job.org.clone(),
                job_id: Some(job.id.clone()),
                users: vec![job.created_by.clone()],
                body: json!({"job": job.id, "name": job.name}),
            })
            .await?;
        }
        JobState::Approved | JobState::Scheduled if !all => {
            transition(
                w,
                job,
                Action::PolicyUnmet,
                "hub",
                Some("an approval was withdrawn"),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Whether `user` may see `job`: a member of its org, of an org owning one of its datasets
/// (once submitted), or an administrator.
async fn can_view(hub: &Hub, user: &User, job: &Job, datasets: &[JobDataset]) -> ApiResult<bool> {
    if user.is_admin
        || !auth::roles_in(&hub.db, &user.id, &job.org)
            .await?
            .is_empty()
    {
        return Ok(true);
    }
    if job.state == JobState::Draft {
        return Ok(false);
    }
    let orgs: BTreeSet<&str> = datasets.iter().map(|d| d.org.as_str()).collect();
    for org in orgs {
        if !auth::roles_in(&hub.db, &user.id, org).await?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The job for `user`, or 404 (a job one may not see does not exist for them).
async fn visible_job(hub: &Hub, user: &User, id: &str) -> ApiResult<(Job, Vec<JobDataset>)> {
    let mut conn = hub.db.acquire().await?;
    let job = load_job(&mut conn, id).await?;
    let datasets = load_datasets(&mut conn, id).await?;
    if can_view(hub, user, &job, &datasets).await? {
        Ok((job, datasets))
    } else {
        Err(ApiError::not_found(format!("job {id:?}")))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateJob {
    /// The org it runs for.
    #[schema(example = "acme")]
    org: String,
    /// The workspace it runs in (the caller must be a member, or an owner or admin of the org).
    #[schema(example = "research")]
    workspace: String,
    /// Its name: 1-128 printable characters.
    #[schema(example = "monthly totals")]
    name: String,
    /// The encrypted definition, standard base64 (1 byte to 1 MiB decoded).
    #[schema(format = Byte, example = "c2VhbGVk")]
    definition: String,
    /// The ids of the datasets it reads (1 to 64, distinct, each visible to the caller).
    datasets: Vec<String>,
    /// Who receives its results (1 to 16; default: its own org and workspace).
    #[serde(default)]
    recipients: Option<Vec<RecipientSpec>>,
    /// Submit for approval at once (default: stay a draft).
    #[serde(default)]
    submit: bool,
}

/// Creates a job (as a draft, or submitted at once) for an org's owners, admins and analysts.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "create_job",
    request_body = CreateJob,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = JobRef),
        (status = 400, description = "A field is invalid (`invalid_name`, `invalid_definition`, \
         `invalid_datasets`, `invalid_recipients`, `invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller may not create jobs in that org or workspace \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such org, workspace, recipient workspace or visible \
         dataset (`not_found`)", body = ErrorBody),
        (status = 409, description = "Submitted at once, but a dataset was deleted \
         (`dataset_deleted`)", body = ErrorBody),
    )
)]
async fn create(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<CreateJob>,
) -> ApiResult<(StatusCode, Json<JobRef>)> {
    let user = caller.user()?;
    super::orgs::require_org(&hub, &req.org).await?;
    let roles = auth::require_role(
        &hub,
        user,
        &req.org,
        &[OrgRole::Owner, OrgRole::Admin, OrgRole::Analyst],
    )
    .await?;
    let in_workspace = roles.iter().any(|r| MANAGERS.contains(r))
        || sqlx::query("SELECT 1 AS x FROM workspace_members WHERE org_id = $1 AND workspace = $2 AND user_id = $3")
            .bind(&req.org)
            .bind(&req.workspace)
            .bind(&user.id)
            .fetch_optional(&hub.db)
            .await?
            .is_some();
    if !in_workspace {
        return Err(ApiError::forbidden(format!(
            "user {:?} is not a member of workspace {:?} of org {:?}",
            user.username, req.workspace, req.org
        )));
    }
    if req.name.is_empty() || req.name.len() > 128 || req.name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "job name must be 1-128 printable characters",
        ));
    }
    let definition = Base64::decode_vec(&req.definition).map_err(|_| {
        ApiError::bad_request(
            "invalid_definition",
            "definition must be standard base64 (the encrypted job definition)",
        )
    })?;
    if definition.is_empty() || definition.len() > MAX_DEFINITION_BYTES {
        return Err(ApiError::bad_request(
            "invalid_definition",
            format!(
                "definition is {} bytes; 1 to {MAX_DEFINITION_BYTES} are allowed",
                definition.len()
            ),
        ));
    }
    let ids: BTreeSet<&String> = req.datasets.iter().collect();
    if ids.is_empty() || ids.len() > MAX_JOB_DATASETS || ids.len() != req.datasets.len() {
        return Err(ApiError::bad_request(
            "invalid_datasets",
            format!(
                "a job reads 1 to {MAX_JOB_DATASETS} distinct datasets (got {} ids, {} distinct)",
                req.datasets.len(),
                ids.len()
            ),
        ));
    }
    for id in &ids {
        super::datasets::visible(&hub, user, id).await?;
    }
    let recipients = req.recipients.clone().unwrap_or_else(|| {
        vec![RecipientSpec {
            org: req.org.clone(),
            workspace: req.workspace.clone(),
        }]
    });
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(ApiError::bad_request(
            "invalid_recipients",
            format!(
                "a job has 1 to {MAX_RECIPIENTS} recipients (got {})",
                recipients.len()
            ),
        ));
    }
    let id = crate::db::new_id("job-");
    let now = crate::db::now();
    let mut w = hub.writer().await?;
    for r in &recipients {
        if !workspace_exists(w.conn(), &r.org, &r.workspace).await? {
            return Err(ApiError::not_found(format!(
                "recipient workspace {:?} of org {:?}",
                r.workspace, r.org
            )));
        }
    }
    require_workspace(w.conn(), &req.org, &req.workspace).await?;
    sqlx::query(
        "INSERT INTO jobs (id, org_id, workspace, name, created_by, state, definition, recipients_json, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(&id)
    .bind(&req.org)
    .bind(&req.workspace)
    .bind(&req.name)
    .bind(&user.id)
    .bind(JobState::Draft.as_str())
    .bind(Base64::encode_string(&definition))
    .bind(serde_json::to_string(&recipients).map_err(|e| ApiError::internal("recipients", e))?)
    .bind(now)
    .execute(w.conn())
    .await?;
    for ds in &ids {
        sqlx::query("INSERT INTO job_datasets (job_id, dataset_id) VALUES ($1, $2)")
            .bind(&id)
            .bind(*ds)
            .execute(w.conn())
            .await?;
    }
    sqlx::query(
        "INSERT INTO job_transitions (job_id, seq, from_state, to_state, actor, reason, at) VALUES ($1, 1, NULL, 'draft', $2, NULL, $3)",
    )
    .bind(&id)
    .bind(caller.actor())
    .bind(now)
    .execute(w.conn())
    .await?;
    w.audit(
        AuditRecord::ok(caller.actor(), "job.create")
            .org(&req.org)
            .target(&id)
            .detail(
                json!({"name": req.name, "workspace": req.workspace, "datasets": ids,
                           "recipients": recipients, "definition_bytes": definition.len()}),
            ),
    )
    .await?;
    let mut job = load_job(w.conn(), &id).await?;
    if req.submit {
        submit_in(&mut w, &mut job, &caller.actor()).await?;
    }
    w.commit().await?;
    Ok((StatusCode::CREATED, JobRef::of(&job)))
}

/// Submits `job` and asks every dataset owner's approvers.
async fn submit_in(w: &mut Writer<'_>, job: &mut Job, actor: &str) -> ApiResult<()> {
    let datasets = load_datasets(w.conn(), &job.id).await?;
    if let Some(d) = datasets.iter().find(|d| d.deleted) {
        return Err(ApiError::conflict(
            "dataset_deleted",
            format!("dataset {:?} was deleted", d.id),
        ));
    }
    transition(w, job, Action::Submit, actor, None).await?;
    // Per owning org: the users holding a role any of that org's datasets' policies lists.
    let mut roles_by_org: BTreeMap<&str, BTreeSet<OrgRole>> = BTreeMap::new();
    for d in &datasets {
        roles_by_org
            .entry(&d.org)
            .or_default()
            .extend(d.policy.roles.iter().copied());
    }
    for (org, roles) in roles_by_org {
        let mut users = BTreeSet::new();
        for role in roles {
            let rows =
                sqlx::query("SELECT user_id FROM memberships WHERE org_id = $1 AND role = $2")
                    .bind(org)
                    .bind(role_name(role))
                    .fetch_all(w.conn())
                    .await?;
            for r in rows {
                let u: String = r.try_get("user_id")?;
                if u != job.created_by {
                    users.insert(u);
                }
            }
        }
        let datasets_of_org: Vec<&str> = datasets
            .iter()
            .filter(|d| d.org == org)
            .map(|d| d.id.as_str())
            .collect();
        w.notify(Event {
            kind: "job.approval_requested",
            org: org.to_owned(),
            job_id: Some(job.id.clone()),
            users: users.into_iter().collect(),
            body: json!({"job": job.id, "name": job.name, "from_org": job.org,
                         "submitted_by": job.creator, "datasets": datasets_of_org}),
        })
        .await?;
    }
    Ok(())
}

/// A job in full: its datasets and where their policies stand, approvals, transitions.
#[derive(Serialize, ToSchema)]
struct JobDetail {
    /// Its id.
    id: String,
    /// The org it runs for.
    org: String,
    /// Its workspace.
    workspace: String,
    /// Its name.
    name: String,
    /// The user name of its creator.
    created_by: String,
    /// Its state.
    state: JobState,
    /// Who receives its results.
    recipients: Vec<RecipientSpec>,
    /// When it was created (seconds since the Unix epoch).
    created_at: i64,
    /// When it last changed (seconds since the Unix epoch).
    updated_at: i64,
    /// The datasets it reads.
    datasets: Vec<JobDatasetInfo>,
    /// The approvals that count now.
    approvals: Vec<ApprovalInfo>,
    /// Whether every dataset's policy is met (and none was deleted).
    approved: bool,
    /// Its state changes, oldest first.
    transitions: Vec<Transition>,
}

/// A dataset a job reads, and where its policy stands.
#[derive(Serialize, ToSchema)]
struct JobDatasetInfo {
    /// The dataset's id.
    id: String,
    /// Its org.
    org: String,
    /// Its workspace.
    workspace: String,
    /// Its name.
    name: String,
    /// Its approval policy.
    #[schema(schema_with = crate::openapi::approval_policy)]
    policy: ApprovalPolicy,
    /// Whether it was deleted since.
    deleted: bool,
    /// Where its policy stands.
    approval: Option<policy::Status>,
}

/// An approval that counts.
#[derive(Serialize, ToSchema)]
struct ApprovalInfo {
    /// Its id.
    id: String,
    /// The approver's user name.
    user: String,
    /// The org they approved for.
    org: String,
    /// The role they approved in.
    #[schema(schema_with = crate::openapi::org_role)]
    role: OrgRole,
    /// When (seconds since the Unix epoch).
    at: i64,
}

/// A job's state change.
#[derive(Serialize, ToSchema)]
struct Transition {
    /// Its position in the job's history, from 1.
    seq: i64,
    /// The state before (none for the first).
    #[schema(value_type = Option<JobState>)]
    from: Option<String>,
    /// The state after.
    #[schema(value_type = JobState)]
    to: String,
    /// Who moved it (`user:…`, `service:…` or `hub`).
    actor: String,
    /// Why, if said.
    reason: Option<String>,
    /// When (seconds since the Unix epoch).
    at: i64,
}

/// A job the caller may see (a member of its org, or, once submitted, of an org owning one of
/// its datasets).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "describe_job",
    params(("id" = String, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = JobDetail),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
        (status = 404, description = "No such job, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
    )
)]
async fn describe(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobDetail>> {
    let user = caller.user()?;
    let (job, datasets) = visible_job(&hub, user, &id).await?;
    job_detail(&hub, &job, &datasets).await.map(Json)
}

async fn job_detail(hub: &Hub, job: &Job, datasets: &[JobDataset]) -> ApiResult<JobDetail> {
    let mut conn = hub.db.acquire().await?;
    let approvals = load_approvals(&mut conn, &job.id).await?;
    let (status, all) = statuses(datasets, &approvals);
    let transitions = sqlx::query(
        "SELECT seq, from_state, to_state, actor, reason, at FROM job_transitions WHERE job_id = $1 ORDER BY seq",
    )
    .bind(&job.id)
    .fetch_all(&mut *conn)
    .await?;
    let mut trail = Vec::new();
    for t in transitions {
        trail.push(Transition {
            seq: t.try_get("seq")?,
            from: t.try_get("from_state")?,
            to: t.try_get("to_state")?,
            actor: t.try_get("actor")?,
            reason: t.try_get("reason")?,
            at: t.try_get("at")?,
        });
    }
    let mut status: BTreeMap<String, policy::Status> = status.into_iter().collect();
    Ok(JobDetail {
        id: job.id.clone(),
        org: job.org.clone(),
        workspace: job.workspace.clone(),
        name: job.name.clone(),
        created_by: job.creator.clone(),
        state: job.state,
        recipients: job.recipients.clone(),
        created_at: job.created_at,
        updated_at: job.updated_at,
        datasets: datasets
            .iter()
            .map(|d| JobDatasetInfo {
                id: d.id.clone(),
                org: d.org.clone(),
                workspace: d.workspace.clone(),
                name: d.name.clone(),
                policy: d.policy.clone(),
                deleted: d.deleted,
                approval: status.remove(&d.id),
            })
            .collect(),
        approvals: approvals
            .into_iter()
            .map(|a| ApprovalInfo {
                id: a.id,
                user: a.username,
                org: a.org,
                role: a.role,
                at: a.at,
            })
            .collect(),
        approved: all,
        transitions: trail,
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListJobs {
    /// Only jobs in this state.
    #[serde(default)]
    #[param(value_type = Option<JobState>)]
    state: Option<String>,
    /// Only jobs of this org.
    #[serde(default)]
    #[param(example = "acme")]
    org: Option<String>,
}

/// A job, as listed.
#[derive(Serialize, ToSchema)]
struct JobSummary {
    /// Its id.
    id: String,
    /// The org it runs for.
    org: String,
    /// Its name.
    name: String,
    /// Its state.
    #[schema(value_type = JobState)]
    state: String,
    /// When it last changed (seconds since the Unix epoch).
    updated_at: i64,
}

/// Jobs.
#[derive(Serialize, ToSchema)]
struct JobList {
    /// At most 500, the most recently changed first.
    jobs: Vec<JobSummary>,
}

/// The jobs the caller may see, the most recently changed first (at most 500).
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "list_jobs",
    params(ListJobs),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The jobs", body = JobList),
        (status = 400, description = "The state is unknown (`invalid_state`), or a parameter \
         is malformed (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
    )
)]
async fn list(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(q): Query<ListJobs>,
) -> ApiResult<Json<JobList>> {
    let user = caller.user()?;
    if let Some(s) = &q.state {
        if JobState::parse(s).is_none() {
            return Err(ApiError::bad_request(
                "invalid_state",
                format!("unknown job state {s:?}"),
            ));
        }
    }
    let rows = sqlx::query(
        "SELECT j.id, j.org_id, j.name, j.state, j.updated_at FROM jobs j WHERE \
         ($1 = 1 OR j.org_id IN (SELECT org_id FROM memberships WHERE user_id = $2) \
          OR (j.state <> 'draft' AND j.id IN (SELECT jd.job_id FROM job_datasets jd JOIN datasets d ON d.id = jd.dataset_id \
               WHERE d.org_id IN (SELECT org_id FROM memberships WHERE user_id = $2)))) \
         AND ($3 = '' OR j.state = $3) AND ($4 = '' OR j.org_id = $4) \
         ORDER BY j.updated_at DESC, j.id LIMIT 500",
    )
    .bind(i64::from(user.is_admin))
    .bind(&user.id)
    .bind(q.state.unwrap_or_default())
    .bind(q.org.unwrap_or_default())
    .fetch_all(&hub.db)
    .await?;
    let mut jobs = Vec::new();
    for r in rows {
        jobs.push(JobSummary {
            id: r.try_get("id")?,
            org: r.try_get("org_id")?,
            name: r.try_get("name")?,
            state: r.try_get("state")?,
            updated_at: r.try_get("updated_at")?,
        });
    }
    Ok(Json(JobList { jobs }))
}

/// Whether `user` may act on `job` as its owner: its creator, or an owner/admin of its org.
async fn require_job_owner(hub: &Hub, user: &User, job: &Job) -> ApiResult<()> {
    if user.id == job.created_by {
        return Ok(());
    }
    auth::require_role(hub, user, &job.org, &MANAGERS)
        .await
        .map(|_| ())
}

/// Submits a draft for approval (its creator, or an owner or admin of its org).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/submit",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Submitted", body = JobRef),
        (status = 403, description = "The caller may not act on this job as its owner \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such job, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not a draft (`invalid_transition`), or a \
         dataset was deleted (`dataset_deleted`)", body = ErrorBody),
    )
)]
async fn submit(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobRef>> {
    let user = caller.user()?;
    let (job, _) = visible_job(&hub, user, &id).await?;
    require_job_owner(&hub, user, &job).await?;
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), &id).await?;
    submit_in(&mut w, &mut job, &caller.actor()).await?;
    w.commit().await?;
    Ok(JobRef::of(&job))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct Reason {
    /// Why (at most 1000 bytes).
    #[serde(default)]
    reason: Option<String>,
}

fn check_reason(r: &Option<String>) -> ApiResult<Option<&str>> {
    match r.as_deref() {
        Some(s) if s.len() > 1000 => Err(ApiError::bad_request(
            "invalid_reason",
            "reason is longer than 1000 bytes",
        )),
        other => Ok(other),
    }
}

/// Cancels a job that has not finished (its creator, or an owner or admin of its org).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body(content = Option<Reason>, description = "Why (optional; the body may be empty)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled", body = JobRef),
        (status = 400, description = "The reason is too long (`invalid_reason`), or the body is \
         malformed (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller may not act on this job as its owner \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such job, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job has finished (`invalid_transition`)",
         body = ErrorBody),
    )
)]
async fn cancel(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(reason): OptionalJson<Reason>,
) -> ApiResult<Json<JobRef>> {
    let user = caller.user()?;
    let reason = check_reason(&reason.reason)?;
    let (job, _) = visible_job(&hub, user, &id).await?;
    require_job_owner(&hub, user, &job).await?;
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), &id).await?;
    transition(&mut w, &mut job, Action::Cancel, &caller.actor(), reason).await?;
    w.notify(Event {
        kind: "job.cancelled",
        org: job.org.clone(),
        job_id: Some(job.id.clone()),
        users: vec![job.created_by.clone()],
        body: json!({"job": job.id, "name": job.name, "by": user.username, "reason": reason}),
    })
    .await?;
    w.commit().await?;
    Ok(JobRef::of(&job))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    /// The role to approve in (default: the first of the caller's roles that counts).
    #[serde(default)]
    #[schema(example = "approver")]
    role: Option<String>,
}

/// An approval recorded.
#[derive(Serialize, ToSchema)]
struct ApprovalAdded {
    /// The org approved for.
    org: String,
    /// The role approved in.
    #[schema(schema_with = crate::openapi::org_role)]
    role: OrgRole,
}

/// A job after an approval.
#[derive(Serialize, ToSchema)]
struct ApproveAnswer {
    /// The job's id.
    id: String,
    /// Its state now (`approved` once every policy is met).
    state: JobState,
    /// The approvals recorded, one per org where the caller holds a counting role.
    approvals: Vec<ApprovalAdded>,
}

/// The roles of `user` that count for some dataset of `job`, per org.
async fn counting_roles(
    hub: &Hub,
    user: &User,
    datasets: &[JobDataset],
) -> ApiResult<BTreeMap<String, Vec<OrgRole>>> {
    let mut out: BTreeMap<String, Vec<OrgRole>> = BTreeMap::new();
    let orgs: BTreeSet<&str> = datasets.iter().map(|d| d.org.as_str()).collect();
    for org in orgs {
        let held = auth::roles_in(&hub.db, &user.id, org).await?;
        let listed: BTreeSet<OrgRole> = datasets
            .iter()
            .filter(|d| d.org == org)
            .flat_map(|d| d.policy.roles.iter().copied())
            .collect();
        let counting: Vec<OrgRole> = held.into_iter().filter(|r| listed.contains(r)).collect();
        if !counting.is_empty() {
            out.insert(org.to_owned(), counting);
        }
    }
    Ok(out)
}

/// Approves a job, once per org whose datasets' policies count one of the caller's roles (never
/// one's own job).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/approve",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body(content = Option<ApproveRequest>,
                 description = "The role to approve in (optional; the body may be empty)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Approved", body = ApproveAnswer),
        (status = 400, description = "The role is unknown (`invalid_role`), or the body is \
         malformed (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller created the job (`self_approval`), holds no \
         counting role (`not_an_approver`), or is a service account (`forbidden`)",
         body = ErrorBody),
        (status = 404, description = "No such job, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
        (status = 409, description = "Approvals are closed (`approvals_closed`), or the caller \
         approved already (`already_approved`)", body = ErrorBody),
    )
)]
async fn approve(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<ApproveRequest>,
) -> ApiResult<Json<ApproveAnswer>> {
    let user = caller.user()?;
    let (job, datasets) = visible_job(&hub, user, &id).await?;
    let refuse = |why: String, code: &'static str| {
        let hub = hub.clone();
        let actor = caller.actor();
        let org = job.org.clone();
        let id = id.clone();
        async move {
            hub.audit_refusal(
                AuditRecord::denied(actor, "job.approve", &why)
                    .org(org)
                    .target(id),
            )
            .await;
            ApiError::new(StatusCode::FORBIDDEN, code, why)
        }
    };
    if user.id == job.created_by {
        return Err(refuse(
            format!(
                "user {:?} submitted job {id:?} and cannot approve it (separation of duties)",
                user.username
            ),
            "self_approval",
        )
        .await);
    }
    let counting = counting_roles(&hub, user, &datasets).await?;
    let wanted = req.role.as_deref().map(auth::parse_role).transpose()?;
    // One approval per org in which the user holds a counting role.
    let mut chosen: Vec<(String, OrgRole)> = Vec::new();
    for (org, roles) in &counting {
        let role = match wanted {
            Some(w) if roles.contains(&w) => Some(w),
            Some(_) => None,
            None => roles.first().copied(),
        };
        if let Some(role) = role {
            chosen.push((org.clone(), role));
        }
    }
    if chosen.is_empty() {
        let orgs: BTreeSet<&str> = datasets.iter().map(|d| d.org.as_str()).collect();
        return Err(refuse(
            format!(
                "user {:?} holds no role{} that the policies of job {id:?}'s datasets (orgs {orgs:?}) count",
                user.username,
                wanted.map(|r| format!(" {:?}", role_name(r))).unwrap_or_default()
            ),
            "not_an_approver",
        )
        .await);
    }
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), &id).await?;
    if !job.state.approvals_open() {
        return Err(ApiError::conflict(
            "approvals_closed",
            format!("job {id:?} is {}; approvals are open while pending_approval, approved or scheduled", job.state.as_str()),
        ));
    }
    let now = crate::db::now();
    let mut added = Vec::new();
    for (org, role) in &chosen {
        let existing = sqlx::query(
            "SELECT 1 AS x FROM approvals WHERE job_id = $1 AND user_id = $2 AND org_id = $3 AND withdrawn_at IS NULL",
        )
        .bind(&id)
        .bind(&user.id)
        .bind(org)
        .fetch_optional(w.conn())
        .await?;
        if existing.is_some() {
            continue;
        }
        sqlx::query("INSERT INTO approvals (id, job_id, user_id, org_id, role, at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(crate::db::new_id("ap-"))
            .bind(&id)
            .bind(&user.id)
            .bind(org)
            .bind(role_name(*role))
            .bind(now)
            .execute(w.conn())
            .await?;
        added.push(ApprovalAdded {
            org: org.clone(),
            role: *role,
        });
    }
    if added.is_empty() {
        return Err(ApiError::conflict(
            "already_approved",
            format!("user {:?} has already approved job {id:?}", user.username),
        ));
    }
    w.audit(
        AuditRecord::ok(caller.actor(), "job.approve")
            .org(&job.org)
            .target(&id)
            .detail(json!({"approvals": added})),
    )
    .await?;
    w.notify(Event {
        kind: "approval.granted",
        org: job.org.clone(),
        job_id: Some(id.clone()),
        users: vec![job.created_by.clone()],
        body: json!({"job": id, "name": job.name, "by": user.username, "approvals": added}),
    })
    .await?;
    reevaluate(&mut w, &mut job).await?;
    w.commit().await?;
    Ok(Json(ApproveAnswer {
        id,
        state: job.state,
        approvals: added,
    }))
}

/// Withdraws the caller's approvals of a job that has not started.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/withdraw",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Withdrawn", body = JobRef),
        (status = 403, description = "The caller is a service account (`forbidden`)",
         body = ErrorBody),
        (status = 404, description = "No such job, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
        (status = 409, description = "Approvals are closed (`approvals_closed`), or the caller \
         has none (`no_approval`)", body = ErrorBody),
    )
)]
async fn withdraw(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobRef>> {
    let user = caller.user()?;
    visible_job(&hub, user, &id).await?;
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), &id).await?;
    if !job.state.approvals_open() {
        return Err(ApiError::conflict(
            "approvals_closed",
            format!(
                "job {id:?} is {}; approvals can be withdrawn only before it runs",
                job.state.as_str()
            ),
        ));
    }
    let n = sqlx::query("UPDATE approvals SET withdrawn_at = $1 WHERE job_id = $2 AND user_id = $3 AND withdrawn_at IS NULL")
        .bind(crate::db::now())
        .bind(&id)
        .bind(&user.id)
        .execute(w.conn())
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::conflict(
            "no_approval",
            format!(
                "user {:?} has no approval of job {id:?} to withdraw",
                user.username
            ),
        ));
    }
    w.audit(
        AuditRecord::ok(caller.actor(), "job.withdraw")
            .org(&job.org)
            .target(&id),
    )
    .await?;
    w.notify(Event {
        kind: "approval.withdrawn",
        org: job.org.clone(),
        job_id: Some(id.clone()),
        users: vec![job.created_by.clone()],
        body: json!({"job": id, "name": job.name, "by": user.username}),
    })
    .await?;
    reevaluate(&mut w, &mut job).await?;
    w.commit().await?;
    Ok(JobRef::of(&job))
}

/// Rejects a job (an approver of one of its datasets).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/reject",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body(content = Option<Reason>, description = "Why (optional; the body may be empty)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejected", body = JobRef),
        (status = 400, description = "The reason is too long (`invalid_reason`), or the body is \
         malformed (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller approves none of its datasets \
         (`not_an_approver`), or is a service account (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such job, or not one the caller may see \
         (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not pending approval \
         (`invalid_transition`)", body = ErrorBody),
    )
)]
async fn reject(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(reason): OptionalJson<Reason>,
) -> ApiResult<Json<JobRef>> {
    let user = caller.user()?;
    let reason = check_reason(&reason.reason)?;
    let (job, datasets) = visible_job(&hub, user, &id).await?;
    if counting_roles(&hub, user, &datasets).await?.is_empty() {
        let why = format!(
            "user {:?} is not an approver of any dataset of job {id:?}",
            user.username
        );
        hub.audit_refusal(
            AuditRecord::denied(caller.actor(), "job.reject", &why)
                .org(&job.org)
                .target(&id),
        )
        .await;
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not_an_approver", why));
    }
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), &id).await?;
    transition(&mut w, &mut job, Action::Reject, &caller.actor(), reason).await?;
    w.notify(Event {
        kind: "job.rejected",
        org: job.org.clone(),
        job_id: Some(id.clone()),
        users: vec![job.created_by.clone()],
        body: json!({"job": id, "name": job.name, "by": user.username, "reason": reason}),
    })
    .await?;
    w.commit().await?;
    Ok(JobRef::of(&job))
}

// The workload manager's side.

/// A job in the workload manager's queue.
#[derive(Serialize, ToSchema)]
struct QueuedJob {
    /// Its id.
    id: String,
    /// Its org.
    org: String,
    /// Its state: `approved`, `scheduled` or `running`.
    #[schema(value_type = JobState)]
    state: String,
    /// When it last changed (seconds since the Unix epoch).
    updated_at: i64,
}

/// The workload manager's queue.
#[derive(Serialize, ToSchema)]
struct Queue {
    /// At most 500, the longest waiting first.
    jobs: Vec<QueuedJob>,
}

/// The jobs approved, scheduled or running, the longest waiting first (scheduler service
/// accounts).
#[utoipa::path(
    get,
    path = "/v1/queue",
    tag = "scheduler",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The queue", body = Queue),
        (status = 403, description = "The caller is not a scheduler service account \
         (`forbidden`)", body = ErrorBody),
    )
)]
async fn queue(State(hub): State<Arc<Hub>>, caller: Caller) -> ApiResult<Json<Queue>> {
    caller.service(SCHEDULER)?;
    let rows = sqlx::query(
        "SELECT id, org_id, state, updated_at FROM jobs WHERE state IN ('approved', 'scheduled', 'running') \
         ORDER BY updated_at, id LIMIT 500",
    )
    .fetch_all(&hub.db)
    .await?;
    let mut jobs = Vec::new();
    for r in rows {
        jobs.push(QueuedJob {
            id: r.try_get("id")?,
            org: r.try_get("org_id")?,
            state: r.try_get("state")?,
            updated_at: r.try_get("updated_at")?,
        });
    }
    Ok(Json(Queue { jobs }))
}

async fn scheduler_step(
    hub: &Hub,
    caller: &Caller,
    id: &str,
    action: Action,
    reason: Option<&str>,
) -> ApiResult<Job> {
    caller.service(SCHEDULER)?;
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), id).await?;
    transition(&mut w, &mut job, action, &caller.actor(), reason).await?;
    w.commit().await?;
    Ok(job)
}

/// Places an approved job on an executor (scheduler service accounts).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/schedule",
    tag = "scheduler",
    params(("id" = String, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Scheduled", body = JobRef),
        (status = 403, description = "The caller is not a scheduler service account \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such job (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not approved (`invalid_transition`)",
         body = ErrorBody),
    )
)]
async fn schedule(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobRef>> {
    let job = scheduler_step(&hub, &caller, &id, Action::Schedule, None).await?;
    Ok(JobRef::of(&job))
}

/// Puts a scheduled or running job back in the queue (its executor was lost; scheduler
/// service accounts).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/requeue",
    tag = "scheduler",
    params(("id" = String, Path, description = "The job's id")),
    request_body(content = Option<Reason>, description = "Why (optional; the body may be empty)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Back in the queue", body = JobRef),
        (status = 400, description = "The reason is too long (`invalid_reason`), or the body is \
         malformed (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not a scheduler service account \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such job (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is neither scheduled nor running \
         (`invalid_transition`)", body = ErrorBody),
    )
)]
async fn requeue(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(reason): OptionalJson<Reason>,
) -> ApiResult<Json<JobRef>> {
    let job = scheduler_step(
        &hub,
        &caller,
        &id,
        Action::Requeue,
        check_reason(&reason.reason)?,
    )
    .await?;
    Ok(JobRef::of(&job))
}

/// A dataset as the executor needs it.
#[derive(Serialize, ToSchema)]
struct GrantedDataset {
    /// Its id.
    id: String,
    /// Its org.
    org: String,
    /// Where its encrypted files are.
    location: String,
    /// The id of its data key.
    key_id: String,
}

/// A started job: the grant for the KMS and what the executor runs.
#[derive(Serialize, ToSchema)]
struct Started {
    /// The job's id.
    id: String,
    /// Its state (`running`).
    state: JobState,
    /// The job grant (a JWT the KMS checks).
    grant: String,
    /// When the grant expires (seconds since the Unix epoch).
    grant_expires_at: u64,
    /// The encrypted definition, standard base64.
    definition: String,
    /// Who receives its results.
    recipients: Vec<RecipientSpec>,
    /// The datasets it reads.
    datasets: Vec<GrantedDataset>,
}

/// Starts a scheduled job: a final recount, then the job grant for the KMS and the encrypted
/// definition for the executor (scheduler service accounts).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/start",
    tag = "scheduler",
    params(("id" = String, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Started", body = Started),
        (status = 403, description = "The caller is not a scheduler service account \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such job (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not scheduled (`invalid_transition`), or a \
         policy is no longer met (`policy_unmet`; the job went back to approval)",
         body = ErrorBody),
    )
)]
async fn start(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Started>> {
    caller.service(SCHEDULER)?;
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), &id).await?;
    let datasets = load_datasets(w.conn(), &id).await?;
    let approvals = load_approvals(w.conn(), &id).await?;
    let (status, all) = statuses(&datasets, &approvals);
    if job.state == JobState::Scheduled && !all {
        // Not met any more (a role was taken away since): back to approval, no grant.
        transition(
            &mut w,
            &mut job,
            Action::PolicyUnmet,
            "hub",
            Some("a policy is no longer met at start"),
        )
        .await?;
        w.commit().await?;
        let unmet: Vec<&String> = status
            .iter()
            .filter(|(_, s)| !s.met)
            .map(|(d, _)| d)
            .collect();
        return Err(ApiError::conflict(
            "policy_unmet",
            format!("job {id:?} cannot start: the approval policies of datasets {unmet:?} are no longer met"),
        ));
    }
    transition(&mut w, &mut job, Action::Start, &caller.actor(), None).await?;
    let now = u64::try_from(crate::db::now()).unwrap_or(0);
    let bad = |what: &str, e: String| ApiError::internal(what, e);
    let mut grant_datasets = Vec::new();
    for d in &datasets {
        grant_datasets.push(GrantDataset {
            id: d.id.clone(),
            org: OrgId::new(&d.org).map_err(|e| bad("stored dataset org", e.to_string()))?,
            key_id: KeyId::parse(&d.key_id).map_err(|e| bad("stored key id", e.to_string()))?,
            policy: d.policy.clone(),
        });
    }
    let mut recipients = Vec::new();
    for r in &job.recipients {
        recipients.push(Recipient {
            org: OrgId::new(&r.org).map_err(|e| bad("stored recipient", e.to_string()))?,
            workspace: r.workspace.clone(),
        });
    }
    let mut grant_approvals = Vec::new();
    for a in &approvals {
        grant_approvals.push(Approval {
            user: a.username.clone(),
            org: OrgId::new(&a.org).map_err(|e| bad("stored approval org", e.to_string()))?,
            role: a.role,
            at: u64::try_from(a.at).unwrap_or(0).min(now),
        });
    }
    let jti = crate::db::new_id("jg-");
    let claims = JobGrantClaims {
        iss: hub.keys.issuer().to_owned(),
        sub: job.creator.clone(),
        aud: crate::keys::HubKeys::audience(),
        iat: now,
        exp: now + JOB_GRANT_LIFETIME_SECS,
        nbf: None,
        jti: jti.clone(),
        job: job.id.clone(),
        org: OrgId::new(&job.org).map_err(|e| bad("stored job org", e.to_string()))?,
        datasets: grant_datasets,
        recipients,
        approvals: grant_approvals,
    };
    let grant = hub
        .keys
        .sign_job_grant(&claims)
        .map_err(|e| ApiError::internal("sign job grant", e))?;
    let definition: String = sqlx::query("SELECT definition FROM jobs WHERE id = $1")
        .bind(&id)
        .fetch_one(w.conn())
        .await?
        .try_get("definition")?;
    w.audit(
        AuditRecord::ok(caller.actor(), "job.grant")
            .org(&job.org)
            .target(&id)
            .detail(json!({"jti": jti, "exp": claims.exp, "approvals": claims.approvals.len()})),
    )
    .await?;
    w.commit().await?;
    Ok(Json(Started {
        id,
        state: job.state,
        grant,
        grant_expires_at: claims.exp,
        definition,
        recipients: job.recipients,
        datasets: datasets
            .into_iter()
            .map(|d| GrantedDataset {
                id: d.id,
                org: d.org,
                location: d.location,
                key_id: d.key_id,
            })
            .collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FinishRequest {
    /// How it ended.
    #[schema(schema_with = outcome)]
    outcome: String,
    /// What happened (at most 1000 bytes).
    #[serde(default)]
    detail: Option<String>,
}

/// The schema of a finished job's outcome.
fn outcome() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["succeeded", "failed"]))
        .description(Some("How the job ended"))
}

/// Records how a running job ended (scheduler service accounts).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/finish",
    tag = "scheduler",
    params(("id" = String, Path, description = "The job's id")),
    request_body = FinishRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Finished", body = JobRef),
        (status = 400, description = "The outcome is unknown (`invalid_outcome`), the detail \
         too long (`invalid_reason`), or the body malformed (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "The caller is not a scheduler service account \
         (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such job (`not_found`)", body = ErrorBody),
        (status = 409, description = "The job is not running (`invalid_transition`)",
         body = ErrorBody),
    )
)]
async fn finish(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<FinishRequest>,
) -> ApiResult<Json<JobRef>> {
    let action = match req.outcome.as_str() {
        "succeeded" => Action::Succeed,
        "failed" => Action::Fail,
        other => {
            return Err(ApiError::bad_request(
                "invalid_outcome",
                format!("outcome {other:?} must be \"succeeded\" or \"failed\""),
            ))
        }
    };
    let detail = check_reason(&req.detail)?;
    caller.service(SCHEDULER)?;
    let mut w = hub.writer().await?;
    let mut job = load_job(w.conn(), &id).await?;
    transition(&mut w, &mut job, action, &caller.actor(), detail).await?;
    // The submitter and the members of every recipient workspace hear it.
    let mut users = BTreeSet::from([job.created_by.clone()]);
    for r in &job.recipients {
        let rows = sqlx::query(
            "SELECT user_id FROM workspace_members WHERE org_id = $1 AND workspace = $2",
        )
        .bind(&r.org)
        .bind(&r.workspace)
        .fetch_all(w.conn())
        .await?;
        for row in rows {
            users.insert(row.try_get::<String, _>("user_id")?);
        }
    }
    let kind = if action == Action::Succeed {
        "job.succeeded"
    } else {
        "job.failed"
    };
    w.notify(Event {
        kind,
        org: job.org.clone(),
        job_id: Some(id.clone()),
        users: users.into_iter().collect(),
        body: json!({"job": id, "name": job.name, "detail": detail}),
    })
    .await?;
    w.commit().await?;
    Ok(JobRef::of(&job))
}
