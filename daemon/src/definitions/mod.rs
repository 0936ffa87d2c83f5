//! Workflow definitions of a tenant: validate, plan, apply, read, delete.
//!
//! Every call is scoped to the caller's tenant; another tenant's workflow answers NOT_FOUND
//! exactly as a missing one does.

pub use crate::model::definition as model;

use std::sync::Arc;

use chrono::Utc;

use crate::auth::{self, Caller, Scope};
use crate::connectors::Registry;
use crate::model::tenant::{Page, PageRequest, TenantRef};
use crate::store::{self, Store};
use crate::workflow::plan::{Change, diff};
use crate::workflow::{self, Loaded, Problem, WorkflowSpec};
use model::{Definition, DefinitionSummary, NewVersion, VersionInfo};

/// Errors of definition management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workflow file has problems; every one is listed.
    #[error("{file}: {} problem(s)", problems.len())]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A tenant or installation cap.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The store failed; its error is the cause, and says the kind.
    #[error("{}", crate::error::StoreMessage(.0))]
    Store(#[from] store::Error),
}

impl crate::error::ServiceError for Error {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        match self {
            Error::Invalid { .. } | Error::InvalidArgument { .. } => K::InvalidArgument,
            Error::NotFound(_) => K::NotFound,
            Error::PermissionDenied(_) => K::PermissionDenied,
            Error::ResourceExhausted(_) => K::ResourceExhausted,
            Error::Unavailable(_) => K::Unavailable,
            Error::Internal(_) => K::Internal,
            Error::Store(err) => crate::error::ServiceError::kind(err),
        }
    }
}

auth::impl_from_auth_error!(Error);

type Result<T, E = Error> = std::result::Result<T, E>;

/// What applying a file would change.
#[derive(Debug, Clone)]
pub struct PlanResult {
    pub name: String,
    /// The latest stored version, 0 when none.
    pub current_version: i64,
    pub changed: bool,
    pub content_hash: String,
    pub changes: Vec<Change>,
    /// See [`Checked::warnings`].
    pub warnings: Vec<Problem>,
}

/// The outcome of an apply.
#[derive(Debug, Clone)]
pub struct ApplyResult {
    pub definition: Definition,
    pub created: bool,
    pub changes: Vec<Change>,
    /// See [`Checked::warnings`].
    pub warnings: Vec<Problem>,
}

/// A valid file, and what in it will not work as written.
#[derive(Debug, Clone)]
pub struct Checked {
    pub loaded: Loaded,
    /// The file's own warnings (triggers that do not fire, undeclared inputs) and the
    /// tenant's: a `credential` naming a secret the tenant does not have, or one of a type
    /// the action does not take. Ordered by position.
    pub warnings: Vec<Problem>,
}

/// Loads and validates a file, naming it `file` in problems (on a thread of its own).
pub fn load(source: &str, file: &str) -> Result<Loaded> {
    workflow::load(source).map_err(|problems| Error::Invalid {
        file: file.to_owned(),
        problems,
    })
}

/// Files of one tenant being checked (Validate, Plan and Apply) at most, running or waiting
/// for their turn in the CPU pool (where a tenant's checks run on all threads but one);
/// more are refused until one ends.
pub const MAX_CHECKS_PER_TENANT: usize = 32;

/// The name problems are reported under when the request names no file.
pub fn file_name(filename: &str) -> &str {
    if filename.is_empty() {
        "<input>"
    } else {
        filename
    }
}

/// Workflow definition management.
#[derive(Clone)]
pub struct Definitions {
    store: Arc<dyn Store>,
    /// `MANTLE_MAX_STEPS_PER_WORKFLOW`.
    max_steps: Option<u32>,
    /// Where files are parsed: off the async runtime, tenants taking turns.
    pool: crate::cpu::CpuPool,
    /// Files being checked now, by tenant.
    checking: Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, usize>>>,
    /// The actions steps may name: the engine's.
    actions: Arc<Registry>,
}

/// One file being checked for a tenant; counted until dropped.
struct Checking {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<uuid::Uuid, usize>>>,
    tenant: uuid::Uuid,
}

impl Drop for Checking {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

impl Definitions {
    pub fn new(
        store: Arc<dyn Store>,
        max_steps: Option<u32>,
        pool: crate::cpu::CpuPool,
        actions: Arc<Registry>,
    ) -> Self {
        Definitions {
            store,
            max_steps,
            pool,
            checking: Arc::default(),
            actions,
        }
    }

    /// Parses and validates `source` in the CPU pool, in the tenant's turn; refuses when the
    /// tenant has [`MAX_CHECKS_PER_TENANT`] files being checked already.
    async fn check(&self, tenant: &TenantRef, source: &str, filename: &str) -> Result<Loaded> {
        let _checking = {
            let mut counts = self.checking.lock().unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(tenant.id).or_default();
            if *n >= MAX_CHECKS_PER_TENANT {
                metrics::counter!("mantle_cap_rejections_total", "tenant_id" => tenant.id.to_string(), "kind" => "definition_checks").increment(1);
                return Err(Error::ResourceExhausted(format!(
                    "the tenant has {n} workflow files being checked or waiting to be \
                     (validate, plan or apply); at most {MAX_CHECKS_PER_TENANT}: retry when \
                     one has finished"
                )));
            }
            *n += 1;
            Checking {
                counts: self.checking.clone(),
                tenant: tenant.id,
            }
        };
        let source = source.to_owned();
        let file = file_name(filename).to_owned();
        let actions = self.actions.clone();
        self.pool
            .run(tenant.id, move || {
                workflow::load::load_here(&source, &actions)
                    .map_err(|problems| Error::Invalid { file, problems })
            })
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
    }

    /// Refuses a workflow with more steps than the tenant (or the installation) allows.
    async fn check_steps(&self, tenant: &TenantRef, loaded: &Loaded) -> Result<()> {
        let settings = self.store.get_tenant_by_id(tenant.id).await?.settings;
        let limits = crate::engine::Limits {
            max_steps_per_workflow: self.max_steps,
            max_runtime_minutes: None,
            max_concurrent_executions: None,
        };
        limits
            .check_steps(&settings, loaded.spec.steps.len())
            .map_err(|e| {
                metrics::counter!("mantle_cap_rejections_total", "tenant_id" => tenant.id.to_string(), "kind" => "max_steps_per_workflow").increment(1);
                Error::ResourceExhausted(e)
            })
    }

    fn tenant(caller: &Caller, scope: Scope) -> Result<&TenantRef> {
        Ok(caller.acting_tenant(scope)?)
    }

    /// The actions a step may name (they are the installation's, the same for every
    /// tenant). Needs `definitions:read`.
    pub fn actions(&self, caller: &Caller) -> Result<&Registry> {
        caller.require(Scope::DefinitionsRead)?;
        Ok(&self.actions)
    }

    pub async fn validate(&self, caller: &Caller, source: &str, filename: &str) -> Result<Checked> {
        let tenant = Self::tenant(caller, Scope::DefinitionsRead)?;
        let loaded = self.check(tenant, source, filename).await?;
        let warnings = self.warnings(tenant, &loaded).await?;
        Ok(Checked { loaded, warnings })
    }

    /// The file's warnings and the tenant's (see [`Checked::warnings`]).
    async fn warnings(&self, tenant: &TenantRef, loaded: &Loaded) -> Result<Vec<Problem>> {
        let mut warnings = loaded.warnings.clone();
        let mut kinds: std::collections::BTreeMap<&str, Option<String>> = Default::default();
        for c in &loaded.credentials {
            let kind = match kinds.get(c.name.as_str()) {
                Some(kind) => kind.clone(),
                None => {
                    let kind = match self.store.get_secret(tenant.id, &c.name).await {
                        Ok(secret) => Some(secret.meta.kind),
                        Err(store::Error::NotFound(_)) => None,
                        Err(e) => return Err(e.into()),
                    };
                    kinds.insert(&c.name, kind.clone());
                    kind
                }
            };
            let message = match kind {
                None => format!(
                    "tenant {:?} has no secret {:?}: the step will fail until it is created \
                     (mantlectl secrets create {} --type {} ...)",
                    tenant.name, c.name, c.name, c.types[0].name
                ),
                Some(kind) if !c.types.iter().any(|t| t.name == kind) => format!(
                    "secret {:?} has type {kind}; {} takes {}",
                    c.name,
                    c.action,
                    c.types
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(_) => continue,
            };
            warnings.push(Problem {
                pos: c.pos,
                path: c.path.clone(),
                message,
            });
        }
        warnings.sort_by_key(|p| (p.pos.line, p.pos.column));
        Ok(warnings)
    }

    pub async fn plan(&self, caller: &Caller, source: &str, filename: &str) -> Result<PlanResult> {
        let tenant = Self::tenant(caller, Scope::DefinitionsRead)?;
        let loaded = self.check(tenant, source, filename).await?;
        let warnings = self.warnings(tenant, &loaded).await?;
        let current = self.latest(tenant, &loaded.spec.name).await?;
        let old_spec = current.as_ref().map(parse_spec).transpose()?;
        Ok(PlanResult {
            warnings,
            name: loaded.spec.name.clone(),
            current_version: current.as_ref().map_or(0, |d| d.version),
            changed: current
                .as_ref()
                .is_none_or(|d| d.content_hash != loaded.content_hash),
            content_hash: loaded.content_hash.clone(),
            changes: diff(old_spec.as_ref(), &loaded.spec),
        })
    }

    pub async fn apply(
        &self,
        caller: &Caller,
        source: &str,
        filename: &str,
    ) -> Result<ApplyResult> {
        let tenant = Self::tenant(caller, Scope::DefinitionsWrite)?;
        let loaded = self.check(tenant, source, filename).await?;
        self.check_steps(tenant, &loaded).await?;
        let warnings = self.warnings(tenant, &loaded).await?;
        let before = self.latest(tenant, &loaded.spec.name).await?;
        let old_spec = before.as_ref().map(parse_spec).transpose()?;
        let (definition, created) = self
            .store
            .apply_definition(&NewVersion {
                tenant_id: tenant.id,
                name: loaded.spec.name.clone(),
                content_hash: loaded.content_hash.clone(),
                description: loaded.spec.description.clone(),
                spec_json: loaded.normalized.clone(),
                source: source.to_owned(),
                now: Utc::now(),
                triggers: loaded.spec.triggers.iter().map(new_trigger).collect(),
            })
            .await?;
        let changes = if created {
            diff(old_spec.as_ref(), &loaded.spec)
        } else {
            Vec::new()
        };
        if created {
            tracing::info!(
                tenant = %tenant.name,
                workflow = %definition.name,
                version = definition.version,
                key_id = %caller.key_id,
                "workflow version applied"
            );
        }
        Ok(ApplyResult {
            definition,
            created,
            changes,
            warnings,
        })
    }

    /// Applies version `to_version`'s YAML again as a new version.
    pub async fn rollback(
        &self,
        caller: &Caller,
        name: &str,
        to_version: i64,
    ) -> Result<ApplyResult> {
        let tenant = Self::tenant(caller, Scope::DefinitionsWrite)?;
        check_name(name)?;
        if to_version < 1 {
            return Err(Error::InvalidArgument {
                field: "to_version",
                message: "must be a positive version number".to_owned(),
            });
        }
        let old = self
            .store
            .get_definition(tenant.id, name, Some(to_version))
            .await?;
        let applied = self
            .apply(caller, &old.source, &format!("{name}@v{to_version}"))
            .await?;
        if applied.created {
            tracing::info!(
                tenant = %tenant.name,
                workflow = %name,
                from = to_version,
                version = applied.definition.version,
                key_id = %caller.key_id,
                "workflow rolled back"
            );
        }
        Ok(applied)
    }

    async fn latest(&self, tenant: &TenantRef, name: &str) -> Result<Option<Definition>> {
        match self.store.get_definition(tenant.id, name, None).await {
            Ok(d) => Ok(Some(d)),
            Err(store::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A version (0: the latest).
    pub async fn get(&self, caller: &Caller, name: &str, version: i64) -> Result<Definition> {
        let tenant = Self::tenant(caller, Scope::DefinitionsRead)?;
        check_name(name)?;
        if version < 0 {
            return Err(Error::InvalidArgument {
                field: "version",
                message: "must be 0 (latest) or a positive version number".to_owned(),
            });
        }
        let version = (version > 0).then_some(version);
        Ok(self.store.get_definition(tenant.id, name, version).await?)
    }

    pub async fn list(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<DefinitionSummary>> {
        let tenant = Self::tenant(caller, Scope::DefinitionsRead)?;
        Ok(self.store.list_definitions(tenant.id, page).await?)
    }

    pub async fn versions(
        &self,
        caller: &Caller,
        name: &str,
        page: &PageRequest,
    ) -> Result<Page<VersionInfo>> {
        let tenant = Self::tenant(caller, Scope::DefinitionsRead)?;
        check_name(name)?;
        if let Some(after) = &page.after
            && after.parse::<i64>().is_err()
        {
            return Err(Error::InvalidArgument {
                field: "page_token",
                message: "not a token returned by this server".to_owned(),
            });
        }
        Ok(self
            .store
            .list_definition_versions(tenant.id, name, page)
            .await?)
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<()> {
        let tenant = Self::tenant(caller, Scope::DefinitionsWrite)?;
        check_name(name)?;
        self.store
            .delete_definition(tenant.id, name, Utc::now())
            .await?;
        tracing::info!(tenant = %tenant.name, workflow = %name, key_id = %caller.key_id, "workflow deleted");
        Ok(())
    }
}

fn check_name(name: &str) -> Result<()> {
    if workflow::load::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "name",
            message: if name.is_empty() {
                "required".to_owned()
            } else {
                format!("{name:?} is not a valid workflow name")
            },
        })
    }
}

fn parse_spec(d: &Definition) -> Result<WorkflowSpec> {
    serde_json::from_str(&d.spec_json).map_err(|e| {
        Error::Internal(format!(
            "stored spec of {} version {} does not parse: {e}",
            d.name, d.version
        ))
    })
}

/// A trigger of a file as registered by apply.
fn new_trigger(t: &crate::workflow::spec::TriggerSpec) -> crate::model::trigger::NewTrigger {
    use crate::workflow::spec::TriggerSpec;
    let (kind, webhook_path) = match t {
        TriggerSpec::Cron { .. } => ("cron", None),
        TriggerSpec::Webhook { path, .. } => ("webhook", Some(path.clone())),
        TriggerSpec::Email { .. } => ("email", None),
    };
    crate::model::trigger::NewTrigger {
        key: t.key(),
        kind: kind.to_owned(),
        spec: serde_json::to_value(t).unwrap_or_default(),
        webhook_path,
    }
}
