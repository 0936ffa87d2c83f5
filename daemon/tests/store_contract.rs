//! The store contract: every `Store` implementation behaves the same. Runs on SQLite always
//! and on PostgreSQL whenever one is reachable (`MANTLE_TEST_DATABASE_URL`, default
//! postgres://postgres@127.0.0.1:5432/postgres); with `CI=true` an unreachable PostgreSQL
//! fails the test instead of skipping it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use mantle_daemon::auth::{Scope, ScopeSet, token};
use mantle_daemon::definitions::model::NewVersion;
use mantle_daemon::engine::model::{
    Created, Event, EventKind, ExecutionFilter, ExecutionStatus, ExecutionUpdate, IdempotencyKey,
    NewExecution, Order, StepAttempt, StepStatus, Ticket, Transition,
};
use mantle_daemon::store::{self, Backend, Doomed, OpenOptions, Store};
use mantle_daemon::tenancy::model::{ActionMatch, AuditEvent, AuditFilter, ResultMatch};
use mantle_daemon::tenancy::model::{
    DEFAULT_TENANT_ID, MAX_PAGE_BYTES, NewApiKey, PageRequest, Tenant, TenantSettings,
    TenantUpdate, View,
};
use mantle_daemon::webhooks::model::{DeliveryFilter, DeliveryStatus};
use sqlx::Connection;

fn options(url: String, data_dir: std::path::PathBuf) -> OpenOptions {
    OpenOptions {
        url,
        data_dir,
        max_connections: 4,
        connect_timeout: Duration::from_secs(5),
        exclusive: true,
    }
}

/// A fresh PostgreSQL database, dropped at the end; `None` when PostgreSQL is unreachable
/// outside CI.
struct PgDb {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDb {
    async fn create() -> Option<PgDb> {
        let admin_url = std::env::var("MANTLE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(err) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true but PostgreSQL at {admin_url} is unreachable: {err}");
                }
                eprintln!("SKIPPED: PostgreSQL at {admin_url} is unreachable: {err}");
                return None;
            }
        };
        let name = format!("mantle_contract_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
        let url = format!("{base}/{name}");
        Some(PgDb {
            admin_url,
            name,
            url,
        })
    }

    async fn drop_db(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// A store on the SQLite database in `dir`, not migrated.
async fn sqlite_store_unmigrated(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    store::open(&options(String::new(), dir.path().to_owned()))
        .await
        .unwrap()
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let store = sqlite_store_unmigrated(dir).await;
    store.migrate().await.unwrap();
    store
}

/// The attempts and events of execution `id` still stored, read on `conn` (a SQLite or a
/// PostgreSQL connection).
macro_rules! checkpoint_rows {
    ($conn:expr, $id:expr) => {{
        let mut counts = [0i64; 2];
        for (k, table) in ["step_attempts", "execution_events"]
            .into_iter()
            .enumerate()
        {
            counts[k] = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table} WHERE execution_id = $1"
            )))
            .bind($id)
            .fetch_one(&mut *$conn)
            .await
            .unwrap();
        }
        (counts[0], counts[1])
    }};
}

/// The contract, one named test per case per backend (`sqlite::executions_contract`,
/// `postgres::executions_contract`, ...), each on a fresh database: a failure names its
/// case, and cases run in parallel.
macro_rules! store_contract_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::sqlite_store(&dir).await;
                    assert_eq!(store.backend(), super::Backend::Sqlite);
                    super::$case(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = super::PgDb::create().await else {
                        return;
                    };
                    let store = super::pg_store(&db).await;
                    assert_eq!(store.backend(), super::Backend::Postgres);
                    super::$case(store.clone()).await;
                    drop(store);
                    db.drop_db().await;
                }
            )*
        }
    };
}

store_contract_suite!(
    contract,
    definitions_contract,
    executions_contract,
    group_commit_contract,
    queued_order_contract,
    interrupted_attempts_contract,
    listing_contract,
    audit_filter_contract,
    delivery_filter_contract,
    triggers_contract,
    retention_delete_contract,
    delete_execution_contract,
    singleton_lease_contract,
    cancel_matching_contract,
    filtered_listing_contract,
    audit_retention_contract,
);

/// A store on a fresh PostgreSQL database, not migrated.
async fn pg_store_unmigrated(db: &PgDb) -> Arc<dyn Store> {
    store::open(&options(db.url.clone(), std::env::temp_dir()))
        .await
        .unwrap()
}

/// A migrated store on a fresh PostgreSQL database.
async fn pg_store(db: &PgDb) -> Arc<dyn Store> {
    let store = pg_store_unmigrated(db).await;
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn postgres_migrations_apply_once() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let store = pg_store_unmigrated(&db).await;
    assert!(
        store
            .migration_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied_at.is_none())
    );
    store.migrate().await.unwrap();
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    assert!(
        store
            .migration_status()
            .await
            .unwrap()
            .iter()
            .all(|m| m.applied_at.is_some())
    );
    drop(store);
    db.drop_db().await;
}

/// Deleting a tenant deletes its executions' checkpoints too (read behind the store's back).
#[tokio::test]
async fn sqlite_tenant_deletion_removes_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let id = tenant_deletion_contract(store).await;
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.path().join("mantle.db").display()
    ))
    .await
    .unwrap();
    assert_eq!(checkpoint_rows!(&mut conn, id), (0, 0));
}

#[tokio::test]
async fn postgres_tenant_deletion_removes_checkpoints() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let store = pg_store(&db).await;
    let id = tenant_deletion_contract(store.clone()).await;
    drop(store);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    assert_eq!(checkpoint_rows!(&mut conn, id), (0, 0));
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// Stores attempts as the engine recorded them before step attempts had `interrupted` (the
/// migrations up to 0010 applied on `conn`, from the backend's directory `dir`), then
/// migrates `store`: migration 0011 marks the attempts the engine had recorded as
/// interrupted, by their message, and only those; what they say is unchanged.
macro_rules! interrupted_attempts_upgrade {
    ($store:expr, $conn:expr, $dir:literal) => {{
        let store: Arc<dyn Store> = $store;
        let migrations = sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/",
            $dir
        )))
        .await
        .unwrap();
        migrations.run_to(10, &mut *$conn).await.unwrap();
        // The store writes the newest tenant columns: the tenant goes in by hand too.
        let t = tenant("upgraded");
        sqlx::query(
            "INSERT INTO tenants (id, name, display_name, create_time, update_time) \
             VALUES ($1, $2, '', $3, $3)",
        )
        .bind(t.id)
        .bind(&t.name)
        .bind(t.create_time)
        .execute(&mut *$conn)
        .await
        .unwrap();
        // The store writes the new schema (triggers, checkpoints): the old rows go in by
        // hand.
        let v = version(t.id, "wf", "h");
        sqlx::query(
            "INSERT INTO workflows (tenant_id, name, latest_version, description, \
             create_time, update_time) VALUES ($1, 'wf', 1, '', $2, $2)",
        )
        .bind(t.id)
        .bind(v.now)
        .execute(&mut *$conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO workflow_versions (tenant_id, name, version, content_hash, \
             description, spec, source, create_time) VALUES ($1, 'wf', 1, $2, '', $3, $4, $5)",
        )
        .bind(t.id)
        .bind(&v.content_hash)
        .bind(&v.spec_json)
        .bind(&v.source)
        .bind(v.now)
        .execute(&mut *$conn)
        .await
        .unwrap();
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO executions (id, tenant_id, workflow, version, status, inputs, \
             trigger_info, create_time) VALUES ($1, $2, 'wf', 1, 'running', '{}', '{}', $3)",
        )
        .bind(id)
        .bind(t.id)
        .bind(Utc::now())
        .execute(&mut *$conn)
        .await
        .unwrap();
        const MESSAGE: &str = "interrupted: the daemon running this attempt stopped";
        for (step, status, error) in [
            ("interrupted", "cancelled", MESSAGE),
            ("cancelled", "cancelled", "the execution was cancelled"),
            // An action's own failure in the same words was never an interruption.
            ("failed", "failed", MESSAGE),
        ] {
            sqlx::query(
                "INSERT INTO step_attempts (execution_id, step_name, attempt, tenant_id, \
                 generation, status, error) VALUES ($1, $2, 1, $3, 0, $4, $5)",
            )
            .bind(id)
            .bind(step)
            .bind(t.id)
            .bind(status)
            .bind(error)
            .execute(&mut *$conn)
            .await
            .unwrap();
        }
        store.migrate().await.unwrap();
        // A tenant stored before 0012 has none of the settings it adds.
        assert_eq!(
            store.get_tenant("upgraded").await.unwrap().settings,
            TenantSettings::default()
        );
        let (_, attempts, _) = store.load_execution(id).await.unwrap();
        let mut marked: Vec<(&str, StepStatus, Option<&str>, bool)> = attempts
            .iter()
            .map(|a| {
                let error = a.error.as_deref();
                (a.step_name.as_str(), a.status, error, a.interrupted)
            })
            .collect();
        marked.sort_by_key(|m| m.0);
        assert_eq!(
            marked,
            [
                (
                    "cancelled",
                    StepStatus::Cancelled,
                    Some("the execution was cancelled"),
                    false
                ),
                ("failed", StepStatus::Failed, Some(MESSAGE), false),
                ("interrupted", StepStatus::Cancelled, Some(MESSAGE), true),
            ]
        );
    }};
}

#[tokio::test]
async fn sqlite_migration_marks_attempts_interrupted_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store_unmigrated(&dir).await;
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.path().join("mantle.db").display()
    ))
    .await
    .unwrap();
    interrupted_attempts_upgrade!(store, &mut conn, "sqlite");
}

#[tokio::test]
async fn postgres_migration_marks_attempts_interrupted_before_it() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let store = pg_store_unmigrated(&db).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    interrupted_attempts_upgrade!(store.clone(), &mut conn, "postgres");
    conn.close().await.unwrap();
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn sqlite_refuses_a_second_exclusive_opener() {
    let dir = tempfile::tempdir().unwrap();
    let _first = sqlite_store(&dir).await;
    let err = store::open(&options(String::new(), dir.path().to_owned()))
        .await
        .err()
        .expect("second open must fail");
    assert!(
        err.to_string()
            .contains("another mantle daemon is already using"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_unparsable_and_unreachable_urls_are_clear() {
    let bad = store::open(&options(
        "postgres://u@host:notaport/db".into(),
        std::env::temp_dir(),
    ))
    .await
    .err()
    .unwrap();
    assert!(matches!(bad, store::Error::Config(_)), "{bad}");
    let mut opts = options(
        "postgres://postgres:pw@127.0.0.1:1/x".into(),
        std::env::temp_dir(),
    );
    opts.connect_timeout = Duration::from_millis(500);
    let err = store::open(&opts).await.err().unwrap();
    assert!(matches!(err, store::Error::Unavailable(_)), "{err}");
    assert!(
        err.to_string()
            .contains("postgres://postgres:***@127.0.0.1:1/x"),
        "{err}"
    );
    assert!(!err.to_string().contains("pw"), "{err}");
}

fn tenant(name: &str) -> Tenant {
    let now = Utc::now();
    Tenant {
        id: uuid::Uuid::now_v7(),
        name: name.to_owned(),
        display_name: format!("{name} display"),
        create_time: now,
        update_time: now,
        settings: TenantSettings::default(),
    }
}

fn new_key(tenant_id: Option<uuid::Uuid>, scopes: &[Scope]) -> (NewApiKey, String) {
    let minted = token::mint();
    let key = NewApiKey {
        id: minted.id,
        tenant_id,
        name: "k".to_owned(),
        scopes: ScopeSet::new(scopes.iter().copied()),
        token_hash: minted.hash,
        create_time: Utc::now(),
        expire_time: Some(Utc::now() + TimeDelta::hours(1)),
    };
    (key, minted.token)
}

fn page(limit: u32, after: Option<String>) -> PageRequest {
    PageRequest { limit, after }
}

async fn contract(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let migrations = store.migration_status().await.unwrap();
    assert!(!migrations.is_empty());
    assert!(migrations.iter().all(|m| m.applied_at.is_some()));

    // The default tenant exists from the first migration.
    let default = store.get_tenant("default").await.unwrap();
    assert_eq!(default.id, DEFAULT_TENANT_ID);

    // Create, read back, refuse duplicates.
    let acme = tenant("acme");
    store.create_tenant(&acme).await.unwrap();
    let got = store.get_tenant("acme").await.unwrap();
    assert_eq!(got.id, acme.id);
    assert_eq!(got.display_name, "acme display");
    assert_eq!(
        got.create_time.timestamp_micros(),
        acme.create_time.timestamp_micros()
    );
    let dup = store.create_tenant(&tenant("acme")).await.unwrap_err();
    assert!(matches!(dup, store::Error::AlreadyExists(_)), "{dup}");
    assert!(matches!(
        store.get_tenant("nope").await.unwrap_err(),
        store::Error::NotFound(_)
    ));

    // Keyset pagination in name order covers every tenant exactly once.
    for n in ["b1", "b2", "b3", "b4"] {
        store.create_tenant(&tenant(n)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = store.list_tenants(&page(2, after)).await.unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.iter().map(|t| t.name.clone()));
        match p.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["acme", "b1", "b2", "b3", "b4", "default"]);

    // Partial update.
    let later = Utc::now() + TimeDelta::seconds(5);
    let unchanged = store
        .update_tenant("acme", &TenantUpdate::default(), later)
        .await
        .unwrap();
    assert_eq!(unchanged.display_name, "acme display");
    let changed = store
        .update_tenant(
            "acme",
            &TenantUpdate {
                display_name: Some("ACME Corp".into()),
                ..TenantUpdate::default()
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(changed.display_name, "ACME Corp");
    assert_eq!(
        changed.update_time.timestamp_micros(),
        later.timestamp_micros()
    );
    assert!(matches!(
        store
            .update_tenant("nope", &TenantUpdate::default(), later)
            .await
            .unwrap_err(),
        store::Error::NotFound(_)
    ));

    // Settings: stored, changed field by field, cleared; readable by id.
    let mut limited = tenant("limited");
    limited.settings = TenantSettings {
        max_steps_per_workflow: Some(10),
        max_runtime_minutes: None,
        allowed_domains: Some(vec!["api.example.com".into(), "*.corp.example".into()]),
        rate_limit_per_minute: Some(120),
        max_cost_usd_per_execution: Some(2.5),
        max_tokens_per_day: Some(100_000),
        default_credentials: [
            ("anthropic".to_owned(), "claude".to_owned()),
            ("openai".to_owned(), "my-openai-key".to_owned()),
        ]
        .into(),
        ..TenantSettings::default()
    };
    store.create_tenant(&limited).await.unwrap();
    assert_eq!(
        store.get_tenant_by_id(limited.id).await.unwrap().settings,
        limited.settings
    );
    let updated = store
        .update_tenant(
            "limited",
            &TenantUpdate {
                max_runtime_minutes: Some(Some(5)),
                allowed_domains: Some(None),
                max_tokens_per_day: Some(Some(u64::MAX)),
                default_credentials: Some([("openai".to_owned(), "other-key".to_owned())].into()),
                ..TenantUpdate::default()
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(
        updated.settings,
        TenantSettings {
            max_steps_per_workflow: Some(10),
            max_runtime_minutes: Some(5),
            allowed_domains: None,
            rate_limit_per_minute: Some(120),
            max_cost_usd_per_execution: Some(2.5),
            // Stored as a BIGINT: the API takes no more than i64::MAX.
            max_tokens_per_day: Some(i64::MAX as u64),
            default_credentials: [("openai".to_owned(), "other-key".to_owned())].into(),
            ..TenantSettings::default()
        }
    );
    assert_eq!(
        store.get_tenant("limited").await.unwrap().settings,
        updated.settings
    );
    let cleared = store
        .update_tenant(
            "limited",
            &TenantUpdate {
                max_cost_usd_per_execution: Some(None),
                max_tokens_per_day: Some(None),
                default_credentials: Some(Default::default()),
                ..TenantUpdate::default()
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            cleared.settings.max_cost_usd_per_execution,
            cleared.settings.max_tokens_per_day,
            cleared.settings.default_credentials.len(),
            cleared.settings.max_steps_per_workflow,
        ),
        (None, None, 0, Some(10))
    );
    store.delete_tenant("limited").await.unwrap();

    // Keys: tenant keys and operator keys are listed apart, newest first.
    let (k1, t1) = new_key(Some(acme.id), &[Scope::ExecutionsRead]);
    let created = store.create_api_key(&k1).await.unwrap();
    assert_eq!(created.tenant.as_ref().unwrap().name, "acme");
    assert_eq!(created.scopes, ScopeSet::new([Scope::ExecutionsRead]));
    let (k2, _) = new_key(Some(acme.id), &[Scope::AllTenantScopes]);
    store.create_api_key(&k2).await.unwrap();
    let (op, _) = new_key(None, &[Scope::TenantsAdmin]);
    let op_key = store.create_api_key(&op).await.unwrap();
    assert!(op_key.tenant.is_none());

    let acme_keys = store
        .list_api_keys(Some(acme.id), false, &page(10, None))
        .await
        .unwrap();
    let ids: Vec<_> = acme_keys.items.iter().map(|k| k.id.clone()).collect();
    assert_eq!(ids, [k2.id.clone(), k1.id.clone()]);
    let op_keys = store
        .list_api_keys(None, false, &page(10, None))
        .await
        .unwrap();
    assert_eq!(op_keys.items.len(), 1);
    assert_eq!(op_keys.items[0].id, op.id);
    let first = store
        .list_api_keys(Some(acme.id), false, &page(1, None))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 1);
    let second = store
        .list_api_keys(Some(acme.id), false, &page(1, first.next_cursor))
        .await
        .unwrap();
    assert_eq!(second.items[0].id, k1.id);
    assert!(second.next_cursor.is_none());

    // The credential carries the hash the token matches.
    let (key, hash) = store.api_key_credential(&k1.id).await.unwrap().unwrap();
    assert!(token::matches(&t1, &hash));
    assert!(key.is_active(Utc::now()));
    assert!(
        store
            .api_key_credential("0".repeat(32).as_str())
            .await
            .unwrap()
            .is_none()
    );

    // Revocation is idempotent and hides the key from default listings.
    let at = Utc::now();
    let revoked = store.revoke_api_key(&k1.id, at).await.unwrap();
    assert_eq!(
        revoked.revoke_time.unwrap().timestamp_micros(),
        at.timestamp_micros()
    );
    let again = store
        .revoke_api_key(&k1.id, at + TimeDelta::seconds(9))
        .await
        .unwrap();
    assert_eq!(again.revoke_time, revoked.revoke_time);
    assert!(!again.is_active(Utc::now()));
    let active = store
        .list_api_keys(Some(acme.id), false, &page(10, None))
        .await
        .unwrap();
    assert_eq!(active.items.len(), 1);
    let all = store
        .list_api_keys(Some(acme.id), true, &page(10, None))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    assert!(matches!(
        store.revoke_api_key("missing", at).await.unwrap_err(),
        store::Error::NotFound(_)
    ));

    store.touch_api_key(&k2.id, at).await.unwrap();
    let touched = store.get_api_key(&k2.id).await.unwrap();
    assert_eq!(
        touched.last_use_time.unwrap().timestamp_micros(),
        at.timestamp_micros()
    );

    // Deleting a tenant deletes its keys; operator keys stay.
    store.delete_tenant("acme").await.unwrap();
    assert!(store.api_key_credential(&k2.id).await.unwrap().is_none());
    assert!(store.api_key_credential(&op.id).await.unwrap().is_some());
    assert!(matches!(
        store.delete_tenant("acme").await.unwrap_err(),
        store::Error::NotFound(_)
    ));
}

fn version(tenant_id: uuid::Uuid, name: &str, hash: &str) -> NewVersion {
    NewVersion {
        tenant_id,
        name: name.to_owned(),
        content_hash: hash.to_owned(),
        description: format!("{name} {hash}"),
        spec_json: format!("{{\"name\":\"{name}\",\"h\":\"{hash}\"}}"),
        source: format!("name: {name}\n# {hash}\n"),
        now: Utc::now(),
        triggers: Vec::new(),
    }
}

async fn definitions_contract(store: Arc<dyn Store>) {
    let a = tenant("defs-a");
    let b = tenant("defs-b");
    store.create_tenant(&a).await.unwrap();
    store.create_tenant(&b).await.unwrap();

    // First apply creates version 1; the same hash again creates nothing.
    let (v1, created) = store
        .apply_definition(&version(a.id, "wf", "h1"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(v1.version, 1);
    let (same, created) = store
        .apply_definition(&version(a.id, "wf", "h1"))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(same.version, 1);
    assert_eq!(same.source, v1.source);

    // A new hash is version 2; both stay readable.
    let (v2, created) = store
        .apply_definition(&version(a.id, "wf", "h2"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(v2.version, 2);
    assert_eq!(
        store
            .get_definition(a.id, "wf", None)
            .await
            .unwrap()
            .content_hash,
        "h2"
    );
    assert_eq!(
        store
            .get_definition(a.id, "wf", Some(1))
            .await
            .unwrap()
            .content_hash,
        "h1"
    );
    assert!(matches!(
        store.get_definition(a.id, "wf", Some(3)).await.unwrap_err(),
        store::Error::NotFound(_)
    ));

    // Another tenant sees nothing of it, and its own workflow of the same name is separate.
    assert!(matches!(
        store.get_definition(b.id, "wf", None).await.unwrap_err(),
        store::Error::NotFound(_)
    ));
    assert!(
        store
            .list_definitions(b.id, &page(10, None))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(matches!(
        store
            .list_definition_versions(b.id, "wf", &page(10, None))
            .await
            .unwrap_err(),
        store::Error::NotFound(_)
    ));
    assert!(matches!(
        store
            .delete_definition(b.id, "wf", Utc::now())
            .await
            .unwrap_err(),
        store::Error::NotFound(_)
    ));
    let (b1, _) = store
        .apply_definition(&version(b.id, "wf", "h2"))
        .await
        .unwrap();
    assert_eq!(b1.version, 1);

    // Listings: by name, and versions newest first, paged.
    store
        .apply_definition(&version(a.id, "another", "x"))
        .await
        .unwrap();
    let names: Vec<_> = store
        .list_definitions(a.id, &page(10, None))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| (d.name, d.latest_version))
        .collect();
    assert_eq!(names, [("another".to_owned(), 1), ("wf".to_owned(), 2)]);
    let first = store
        .list_definition_versions(a.id, "wf", &page(1, None))
        .await
        .unwrap();
    assert_eq!(first.items[0].version, 2);
    let second = store
        .list_definition_versions(a.id, "wf", &page(1, first.next_cursor))
        .await
        .unwrap();
    assert_eq!(second.items[0].version, 1);
    assert!(second.next_cursor.is_none());

    // Delete hides the workflow; applying again continues the numbering.
    store
        .delete_definition(a.id, "wf", Utc::now())
        .await
        .unwrap();
    assert!(matches!(
        store.get_definition(a.id, "wf", None).await.unwrap_err(),
        store::Error::NotFound(_)
    ));
    assert_eq!(
        store
            .list_definitions(a.id, &page(10, None))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let (v3, created) = store
        .apply_definition(&version(a.id, "wf", "h2"))
        .await
        .unwrap();
    assert!(
        created,
        "re-applying a deleted workflow stores a version even with the same hash"
    );
    assert_eq!(v3.version, 3);

    // Concurrent applies of the same new content store exactly one version.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let v = version(a.id, "racy", "same");
        tasks.push(tokio::spawn(
            async move { store.apply_definition(&v).await },
        ));
    }
    let mut created_count = 0;
    for t in tasks {
        let (d, created) = t.await.unwrap().unwrap();
        assert_eq!(d.version, 1);
        created_count += usize::from(created);
    }
    assert_eq!(created_count, 1);
}

fn new_execution(tenant_id: uuid::Uuid, owner: &str, lease_ms: u64) -> NewExecution {
    NewExecution {
        id: uuid::Uuid::now_v7(),
        tenant_id,
        workflow: "wf".to_owned(),
        version: 1,
        inputs: serde_json::json!({"n": 1}),
        trigger: serde_json::json!({"type": "api"}),
        deadline: None,
        owner: owner.to_owned(),
        lease_ms,
        now: Utc::now(),
        idempotency: None,
        concurrency: None,
        fire: None,
    }
}

/// Tenant `name`, with the workflow `wf` its executions run.
async fn tenant_with_workflow(store: &dyn Store, name: &str) -> Tenant {
    let t = tenant(name);
    store.create_tenant(&t).await.unwrap();
    store
        .apply_definition(&version(t.id, "wf", "h"))
        .await
        .unwrap();
    t
}

/// A new execution of tenant `t`'s `wf`, leased by `owner`.
async fn leased_execution(
    store: &dyn Store,
    t: &Tenant,
    owner: &str,
) -> (NewExecution, mantle_daemon::engine::model::Lease) {
    let e = new_execution(t.id, owner, 60_000);
    let lease = created(store.create_execution(&e).await.unwrap());
    (e, lease)
}

fn created(c: Created) -> mantle_daemon::engine::model::Lease {
    match c {
        Created::New(lease) => lease,
        Created::Existing(id) | Created::Queued(id) => {
            panic!("expected a new execution, got {c:?} ({id})")
        }
    }
}

fn attempt(id: uuid::Uuid, step: &str, n: i32, status: StepStatus) -> StepAttempt {
    StepAttempt {
        execution_id: id,
        step_name: step.to_owned(),
        attempt: n,
        generation: 0,
        status,
        output: (status == StepStatus::Completed).then(|| serde_json::json!({"ok": n})),
        error: None,
        wake_time: None,
        start_time: Some(Utc::now()),
        end_time: None,
        interrupted: false,
    }
}

fn event(id: uuid::Uuid, seq: i64, status: &str) -> Event {
    Event {
        execution_id: id,
        seq,
        time: Utc::now(),
        kind: EventKind::StepStatus,
        step_name: Some("a".to_owned()),
        attempt: Some(1),
        status: Some(status.to_owned()),
        message: None,
    }
}

async fn executions_contract(store: Arc<dyn Store>) {
    let a = tenant("exec-a");
    let b = tenant("exec-b");
    store.create_tenant(&a).await.unwrap();
    store.create_tenant(&b).await.unwrap();
    store
        .apply_definition(&version(b.id, "wf", "h"))
        .await
        .unwrap();
    store
        .apply_definition(&version(a.id, "wf", "h"))
        .await
        .unwrap();

    // Created leased by its starter, epoch 1.
    let e = new_execution(a.id, "node-1", 60_000);
    let lease = created(store.create_execution(&e).await.unwrap());
    assert_eq!(lease.epoch, 1);
    let got = store.get_execution(a.id, e.id).await.unwrap();
    assert_eq!(got.status, ExecutionStatus::Pending);
    assert_eq!(got.inputs, serde_json::json!({"n": 1}));
    assert!(matches!(
        store.get_execution(b.id, e.id).await.unwrap_err(),
        store::Error::NotFound(_)
    ));

    // A transition writes attempts, events and the execution row together.
    let mut t = Transition::default();
    t.attempts.push(attempt(e.id, "a", 1, StepStatus::Running));
    t.events.push(event(e.id, 1, "running"));
    t.execution = Some(ExecutionUpdate {
        status: ExecutionStatus::Running,
        outputs: None,
        error: None,
        start_time: Some(Utc::now()),
        end_time: None,
        release: false,
        wake_time: None,
    });
    store.write_transition(lease, &t).await.unwrap();
    // The same attempt again is an update (upsert), not a second row.
    let mut t2 = Transition::default();
    t2.attempts
        .push(attempt(e.id, "a", 1, StepStatus::Completed));
    t2.events.push(event(e.id, 2, "completed"));
    store.write_transition(lease, &t2).await.unwrap();
    let (loaded, attempts, last_seq) = store.load_execution(e.id).await.unwrap();
    assert_eq!(loaded.status, ExecutionStatus::Running);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, StepStatus::Completed);
    assert_eq!(attempts[0].output, Some(serde_json::json!({"ok": 1})));
    assert_eq!(last_seq, 2);
    let events = store.list_events(a.id, e.id, 1, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 2);
    assert!(
        store
            .list_events(b.id, e.id, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store
            .list_attempts(b.id, e.id, &page(10, None), View::Full)
            .await
            .unwrap_err(),
        store::Error::NotFound(_)
    ));

    // A live lease cannot be claimed again (on SQLite, whose file lock proves that only one
    // daemon runs, any other daemon's lease is stale by definition, so ask as the holder).
    let other = if store.single_daemon() {
        "node-1"
    } else {
        "node-2"
    };
    assert!(
        store
            .claim_executions(other, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let held = store.renew_leases("node-1", &[e.id], 60_000).await.unwrap();
    assert_eq!(held, vec![(e.id, false)]);
    // Only the leases named are renewed, and only the owner's.
    assert!(
        store
            .renew_leases("node-1", &[], 60_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .renew_leases("node-9", &[e.id], 60_000)
            .await
            .unwrap()
            .is_empty()
    );

    // Cancellation is a flag the holder sees on its next renewal.
    store.request_cancel(a.id, e.id).await.unwrap();
    assert_eq!(
        store.renew_leases("node-1", &[e.id], 60_000).await.unwrap(),
        vec![(e.id, true)]
    );
    assert!(matches!(
        store.request_cancel(b.id, e.id).await.unwrap_err(),
        store::Error::NotFound(_)
    ));

    // Released, it is claimable; the new claim fences the old holder's writes.
    store.release_lease(lease).await.unwrap();
    let claimed = store.claim_executions("node-2", 60_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].execution_id, e.id);
    assert_eq!(claimed[0].epoch, 2);
    let mut stale = Transition::default();
    stale.events.push(event(e.id, 3, "late"));
    assert!(matches!(
        store.write_transition(lease, &stale).await.unwrap_err(),
        store::Error::Fenced(_)
    ));
    // A lone step (one attempt, one event: PostgreSQL writes it with a statement of its own)
    // is fenced the same way.
    let mut stale_step = Transition::default();
    stale_step
        .attempts
        .push(attempt(e.id, "late", 1, StepStatus::Completed));
    stale_step.events.push(event(e.id, 3, "completed"));
    assert!(matches!(
        store
            .write_transition(lease, &stale_step)
            .await
            .unwrap_err(),
        store::Error::Fenced(_)
    ));
    let (_, attempts_now, last_seq) = store.load_execution(e.id).await.unwrap();
    assert_eq!(last_seq, 2, "a fenced write wrote nothing");
    assert!(
        attempts_now.iter().all(|a| a.step_name != "late"),
        "a fenced step wrote its attempt"
    );

    // Finishing releases the lease; a finished execution is not claimed again.
    let mut done = Transition::default();
    done.events.push(event(e.id, 3, "failed"));
    done.execution = Some(ExecutionUpdate {
        status: ExecutionStatus::Failed,
        outputs: None,
        error: Some("boom".to_owned()),
        start_time: None,
        end_time: Some(Utc::now()),
        release: true,
        wake_time: None,
    });
    store.write_transition(claimed[0], &done).await.unwrap();
    assert!(
        store
            .claim_executions("node-3", 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .renew_leases("node-2", &[e.id], 60_000)
            .await
            .unwrap()
            .is_empty()
    );

    // Retry: a new generation, leased by the retrier, cancel flag cleared.
    let retried = store
        .retry_execution(a.id, e.id, "node-3", 60_000)
        .await
        .unwrap();
    assert_eq!(retried.epoch, 3);
    let again = store.get_execution(a.id, e.id).await.unwrap();
    assert_eq!(again.status, ExecutionStatus::Pending);
    assert_eq!(again.generation, 1);
    assert!(!again.cancel_requested);
    assert!(again.error.is_none());
    // Only failed, cancelled or timed-out executions can be retried.
    assert!(matches!(
        store
            .retry_execution(a.id, e.id, "node-3", 60_000)
            .await
            .unwrap_err(),
        store::Error::Conflict(_)
    ));

    // An expired lease is claimable by another daemon (PostgreSQL: by the database clock).
    let short = new_execution(a.id, "node-9", 1);
    created(store.create_execution(&short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let taken = store.claim_executions("node-4", 60_000, 10).await.unwrap();
    assert!(
        taken.iter().any(|l| l.execution_id == short.id),
        "{taken:?}"
    );

    // Idempotency: the same key and request give the first execution; another request with
    // the key is a conflict; concurrent duplicates store one; an expired key is reused.
    let keyed = |hash: &str, expire: chrono::DateTime<Utc>| {
        let mut n = new_execution(b.id, "node-1", 60_000);
        n.idempotency = Some(IdempotencyKey {
            key: "k-1".to_owned(),
            request_hash: hash.to_owned(),
            expire_time: expire,
        });
        n
    };
    let later = Utc::now() + TimeDelta::hours(1);
    let first = keyed("h1", later);
    let first_id = created(store.create_execution(&first).await.unwrap()).execution_id;
    assert_eq!(
        store.create_execution(&keyed("h1", later)).await.unwrap(),
        Created::Existing(first_id)
    );
    assert!(matches!(
        store
            .create_execution(&keyed("h2", later))
            .await
            .unwrap_err(),
        store::Error::Conflict(_)
    ));
    let mut racers = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let mut n = keyed("race", later);
        n.idempotency.as_mut().unwrap().key = "k-race".to_owned();
        racers.push(tokio::spawn(async move {
            store.create_execution(&n).await.unwrap()
        }));
    }
    let mut new_ones = 0;
    let mut ids = std::collections::HashSet::new();
    for r in racers {
        match r.await.unwrap() {
            Created::New(l) => {
                new_ones += 1;
                ids.insert(l.execution_id);
            }
            Created::Existing(id) | Created::Queued(id) => {
                ids.insert(id);
            }
        }
    }
    assert_eq!(new_ones, 1);
    assert_eq!(ids.len(), 1);
    let mut expired = keyed("h3", Utc::now() - TimeDelta::seconds(1));
    expired.idempotency.as_mut().unwrap().key = "k-old".to_owned();
    created(store.create_execution(&expired).await.unwrap());
    assert!(matches!(
        store.create_execution(&keyed("h9", later).clone()).await,
        Err(store::Error::Conflict(_))
    ));
    let mut reuse = keyed("h4", later);
    reuse.idempotency.as_mut().unwrap().key = "k-old".to_owned();
    assert!(
        matches!(
            store.create_execution(&reuse).await.unwrap(),
            Created::New(_)
        ),
        "an expired key is free again"
    );
    assert_eq!(
        store
            .sweep_idempotency_keys(Utc::now() + TimeDelta::hours(2))
            .await
            .unwrap(),
        3
    );

    // Concurrency caps: beyond the cap a start is queued; beyond the queue it is refused;
    // promotion frees queued executions as slots free.
    let c = tenant("capped");
    store.create_tenant(&c).await.unwrap();
    store
        .apply_definition(&version(c.id, "wf", "h"))
        .await
        .unwrap();
    let capped = |n: u32| {
        let mut e = new_execution(c.id, "node-1", 60_000);
        e.concurrency = Some(mantle_daemon::engine::model::Concurrency {
            max_active: n,
            max_queued: Some(1),
        });
        e
    };
    let first = created(store.create_execution(&capped(1)).await.unwrap());
    let queued = match store.create_execution(&capped(1)).await.unwrap() {
        Created::Queued(id) => id,
        other => panic!("expected queued, got {other:?}"),
    };
    assert_eq!(
        store.get_execution(c.id, queued).await.unwrap().status,
        ExecutionStatus::Queued
    );
    assert!(matches!(
        store.create_execution(&capped(1)).await.unwrap_err(),
        store::Error::Exhausted(_)
    ));
    // Queued executions are not claimable, and nothing is promoted while the slot is taken.
    assert_eq!(store.promote_queued(Some(1)).await.unwrap(), 0);
    let finish = Transition {
        execution: Some(ExecutionUpdate {
            status: ExecutionStatus::Completed,
            outputs: None,
            error: None,
            start_time: None,
            end_time: Some(Utc::now()),
            release: true,
            wake_time: None,
        }),
        ..Transition::default()
    };
    store.write_transition(first, &finish).await.unwrap();
    // First come, first served: with the slot free but one still queued, a new start
    // queues behind it instead of taking the slot (here the queue is full: refused).
    assert!(matches!(
        store.create_execution(&capped(1)).await.unwrap_err(),
        store::Error::Exhausted(_)
    ));
    assert_eq!(store.promote_queued(Some(1)).await.unwrap(), 1);
    assert_eq!(
        store.get_execution(c.id, queued).await.unwrap().status,
        ExecutionStatus::Pending
    );
    assert!(
        store
            .claim_executions("node-5", 60_000, 10)
            .await
            .unwrap()
            .iter()
            .any(|l| l.execution_id == queued)
    );
    store.delete_tenant("capped").await.unwrap();

    // Listing: newest first, tenant-scoped, filterable.
    let listed = store
        .list_executions(
            a.id,
            &ExecutionFilter::default(),
            &page(10, None),
            View::Full,
        )
        .await
        .unwrap();
    let ids: Vec<_> = listed.items.iter().map(|x| x.id).collect();
    assert_eq!(ids, [short.id, e.id]);
    let filtered = store
        .list_executions(
            a.id,
            &ExecutionFilter {
                status: Some(ExecutionStatus::Pending),
                ..ExecutionFilter::default()
            },
            &page(10, None),
            View::Basic,
        )
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 2);
    assert_eq!(
        store
            .list_executions(
                b.id,
                &ExecutionFilter::default(),
                &page(10, None),
                View::Basic
            )
            .await
            .unwrap()
            .items
            .len(),
        4,
        "tenant b lists only its own executions (those of the idempotency checks)"
    );
}

/// Transitions of many executions written at once (the writers commit them in groups):
/// each keeps its own fence and its own outcome. A stale lease and a duplicate event fail
/// alone; every other transition, with its execution update and webhook delivery, lands.
/// A transition queued behind another before that one's outcome is known (a driver hands
/// over its next checkpoint while the previous one commits): written after it, and not at
/// all when it was not written.
/// Listings: BASIC leaves the large parts out, a page ends at its byte budget without
/// loading more than it returns, and attempts page in the order they started.
async fn listing_contract(store: Arc<dyn Store>) {
    let t = tenant("listing");
    store.create_tenant(&t).await.unwrap();
    store
        .apply_definition(&version(t.id, "wf", "h1"))
        .await
        .unwrap();
    // Five executions of 1 MiB inputs each: a FULL page of ten holds at most three.
    let big = "x".repeat(1024 * 1024);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut e = new_execution(t.id, "node-l", 60_000);
        e.inputs = serde_json::json!({ "big": big });
        ids.push(e.id);
        store.create_execution(&e).await.unwrap();
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let listed = store
            .list_executions(
                t.id,
                &ExecutionFilter::default(),
                &page(10, after),
                View::Full,
            )
            .await
            .unwrap();
        let bytes: usize = listed
            .items
            .iter()
            .map(|e| e.inputs.to_string().len())
            .sum();
        assert!(!listed.items.is_empty());
        assert!(
            listed.items.len() == 1 || bytes <= MAX_PAGE_BYTES,
            "{} items, {bytes} bytes",
            listed.items.len()
        );
        assert!(listed.items.iter().all(|e| e.inputs["big"] == big));
        seen.extend(listed.items.iter().map(|e| e.id));
        match listed.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every execution once, newest first");
    let basic = store
        .list_executions(
            t.id,
            &ExecutionFilter::default(),
            &page(10, None),
            View::Basic,
        )
        .await
        .unwrap();
    assert_eq!(basic.items.len(), 5);
    assert!(basic.next_cursor.is_none());
    assert!(
        basic
            .items
            .iter()
            .all(|e| e.inputs == serde_json::json!({}) && e.outputs.is_none())
    );

    // Attempts page in the order they started; those not started yet come last.
    let (e, lease) = leased_execution(&*store, &t, "node-l").await;
    let now = Utc::now();
    let mut t1 = Transition::default();
    for (i, step) in ["c", "a", "d", "b"].into_iter().enumerate() {
        let mut a = attempt(e.id, step, 1, StepStatus::Completed);
        a.start_time = Some(now + TimeDelta::milliseconds(i as i64));
        t1.attempts.push(a);
    }
    let mut pending = attempt(e.id, "e", 1, StepStatus::Pending);
    pending.start_time = None;
    t1.attempts.push(pending);
    let mut retry = attempt(e.id, "a", 2, StepStatus::Pending);
    retry.start_time = None;
    t1.attempts.push(retry);
    store.write_transition(lease, &t1).await.unwrap();
    let mut order = Vec::new();
    let mut after = None;
    loop {
        let listed = store
            .list_attempts(t.id, e.id, &page(4, after), View::Basic)
            .await
            .unwrap();
        assert!(listed.items.iter().all(|a| a.output.is_none()));
        order.extend(
            listed
                .items
                .iter()
                .map(|a| format!("{}{}", a.step_name, a.attempt)),
        );
        match listed.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(order, ["c1", "a1", "d1", "b1", "a2", "e1"]);
    let full = store
        .list_attempts(t.id, e.id, &page(2, None), View::Full)
        .await
        .unwrap();
    assert_eq!(full.items[0].output, Some(serde_json::json!({"ok": 1})));
    assert!(matches!(
        store
            .list_attempts(
                t.id,
                e.id,
                &page(2, Some("not a cursor".into())),
                View::Full
            )
            .await
            .unwrap_err(),
        store::Error::NotFound(_)
    ));
}

async fn queued_order_contract(store: Arc<dyn Store>) {
    let t = tenant_with_workflow(&*store, "queued-order").await;
    let (e, lease) = leased_execution(&*store, &t, "node-q").await;
    let step = |seq: i64, name: &str| {
        let mut tr = Transition::default();
        tr.attempts
            .push(attempt(e.id, name, 1, StepStatus::Completed));
        tr.events.push(event(e.id, seq, "completed"));
        Arc::new(tr)
    };
    let queue = |tr: Arc<Transition>, after: Option<&Ticket>, ticket: &Ticket| {
        store.queue_transition(
            lease,
            tr,
            Order {
                after: after.cloned(),
                ticket: Some(ticket.clone()),
            },
        )
    };

    // Three in a row, each queued before the one it follows is answered: all written, in
    // order, each ticket resolved as committed.
    let (t1, t2, t3) = (Ticket::default(), Ticket::default(), Ticket::default());
    let (r1, r2, r3) = tokio::join!(
        queue(step(1, "s1"), None, &t1),
        queue(step(2, "s2"), Some(&t1), &t2),
        queue(step(3, "s3"), Some(&t2), &t3),
    );
    r1.unwrap();
    r2.unwrap();
    r3.unwrap();
    assert_eq!(
        (t1.outcome(), t2.outcome(), t3.outcome()),
        (Some(true), Some(true), Some(true))
    );
    let (_, attempts, last_seq) = store.load_execution(e.id).await.unwrap();
    assert_eq!(last_seq, 3);
    assert_eq!(attempts.len(), 3);

    // The first fails (its event repeats seq 3): the two queued behind it are not written,
    // answer that they may go again (BehindAFailure, transient), and resolve their tickets
    // as not written.
    let (f1, f2, f3) = (Ticket::default(), Ticket::default(), Ticket::default());
    let (r1, r2, r3) = tokio::join!(
        queue(step(3, "bad"), None, &f1),
        queue(step(4, "s4"), Some(&f1), &f2),
        queue(step(5, "s5"), Some(&f2), &f3),
    );
    assert!(r1.is_err(), "{r1:?}");
    for r in [&r2, &r3] {
        assert!(
            matches!(r, Err(e @ store::Error::BehindAFailure) if e.is_transient()),
            "{r:?}"
        );
    }
    assert_eq!(
        (f1.outcome(), f2.outcome(), f3.outcome()),
        (Some(false), Some(false), Some(false))
    );
    let (_, attempts, last_seq) = store.load_execution(e.id).await.unwrap();
    assert_eq!(last_seq, 3, "nothing queued behind the failure was written");
    assert_eq!(attempts.len(), 3);

    // Written again on their own, in order, they go in.
    store.write_transition(lease, &step(4, "s4")).await.unwrap();
    let (_, _, last_seq) = store.load_execution(e.id).await.unwrap();
    assert_eq!(last_seq, 4);
    store.delete_tenant("queued-order").await.unwrap();
}

/// An attempt's interruption (its daemon stopped) is stored as such, whichever statement
/// writes it: a lone step's, a batch's, or an update of the running attempt.
async fn interrupted_attempts_contract(store: Arc<dyn Store>) {
    let t = tenant_with_workflow(&*store, "interrupted").await;
    let (e, lease) = leased_execution(&*store, &t, "node-i").await;
    let interrupted = |step: &str, n: i32| StepAttempt {
        error: Some("interrupted: the daemon running this attempt stopped".to_owned()),
        end_time: Some(Utc::now()),
        interrupted: true,
        ..attempt(e.id, step, n, StepStatus::Cancelled)
    };
    // One attempt and one event: PostgreSQL writes them with a statement of their own.
    let lone = |a: StepAttempt, seq: i64, status: &str| Transition {
        attempts: vec![a],
        events: vec![event(e.id, seq, status)],
        ..Transition::default()
    };
    // Running, then interrupted: the update marks it.
    let running = lone(attempt(e.id, "lone", 1, StepStatus::Running), 1, "running");
    store.write_transition(lease, &running).await.unwrap();
    let stopped = lone(interrupted("lone", 1), 2, "cancelled");
    store.write_transition(lease, &stopped).await.unwrap();
    // In a batch, next to a cancelled attempt that was not interrupted.
    let mut batch = Transition::default();
    batch.attempts.push(interrupted("batched", 1));
    batch.attempts.push(StepAttempt {
        error: Some("the execution was cancelled".to_owned()),
        ..attempt(e.id, "other", 1, StepStatus::Cancelled)
    });
    batch.events.push(event(e.id, 3, "cancelled"));
    batch.events.push(event(e.id, 4, "cancelled"));
    store.write_transition(lease, &batch).await.unwrap();
    // The next attempt of an interrupted step starts unmarked.
    let again = lone(attempt(e.id, "lone", 2, StepStatus::Running), 5, "running");
    store.write_transition(lease, &again).await.unwrap();

    let marks = |attempts: &[StepAttempt]| {
        let mut marks: Vec<(String, i32, StepStatus, bool)> = attempts
            .iter()
            .map(|a| (a.step_name.clone(), a.attempt, a.status, a.interrupted))
            .collect();
        marks.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        marks
    };
    let want = vec![
        ("batched".to_owned(), 1, StepStatus::Cancelled, true),
        ("lone".to_owned(), 1, StepStatus::Cancelled, true),
        ("lone".to_owned(), 2, StepStatus::Running, false),
        ("other".to_owned(), 1, StepStatus::Cancelled, false),
    ];
    let (_, attempts, _) = store.load_execution(e.id).await.unwrap();
    assert_eq!(marks(&attempts), want, "loaded");
    for view in [View::Full, View::Basic] {
        let listed = store
            .list_attempts(t.id, e.id, &page(10, None), view)
            .await
            .unwrap();
        assert_eq!(marks(&listed.items), want, "listed ({view:?})");
    }
    store.delete_tenant("interrupted").await.unwrap();
}

async fn group_commit_contract(store: Arc<dyn Store>) {
    use mantle_daemon::engine::model::NewDelivery;
    let t = tenant_with_workflow(&*store, "group-commit").await;
    const N: usize = 40;
    // Starts committed together too; one repeating an id fails alone.
    let mut starts: Vec<_> = (0..N)
        .map(|_| new_execution(t.id, "node-g", 60_000))
        .collect();
    let mut repeated = new_execution(t.id, "node-g", 60_000);
    repeated.id = starts[7].id;
    starts.push(repeated);
    let mut created_all =
        futures_util::future::join_all(starts.iter().map(|e| store.create_execution(e))).await;
    let last = created_all.pop().unwrap();
    let first = created_all.iter().position(|c| c.is_err());
    // Whichever of the two with the same id came second fails; the other is stored once.
    let failed = match (first, &last) {
        (None, Err(store::Error::AlreadyExists(_))) => None,
        (Some(7), Ok(_)) => Some(7),
        other => panic!("one of the two starts of one id fails: {other:?} {last:?}"),
    };
    let leases: Vec<_> = created_all
        .into_iter()
        .enumerate()
        .map(|(i, c)| match (c, failed == Some(i)) {
            (Err(store::Error::AlreadyExists(_)), true) => mantle_daemon::engine::model::Lease {
                execution_id: starts[7].id,
                epoch: 1,
            },
            (c, _) => created(c.unwrap()),
        })
        .collect();
    for (i, lease) in leases.iter().enumerate() {
        let got = store.get_execution(t.id, lease.execution_id).await.unwrap();
        assert_eq!(got.status, ExecutionStatus::Pending, "start {i}");
    }
    // Execution 0's first event is already stored: its transition below repeats seq 1.
    let mut first = Transition::default();
    first
        .events
        .push(event(leases[0].execution_id, 1, "running"));
    store.write_transition(leases[0], &first).await.unwrap();
    // Execution 1 was released and claimed again: its first lease (epoch 1) is stale.
    store.release_lease(leases[1]).await.unwrap();
    let taken = store
        .claim_executions("node-g", 60_000, N as u32)
        .await
        .unwrap();
    let ours: Vec<_> = taken
        .iter()
        .filter(|l| leases.iter().any(|m| m.execution_id == l.execution_id))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].execution_id, leases[1].execution_id);
    assert_eq!(ours[0].epoch, 2);

    let transitions: Vec<Transition> = leases
        .iter()
        .enumerate()
        .map(|(i, lease)| {
            let id = lease.execution_id;
            let mut t = Transition::default();
            // The same attempt twice in one transition: the last write wins.
            t.attempts.push(attempt(id, "a", 1, StepStatus::Running));
            t.attempts.push(attempt(id, "a", 1, StepStatus::Completed));
            t.attempts.push(attempt(id, "b", 1, StepStatus::Running));
            t.events.push(event(id, 1, "running"));
            t.events.push(event(id, 2, "completed"));
            if i % 2 == 0 {
                t.execution = Some(ExecutionUpdate {
                    status: ExecutionStatus::Completed,
                    outputs: Some(serde_json::json!({"i": i})),
                    error: None,
                    start_time: Some(Utc::now()),
                    end_time: Some(Utc::now()),
                    release: true,
                    wake_time: None,
                });
                t.webhook = Some(NewDelivery {
                    id: uuid::Uuid::now_v7(),
                    url: format!("https://hooks.example/{i}"),
                    secret_name: None,
                    payload: format!("{{\"i\":{i}}}"),
                    create_time: Utc::now(),
                    expire_time: Utc::now() + TimeDelta::hours(1),
                });
            }
            t
        })
        .collect();
    // Audit records share the same batches.
    let records: Vec<mantle_daemon::tenancy::model::AuditEvent> = (0..10)
        .map(|k| mantle_daemon::tenancy::model::AuditEvent {
            id: uuid::Uuid::now_v7(),
            tenant_id: Some(t.id),
            time: Utc::now(),
            actor: "group-test".to_owned(),
            action: format!("test.action{k}"),
            resource: String::new(),
            result: "ok".to_owned(),
            detail: (k % 2 == 0).then(|| "detail".to_owned()),
        })
        .collect();
    let (results, recorded) = tokio::join!(
        futures_util::future::join_all(
            leases
                .iter()
                .zip(&transitions)
                .map(|(lease, t)| store.write_transition(*lease, t)),
        ),
        futures_util::future::join_all(records.iter().map(|r| store.record_audit(r)))
    );
    assert!(recorded.iter().all(Result::is_ok), "{recorded:?}");
    let listed = store
        .list_audit(Some(t.id), &AuditFilter::default(), &page(100, None))
        .await
        .unwrap();
    let mut actions: Vec<&str> = listed.items.iter().map(|e| e.action.as_str()).collect();
    actions.sort();
    let mut want: Vec<String> = (0..10).map(|k| format!("test.action{k}")).collect();
    want.sort();
    assert_eq!(actions, want);
    for (i, result) in results.iter().enumerate() {
        let id = leases[i].execution_id;
        match i {
            0 => assert!(
                matches!(result, Err(store::Error::AlreadyExists(_))),
                "duplicate event seq: {result:?}"
            ),
            1 => assert!(
                matches!(result, Err(store::Error::Fenced(f)) if *f == id),
                "stale lease: {result:?}"
            ),
            _ => assert!(result.is_ok(), "transition {i}: {result:?}"),
        }
        let (execution, attempts, last_seq) = store.load_execution(id).await.unwrap();
        match i {
            0 => {
                assert_eq!(last_seq, 1, "the failed transition wrote nothing");
                assert!(attempts.is_empty());
            }
            1 => {
                assert_eq!(last_seq, 0, "the fenced transition wrote nothing");
                assert!(attempts.is_empty());
                assert_eq!(execution.status, ExecutionStatus::Pending);
            }
            _ => {
                assert_eq!(last_seq, 2);
                let mut got: Vec<(String, StepStatus)> = attempts
                    .iter()
                    .map(|a| (a.step_name.clone(), a.status))
                    .collect();
                got.sort_by(|x, y| x.0.cmp(&y.0));
                assert_eq!(
                    got,
                    [
                        ("a".to_owned(), StepStatus::Completed),
                        ("b".to_owned(), StepStatus::Running)
                    ],
                    "transition {i}"
                );
                if i % 2 == 0 {
                    assert_eq!(execution.status, ExecutionStatus::Completed);
                    assert_eq!(execution.outputs, Some(serde_json::json!({"i": i})));
                } else {
                    assert_eq!(execution.status, ExecutionStatus::Pending);
                }
            }
        }
    }
    // Only the written transitions' deliveries exist: those of executions 2, 4, 6, …
    let deliveries = store
        .list_deliveries(
            Some(t.id),
            &DeliveryFilter::default(),
            &page(100, None),
            View::Full,
        )
        .await
        .unwrap();
    let mut urls: Vec<String> = deliveries.items.iter().map(|d| d.url.clone()).collect();
    urls.sort();
    let mut want: Vec<String> = (2..N)
        .step_by(2)
        .map(|i| format!("https://hooks.example/{i}"))
        .collect();
    want.sort();
    assert_eq!(urls, want);
    // The completed executions released their leases; the others are still held (1 under
    // its new lease).
    let ids: Vec<uuid::Uuid> = leases.iter().map(|l| l.execution_id).collect();
    let held: Vec<uuid::Uuid> = store
        .renew_leases("node-g", &ids, 60_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for (i, lease) in leases.iter().enumerate() {
        assert_eq!(
            held.contains(&lease.execution_id),
            i == 0 || i % 2 == 1,
            "lease of execution {i}"
        );
    }
}

/// The actions of `events`, in the order listed.
fn actions(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

/// Audit listings filter by actor, action (exact or prefix), result and time, in SQL: pages
/// hold only matching events, and a tenant's listing never holds another's.
async fn audit_filter_contract(store: Arc<dyn Store>) {
    let a = tenant("audit-filter-a");
    let b = tenant("audit-filter-b");
    store.create_tenant(&a).await.unwrap();
    store.create_tenant(&b).await.unwrap();
    // Whole seconds: PostgreSQL keeps microseconds, and `since` equal to an event's time
    // must find it on both stores.
    let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let hours = |h: i64| now - TimeDelta::hours(h);
    // (tenant, actor, action, result, time), oldest id first.
    let rows = [
        (Some(a.id), "alice", "secret.create", "OK", hours(3)),
        // Secret changes were recorded as `ok` at first.
        (Some(a.id), "alice", "secret.update", "ok", hours(2)),
        (
            Some(a.id),
            "bob",
            "mantle.v1.DefinitionService/ApplyDefinition",
            "PERMISSION_DENIED",
            hours(1),
        ),
        (
            Some(a.id),
            "bob",
            "mantle.v1.DefinitionService/DeleteDefinition",
            "NOT_FOUND",
            now,
        ),
        // `_` and `%` in a prefix are no wildcards.
        (Some(a.id), "alice", "encryptionXkey.rotate", "OK", now),
        (None, "operator", "encryption_key.rotate", "OK", now),
        (Some(b.id), "alice", "secret.create", "OK", now),
    ];
    for (tenant_id, actor, action, result, time) in rows {
        store
            .record_audit(&AuditEvent {
                id: uuid::Uuid::now_v7(),
                tenant_id,
                time,
                actor: actor.to_owned(),
                action: action.to_owned(),
                resource: String::new(),
                result: result.to_owned(),
                detail: None,
            })
            .await
            .unwrap();
    }
    let list = |tenant: Option<uuid::Uuid>, filter: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .list_audit(tenant, &filter, &page(100, None))
                .await
                .unwrap()
                .items
        }
    };
    let all = list(Some(a.id), AuditFilter::default()).await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all.iter().all(|e| e.tenant_id == Some(a.id)));
    // The early `ok` reads as `OK`.
    assert!(all.iter().all(|e| e.result != "ok"), "{all:?}");

    let by_actor = list(
        Some(a.id),
        AuditFilter {
            actor: Some("alice".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        actions(&by_actor),
        ["encryptionXkey.rotate", "secret.update", "secret.create"]
    );

    let exact = |action: &str| AuditFilter {
        action: Some(ActionMatch::Exact(action.to_owned())),
        ..Default::default()
    };
    let prefix = |action: &str| AuditFilter {
        action: Some(ActionMatch::Prefix(action.to_owned())),
        ..Default::default()
    };
    assert_eq!(
        actions(&list(Some(a.id), exact("secret.create")).await),
        ["secret.create"]
    );
    // Every tenant's, for operators.
    let everywhere = list(None, exact("secret.create")).await;
    assert_eq!(
        everywhere.iter().map(|e| e.tenant_id).collect::<Vec<_>>(),
        [Some(b.id), Some(a.id)]
    );
    assert!(list(Some(a.id), exact("secret.")).await.is_empty());
    assert_eq!(
        actions(&list(Some(a.id), prefix("secret.")).await),
        ["secret.update", "secret.create"]
    );
    assert_eq!(
        actions(&list(Some(a.id), prefix("mantle.v1.DefinitionService/")).await),
        [
            "mantle.v1.DefinitionService/DeleteDefinition",
            "mantle.v1.DefinitionService/ApplyDefinition"
        ]
    );
    assert!(
        list(Some(a.id), prefix("SECRET.")).await.is_empty(),
        "case matters"
    );
    let rotations = list(None, prefix("encryption_key.")).await;
    assert_eq!(actions(&rotations), ["encryption_key.rotate"]);
    assert_eq!(rotations[0].tenant_id, None);
    assert!(
        list(Some(a.id), prefix("encryption_key.")).await.is_empty(),
        "installation-wide events are not a tenant's"
    );

    let result = |r: ResultMatch| AuditFilter {
        result: Some(r),
        ..Default::default()
    };
    assert_eq!(
        actions(&list(Some(a.id), result(ResultMatch::Ok)).await),
        ["encryptionXkey.rotate", "secret.update", "secret.create"]
    );
    assert_eq!(
        actions(&list(Some(a.id), result(ResultMatch::Refused)).await),
        [
            "mantle.v1.DefinitionService/DeleteDefinition",
            "mantle.v1.DefinitionService/ApplyDefinition"
        ]
    );
    assert_eq!(
        actions(&list(Some(a.id), result(ResultMatch::Code("NOT_FOUND".into()))).await),
        ["mantle.v1.DefinitionService/DeleteDefinition"]
    );

    let since = |t| AuditFilter {
        since: Some(t),
        ..Default::default()
    };
    assert_eq!(
        list(Some(a.id), since(hours(2))).await.len(),
        4,
        "at or after"
    );
    assert_eq!(
        actions(&list(Some(a.id), since(hours(1) - TimeDelta::minutes(30))).await),
        [
            "encryptionXkey.rotate",
            "mantle.v1.DefinitionService/DeleteDefinition",
            "mantle.v1.DefinitionService/ApplyDefinition"
        ]
    );
    assert!(
        list(Some(a.id), since(now + TimeDelta::seconds(1)))
            .await
            .is_empty()
    );

    // Every filter at once.
    let combined = AuditFilter {
        actor: Some("bob".into()),
        action: Some(ActionMatch::Prefix("mantle.v1.".into())),
        result: Some(ResultMatch::Refused),
        since: Some(hours(1)),
    };
    assert_eq!(
        actions(&list(Some(a.id), combined).await),
        [
            "mantle.v1.DefinitionService/DeleteDefinition",
            "mantle.v1.DefinitionService/ApplyDefinition"
        ]
    );

    // Pages hold matching events only; the last one says so.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let listed = store
            .list_audit(Some(a.id), &result(ResultMatch::Ok), &page(2, after))
            .await
            .unwrap();
        assert!(!listed.items.is_empty());
        seen.extend(listed.items.iter().map(|e| e.action.clone()));
        match listed.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["encryptionXkey.rotate", "secret.update", "secret.create"]
    );
    let first = store
        .list_audit(Some(a.id), &result(ResultMatch::Refused), &page(1, None))
        .await
        .unwrap();
    let second = store
        .list_audit(
            Some(a.id),
            &result(ResultMatch::Refused),
            &page(1, first.next_cursor.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        actions(&first.items),
        ["mantle.v1.DefinitionService/DeleteDefinition"]
    );
    assert_eq!(
        actions(&second.items),
        ["mantle.v1.DefinitionService/ApplyDefinition"]
    );
    assert!(second.next_cursor.is_none());
}

/// Delivery listings filter by status and execution, in SQL, within the tenant scope.
async fn delivery_filter_contract(store: Arc<dyn Store>) {
    use mantle_daemon::engine::model::{DeliveryOutcome, NewDelivery};
    let a = tenant("delivery-filter-a");
    let b = tenant("delivery-filter-b");
    let mut deliveries = Vec::new();
    let mut executions = Vec::new();
    for t in [&a, &b] {
        store.create_tenant(t).await.unwrap();
        store
            .apply_definition(&version(t.id, "wf", "h"))
            .await
            .unwrap();
    }
    // Tenant a: executions 0 and 1, with a delivery each, and execution 2 with two (one per
    // transition). Tenant b: execution 3, with one.
    for (k, t) in [&a, &a, &a, &b].into_iter().enumerate() {
        let (e, lease) = leased_execution(&*store, t, "node-w").await;
        let count = if k == 2 { 2 } else { 1 };
        for n in 0..count {
            let id = uuid::Uuid::now_v7();
            let mut tr = Transition::default();
            tr.events.push(event(e.id, n + 1, "running"));
            tr.webhook = Some(NewDelivery {
                id,
                url: format!("https://hooks.example/{k}/{n}"),
                secret_name: None,
                payload: "{}".to_owned(),
                create_time: Utc::now(),
                expire_time: Utc::now() + TimeDelta::hours(1),
            });
            store.write_transition(lease, &tr).await.unwrap();
            deliveries.push(id);
        }
        executions.push(e.id);
    }
    // Deliveries 0..=4: a's 0 delivered, a's 1 failed, a's 2 and 3 (execution 2) and b's 4
    // pending.
    store
        .finish_delivery(
            deliveries[0],
            1,
            &DeliveryOutcome::Delivered { status: 200 },
        )
        .await
        .unwrap();
    store
        .finish_delivery(
            deliveries[1],
            3,
            &DeliveryOutcome::Failed {
                error: "gave up".into(),
                status: Some(500),
            },
        )
        .await
        .unwrap();
    let list = |tenant: Option<uuid::Uuid>, filter: DeliveryFilter, limit: u32| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut after = None;
            loop {
                let listed = store
                    .list_deliveries(tenant, &filter, &page(limit, after), View::Basic)
                    .await
                    .unwrap();
                assert!(
                    !listed.items.is_empty() || ids.is_empty(),
                    "an empty page after a cursor"
                );
                ids.extend(listed.items.iter().map(|d| d.id));
                match listed.next_cursor {
                    Some(c) => after = Some(c),
                    None => return ids,
                }
            }
        }
    };
    let status = |s| DeliveryFilter {
        status: Some(s),
        ..Default::default()
    };
    let d = &deliveries;
    assert_eq!(
        list(Some(a.id), DeliveryFilter::default(), 100).await,
        [d[3], d[2], d[1], d[0]]
    );
    assert_eq!(
        list(Some(a.id), status(DeliveryStatus::Delivered), 100).await,
        [d[0]]
    );
    assert_eq!(
        list(Some(a.id), status(DeliveryStatus::Failed), 100).await,
        [d[1]]
    );
    assert_eq!(
        list(Some(a.id), status(DeliveryStatus::Pending), 1).await,
        [d[3], d[2]],
        "paged one by one"
    );
    let pending_everywhere = list(None, status(DeliveryStatus::Pending), 100).await;
    assert!(
        [d[4], d[3], d[2]]
            .iter()
            .all(|id| pending_everywhere.contains(id)),
        "{pending_everywhere:?}"
    );
    assert!(!pending_everywhere.contains(&d[0]));
    let of = |id| DeliveryFilter {
        execution_id: Some(id),
        ..Default::default()
    };
    assert_eq!(list(Some(a.id), of(executions[2]), 1).await, [d[3], d[2]]);
    assert_eq!(list(None, of(executions[3]), 100).await, [d[4]]);
    assert!(
        list(Some(a.id), of(executions[3]), 100).await.is_empty(),
        "another tenant's execution"
    );
    let both = DeliveryFilter {
        status: Some(DeliveryStatus::Delivered),
        execution_id: Some(executions[2]),
    };
    assert!(list(Some(a.id), both, 100).await.is_empty());
    let both = DeliveryFilter {
        status: Some(DeliveryStatus::Delivered),
        execution_id: Some(executions[0]),
    };
    assert_eq!(list(Some(a.id), both, 100).await, [d[0]]);
}

/// Deleting a tenant deletes its executions with their attempts and events (the caller
/// checks the tables for the returned execution's rows).
async fn tenant_deletion_contract(store: Arc<dyn Store>) -> uuid::Uuid {
    let t = tenant_with_workflow(&*store, "doomed").await;
    let (_, lease) = leased_execution(&*store, &t, "node-d").await;
    let id = lease.execution_id;
    let mut step = Transition::default();
    step.attempts
        .push(attempt(id, "a", 1, StepStatus::Completed));
    step.events.push(event(id, 1, "completed"));
    store.write_transition(lease, &step).await.unwrap();
    assert_eq!(store.load_execution(id).await.unwrap().1.len(), 1);
    store.delete_tenant("doomed").await.unwrap();
    assert!(matches!(
        store.get_execution(t.id, id).await.unwrap_err(),
        store::Error::NotFound(_)
    ));
    id
}

/// The checkpoint writers reach executions by key however the table grew since their
/// statements were planned: a plan made on a new database (an empty table, no statistics)
/// scanned the whole table at every checkpoint for as long as the daemon ran. Sequential
/// scans are counted by PostgreSQL itself, once the writers' connections have closed.
#[tokio::test]
async fn postgres_checkpoints_do_not_scan_executions() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    // Migrated by a store of its own, closed before counting: building an index
    // CONCURRENTLY scans the table, and those scans are not the checkpoints'.
    pg_store(&db).await.close().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    wait_for_other_connections_to_close(&mut conn).await;
    let scans_before: i64 =
        sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'executions'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let store = pg_store(&db).await;
    let t = tenant_with_workflow(&*store, "no-scan").await;
    let (e, lease) = leased_execution(&*store, &t, "node-s").await;
    let mut seq = 0;
    let mut checkpoint = |with_update: bool| {
        seq += 1;
        let mut tr = Transition::default();
        tr.attempts
            .push(attempt(e.id, &format!("s{seq}"), 1, StepStatus::Completed));
        tr.events.push(event(e.id, seq, "completed"));
        if with_update {
            tr.execution = Some(ExecutionUpdate {
                status: ExecutionStatus::Running,
                outputs: None,
                error: None,
                start_time: Some(Utc::now()),
                end_time: None,
                wake_time: None,
                release: false,
            });
        }
        Arc::new(tr)
    };
    // Both statement kinds (a lone step, a transition that updates its execution) planned
    // while the table holds one row.
    for k in 0..4 {
        store
            .write_transition(lease, &checkpoint(k % 2 == 0))
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO executions (id, tenant_id, workflow, version, status, inputs, \
         trigger_info, create_time) \
         SELECT gen_random_uuid(), $1, 'wf', 1, 'completed', '{}', '{}', now() \
         FROM generate_series(1, 20000)",
    )
    .bind(t.id)
    .execute(&mut conn)
    .await
    .unwrap();
    let writes = 40;
    for k in 0..writes {
        store
            .write_transition(lease, &checkpoint(k % 2 == 0))
            .await
            .unwrap();
    }
    drop(store);
    wait_for_other_connections_to_close(&mut conn).await;
    let scans: i64 = sqlx::query_scalar::<_, i64>(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'executions'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
        - scans_before;
    assert!(
        scans < writes / 4,
        "{scans} sequential scans of executions for {writes} checkpoints"
    );
    conn.close().await.unwrap();
    db.drop_db().await;
}

fn cron_trigger(schedule: &str) -> mantle_daemon::model::trigger::NewTrigger {
    mantle_daemon::model::trigger::NewTrigger {
        key: format!("cron {schedule}"),
        kind: "cron".to_owned(),
        spec: serde_json::json!({"type": "cron", "schedule": schedule}),
        webhook_path: None,
    }
}

fn webhook_trigger(path: &str) -> mantle_daemon::model::trigger::NewTrigger {
    mantle_daemon::model::trigger::NewTrigger {
        key: format!("webhook {path}"),
        kind: "webhook".to_owned(),
        spec: serde_json::json!({"type": "webhook", "path": path}),
        webhook_path: Some(path.to_owned()),
    }
}

/// Apply registers a version's triggers (a kept key keeps its id and pause), deleting the
/// workflow removes them, a webhook path is the tenant's once, and a trigger's scheduled
/// time starts one execution however many starts present it.
async fn triggers_contract(store: Arc<dyn Store>) {
    use mantle_daemon::model::execution::Created;
    use mantle_daemon::model::trigger::{Fire, LastFire};
    let t = tenant("trig-a");
    let other = tenant("trig-b");
    store.create_tenant(&t).await.unwrap();
    store.create_tenant(&other).await.unwrap();
    let mut v1 = version(t.id, "wf", "h1");
    v1.triggers = vec![cron_trigger("* * * * *"), webhook_trigger("/hooks/gh")];
    store.apply_definition(&v1).await.unwrap();
    let listed = store.list_triggers(t.id, None).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        store
            .list_triggers(other.id, None)
            .await
            .unwrap()
            .is_empty()
    );
    let cron = listed.iter().find(|x| x.kind == "cron").unwrap().clone();
    assert_eq!(cron.version, 1);
    let paused = store
        .set_trigger_paused(t.id, cron.id, true, Utc::now())
        .await
        .unwrap();
    assert!(paused.paused);
    // Another tenant cannot see or pause it.
    assert!(matches!(
        store.get_trigger(other.id, cron.id).await,
        Err(store::Error::NotFound(_))
    ));
    assert!(matches!(
        store
            .set_trigger_paused(other.id, cron.id, false, Utc::now())
            .await,
        Err(store::Error::NotFound(_))
    ));
    assert!(store.active_triggers("cron").await.unwrap().is_empty());
    assert_eq!(store.active_triggers("webhook").await.unwrap().len(), 1);
    assert_eq!(
        store
            .find_webhook_trigger(t.id, "/hooks/gh")
            .await
            .unwrap()
            .workflow,
        "wf"
    );
    // Version 2 keeps the cron trigger (same id, still paused) and drops the webhook.
    let mut v2 = version(t.id, "wf", "h2");
    v2.triggers = vec![cron_trigger("* * * * *"), cron_trigger("0 8 * * *")];
    store.apply_definition(&v2).await.unwrap();
    let listed = store.list_triggers(t.id, Some("wf")).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|x| x.key.as_str()).collect();
    assert_eq!(keys, ["cron * * * * *", "cron 0 8 * * *"]);
    assert_eq!(listed[0].id, cron.id);
    assert!(listed[0].paused);
    assert_eq!(listed[0].version, 2);
    assert!(store.find_webhook_trigger(t.id, "/hooks/gh").await.is_err());
    // A webhook path is the tenant's once.
    let mut w1 = version(t.id, "hooked", "h1");
    w1.triggers = vec![webhook_trigger("/hooks/x")];
    store.apply_definition(&w1).await.unwrap();
    let mut w2 = version(t.id, "hooked-too", "h1");
    w2.triggers = vec![webhook_trigger("/hooks/x")];
    assert!(matches!(
        store.apply_definition(&w2).await,
        Err(store::Error::Conflict(_))
    ));
    // Nothing of the refused apply was stored.
    assert!(matches!(
        store.get_definition(t.id, "hooked-too", None).await,
        Err(store::Error::NotFound(_))
    ));
    let mut w3 = version(other.id, "hooked", "h1");
    w3.triggers = vec![webhook_trigger("/hooks/x")];
    store.apply_definition(&w3).await.unwrap();

    // One execution per scheduled time.
    let scheduled_time = Utc::now();
    let fire = Fire {
        trigger_id: cron.id,
        scheduled_time,
    };
    let mut first = new_execution(t.id, "node-a", 30_000);
    first.fire = Some(fire);
    let mut second = new_execution(t.id, "node-b", 30_000);
    second.fire = Some(fire);
    assert!(matches!(
        store.create_execution(&first).await.unwrap(),
        Created::New(_)
    ));
    assert_eq!(
        store.create_execution(&second).await.unwrap(),
        Created::Existing(first.id)
    );
    let mut later = new_execution(t.id, "node-b", 30_000);
    later.fire = Some(Fire {
        trigger_id: cron.id,
        scheduled_time: scheduled_time + chrono::Duration::seconds(1),
    });
    assert!(matches!(
        store.create_execution(&later).await.unwrap(),
        Created::New(_)
    ));
    // The last fire noted is the latest scheduled time.
    let note = |at, result: &str| LastFire {
        scheduled_time: at,
        fire_time: Utc::now(),
        execution_id: Some(first.id),
        result: result.to_owned(),
    };
    store
        .note_fire(
            cron.id,
            &note(scheduled_time + chrono::Duration::seconds(1), "started"),
        )
        .await
        .unwrap();
    store
        .note_fire(cron.id, &note(scheduled_time, "late"))
        .await
        .unwrap();
    let noted = store.get_trigger(t.id, cron.id).await.unwrap();
    let last = noted.last_fire.unwrap();
    assert_eq!(last.result, "started");
    assert_eq!(
        last.scheduled_time.timestamp_micros(),
        (scheduled_time + chrono::Duration::seconds(1)).timestamp_micros()
    );

    // Deleting the workflow removes its triggers.
    store
        .delete_definition(t.id, "wf", Utc::now())
        .await
        .unwrap();
    assert!(
        store
            .list_triggers(t.id, Some("wf"))
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting the tenant removes the rest.
    store.delete_tenant("trig-a").await.unwrap();
    assert_eq!(store.list_triggers(other.id, None).await.unwrap().len(), 1);
}

/// Now, to the microsecond: what both stores keep of a time, so one read back or compared
/// at a boundary is exactly the one written.
fn now_micros() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap()
}

/// A new execution of tenant `t`'s `workflow`, leased by `owner`, created at `now`.
async fn execution_of(
    store: &dyn Store,
    t: &Tenant,
    workflow: &str,
) -> (NewExecution, mantle_daemon::engine::model::Lease) {
    // Distinct milliseconds: ids and creation times in the same order.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut e = new_execution(t.id, "node-r", 60_000);
    e.id = uuid::Uuid::now_v7();
    e.workflow = workflow.to_owned();
    e.now = now_micros();
    let lease = created(store.create_execution(&e).await.unwrap());
    (e, lease)
}

/// Rows an execution made with [`with_rows`]: one attempt, two events, one checkpoint, one
/// webhook delivery (and the execution itself: one more).
const ROWS_EACH: u64 = 5;

/// Writes one attempt, two events and a checkpoint of step `a` (and, with `end`, the
/// execution's end at `end`, with a webhook delivery).
async fn with_rows(
    store: &dyn Store,
    lease: mantle_daemon::engine::model::Lease,
    end: Option<chrono::DateTime<Utc>>,
) {
    use mantle_daemon::engine::model::NewDelivery;
    use mantle_daemon::model::execution::Checkpoint;
    let id = lease.execution_id;
    let mut t = Transition::default();
    t.attempts.push(attempt(id, "a", 1, StepStatus::Completed));
    t.events.push(event(id, 1, "running"));
    t.events.push(event(id, 2, "completed"));
    t.checkpoints.push(Checkpoint {
        step_name: "a".to_owned(),
        generation: 0,
        seq: 1,
        attempt: 1,
        time: Utc::now(),
        kind: "model".to_owned(),
        usage: None,
        body: serde_json::json!({"answer": 42}),
    });
    if let Some(end) = end {
        t.execution = Some(ExecutionUpdate {
            status: ExecutionStatus::Completed,
            outputs: Some(serde_json::json!({"done": true})),
            error: None,
            start_time: Some(end),
            end_time: Some(end),
            release: true,
            wake_time: None,
        });
    }
    t.webhook = Some(NewDelivery {
        id: uuid::Uuid::now_v7(),
        url: format!("https://hooks.example/{id}"),
        secret_name: None,
        payload: "{}".to_owned(),
        create_time: Utc::now(),
        expire_time: Utc::now() + TimeDelta::hours(1),
    });
    store.write_transition(lease, &t).await.unwrap();
}

/// Whether execution `id` of tenant `t` is still stored, and how many of its attempts,
/// events, checkpoints and webhook deliveries are, each read on its own.
async fn stored(store: &dyn Store, t: &Tenant, id: uuid::Uuid) -> (bool, [usize; 4]) {
    let exists = match store.get_execution(t.id, id).await {
        Ok(_) => true,
        Err(store::Error::NotFound(_)) => false,
        Err(err) => panic!("get_execution {id}: {err}"),
    };
    let attempts = match store
        .list_attempts(t.id, id, &page(100, None), View::Full)
        .await
    {
        Ok(p) => p.items.len(),
        Err(store::Error::NotFound(_)) => 0,
        Err(err) => panic!("list_attempts {id}: {err}"),
    };
    let events = store.list_events(t.id, id, 0, 100).await.unwrap().len();
    let checkpoints = store.list_checkpoints(id, "a", 0).await.unwrap().len();
    let deliveries = store
        .list_deliveries(
            Some(t.id),
            &DeliveryFilter {
                execution_id: Some(id),
                ..DeliveryFilter::default()
            },
            &page(100, None),
            View::Basic,
        )
        .await
        .unwrap()
        .items
        .len();
    (exists, [attempts, events, checkpoints, deliveries])
}

/// Everything of a stored execution written by [`with_rows`].
const ALL_ROWS: (bool, [usize; 4]) = (true, [1, 2, 1, 1]);
const NO_ROWS: (bool, [usize; 4]) = (false, [0, 0, 0, 0]);

/// Batched deletion of finished executions: only the tenant's, only those that ended before
/// the cutoff (of the workflow if named), oldest first, at most `limit` a call, with every
/// row that belongs to them; `Doomed::All` takes unfinished ones too.
async fn retention_delete_contract(store: Arc<dyn Store>) {
    let a = tenant_with_workflow(&*store, "ret-a").await;
    let b = tenant_with_workflow(&*store, "ret-b").await;
    store
        .apply_definition(&version(a.id, "wf2", "h"))
        .await
        .unwrap();
    let cutoff = now_micros();
    let hours = |h: i64| cutoff + TimeDelta::hours(h);
    // Tenant a: wf ended 3, 2 and 1 hours before the cutoff (created in another order), wf2
    // ended 4 hours before, wf ended an hour after, wf ended exactly at the cutoff, and wf
    // unfinished (with rows). Tenant b: wf ended 5 hours before.
    let mut old = Vec::new();
    for h in [-2, -3, -1] {
        let (e, lease) = execution_of(&*store, &a, "wf").await;
        with_rows(&*store, lease, Some(hours(h))).await;
        old.push((h, e.id));
    }
    old.sort();
    let old: Vec<uuid::Uuid> = old.into_iter().map(|(_, id)| id).collect();
    let (other_wf, lease) = execution_of(&*store, &a, "wf2").await;
    with_rows(&*store, lease, Some(hours(-4))).await;
    let (newer, lease) = execution_of(&*store, &a, "wf").await;
    with_rows(&*store, lease, Some(hours(1))).await;
    let (at_cutoff, lease) = execution_of(&*store, &a, "wf").await;
    with_rows(&*store, lease, Some(cutoff)).await;
    let (running, lease) = execution_of(&*store, &a, "wf").await;
    with_rows(&*store, lease, None).await;
    let (bs, lease) = execution_of(&*store, &b, "wf").await;
    with_rows(&*store, lease, Some(hours(-5))).await;
    for id in old
        .iter()
        .chain([&other_wf.id, &newer.id, &at_cutoff.id, &running.id])
    {
        assert_eq!(stored(&*store, &a, *id).await, ALL_ROWS, "{id} before");
    }

    // Finished strictly before: a's three of wf and one of wf2; b's one.
    assert_eq!(store.count_finished_before(a.id, cutoff).await.unwrap(), 4);
    assert_eq!(store.count_finished_before(b.id, cutoff).await.unwrap(), 1);
    assert_eq!(
        store
            .count_finished_before(a.id, cutoff + TimeDelta::microseconds(1))
            .await
            .unwrap(),
        5,
        "one ended exactly at the cutoff"
    );
    assert_eq!(
        store.count_finished_before(a.id, hours(2)).await.unwrap(),
        6,
        "never the unfinished one"
    );
    assert_eq!(
        store.count_finished_before(a.id, hours(-10)).await.unwrap(),
        0
    );

    // Of wf, at most 2 a call, oldest end first.
    let of_wf = Doomed::Finished {
        ended_before: cutoff,
        workflow: Some("wf"),
    };
    let first = store.delete_executions(a.id, of_wf, 2).await.unwrap();
    assert_eq!(
        first,
        store::Deleted {
            executions: 2,
            rows: 2 * (ROWS_EACH + 1),
            ..Default::default()
        }
    );
    // The two that ended first (3 and 2 hours before) went, with all their rows.
    assert_eq!(stored(&*store, &a, old[0]).await, NO_ROWS, "oldest");
    assert_eq!(stored(&*store, &a, old[1]).await, NO_ROWS, "second oldest");
    assert_eq!(stored(&*store, &a, old[2]).await, ALL_ROWS, "youngest old");
    let second = store.delete_executions(a.id, of_wf, 2).await.unwrap();
    assert_eq!(
        second,
        store::Deleted {
            executions: 1,
            rows: ROWS_EACH + 1,
            ..Default::default()
        }
    );
    assert_eq!(stored(&*store, &a, old[2]).await, NO_ROWS);
    assert_eq!(
        store.delete_executions(a.id, of_wf, 2).await.unwrap(),
        store::Deleted::default()
    );
    // Not wf2's, not the newer one, not the one at the cutoff, not the unfinished one, not
    // b's.
    for id in [other_wf.id, newer.id, at_cutoff.id, running.id] {
        assert_eq!(stored(&*store, &a, id).await, ALL_ROWS, "{id} kept");
    }
    assert_eq!(stored(&*store, &b, bs.id).await, ALL_ROWS, "b's kept");
    // Another tenant's rows are never reached through a's id.
    assert_eq!(stored(&*store, &a, bs.id).await, (false, [0, 0, 1, 0]));

    // Of any workflow: wf2's.
    let any = Doomed::Finished {
        ended_before: cutoff,
        workflow: None,
    };
    assert_eq!(
        store.delete_executions(a.id, any, 100).await.unwrap(),
        store::Deleted {
            executions: 1,
            rows: ROWS_EACH + 1,
            ..Default::default()
        }
    );
    assert_eq!(stored(&*store, &a, other_wf.id).await, NO_ROWS);
    assert_eq!(store.count_finished_before(a.id, cutoff).await.unwrap(), 0);
    assert_eq!(store.count_finished_before(b.id, cutoff).await.unwrap(), 1);

    // Everything of a, unfinished too, a batch at a time.
    let one = store.delete_executions(a.id, Doomed::All, 2).await.unwrap();
    assert_eq!(one.executions, 2);
    let rest = store.delete_executions(a.id, Doomed::All, 2).await.unwrap();
    assert_eq!(rest.executions, 1);
    assert_eq!(one.rows + rest.rows, 3 * (ROWS_EACH + 1));
    for id in [newer.id, at_cutoff.id, running.id] {
        assert_eq!(stored(&*store, &a, id).await, NO_ROWS, "{id} deleted");
    }
    assert_eq!(
        store.delete_executions(a.id, Doomed::All, 2).await.unwrap(),
        store::Deleted::default()
    );
    assert!(
        store
            .list_executions(
                a.id,
                &ExecutionFilter::default(),
                &page(10, None),
                View::Basic
            )
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // b's is still whole.
    assert_eq!(stored(&*store, &b, bs.id).await, ALL_ROWS);
    // The tenant still works: a new execution of a is stored and kept.
    let (fresh, lease) = execution_of(&*store, &a, "wf").await;
    with_rows(&*store, lease, Some(hours(-1))).await;
    assert_eq!(stored(&*store, &a, fresh.id).await, ALL_ROWS);
}

/// One execution's deletion: only the tenant's, only once finished.
async fn delete_execution_contract(store: Arc<dyn Store>) {
    let a = tenant_with_workflow(&*store, "del-a").await;
    let b = tenant_with_workflow(&*store, "del-b").await;
    let (finished, lease) = execution_of(&*store, &a, "wf").await;
    with_rows(&*store, lease, Some(now_micros())).await;
    let (running, lease) = execution_of(&*store, &a, "wf").await;
    with_rows(&*store, lease, None).await;

    // Another tenant's: not found, and nothing deleted.
    assert!(matches!(
        store.delete_execution(b.id, finished.id).await,
        Err(store::Error::NotFound(_))
    ));
    assert!(matches!(
        store.delete_execution(a.id, uuid::Uuid::now_v7()).await,
        Err(store::Error::NotFound(_))
    ));
    assert_eq!(stored(&*store, &a, finished.id).await, ALL_ROWS);
    // Unfinished: a conflict that says to cancel first; nothing deleted.
    match store.delete_execution(a.id, running.id).await {
        Err(store::Error::Conflict(m)) => assert!(m.contains("cancel"), "{m}"),
        other => panic!("deleting an unfinished execution: {other:?}"),
    }
    assert_eq!(stored(&*store, &a, running.id).await, ALL_ROWS);
    // Finished: it and its rows go.
    assert_eq!(
        store.delete_execution(a.id, finished.id).await.unwrap(),
        store::Deleted {
            executions: 1,
            rows: ROWS_EACH + 1,
            ..Default::default()
        }
    );
    assert_eq!(stored(&*store, &a, finished.id).await, NO_ROWS);
    assert!(matches!(
        store.delete_execution(a.id, finished.id).await,
        Err(store::Error::NotFound(_))
    ));
    assert_eq!(stored(&*store, &a, running.id).await, ALL_ROWS);
}

/// The installation-wide lease: one owner at a time until it expires; the holder renews.
async fn singleton_lease_contract(store: Arc<dyn Store>) {
    let t0 = now_micros();
    let s = |n: i64| t0 + TimeDelta::seconds(n);
    let take = |owner: &'static str, now: i64, until: i64| {
        let store = store.clone();
        async move {
            store
                .take_singleton_lease("retention", owner, s(now), s(until))
                .await
                .unwrap()
        }
    };
    assert!(take("a", 0, 60).await, "a free lease is taken");
    assert!(!take("b", 1, 61).await, "held by a");
    assert!(take("a", 2, 120).await, "the holder renews");
    assert!(!take("b", 90, 150).await, "renewed past 60");
    assert!(!take("b", 120, 180).await, "not expired at its very end");
    assert!(take("b", 121, 200).await, "expired: b takes it");
    assert!(!take("a", 122, 300).await, "a lost it");
    assert!(take("b", 123, 300).await, "b renews");
    // Another name is another lease.
    assert!(
        store
            .take_singleton_lease("other", "a", s(124), s(400))
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_singleton_lease("other", "b", s(125), s(400))
            .await
            .unwrap()
    );
}

/// Bulk cancellation: at most `limit` a call, oldest first, only unfinished executions the
/// filter matches, none twice.
async fn cancel_matching_contract(store: Arc<dyn Store>) {
    let a = tenant_with_workflow(&*store, "cm-a").await;
    let b = tenant_with_workflow(&*store, "cm-b").await;
    store
        .apply_definition(&version(a.id, "wf2", "h"))
        .await
        .unwrap();
    let mut wf = Vec::new();
    for _ in 0..5 {
        wf.push(execution_of(&*store, &a, "wf").await.0.id);
    }
    let (other_wf, _) = execution_of(&*store, &a, "wf2").await;
    let (done, lease) = execution_of(&*store, &a, "wf").await;
    with_rows(&*store, lease, Some(now_micros())).await;
    let (theirs, _) = execution_of(&*store, &b, "wf").await;
    let filter = ExecutionFilter {
        workflow: Some("wf".to_owned()),
        ..ExecutionFilter::default()
    };
    let mut batches = Vec::new();
    loop {
        let ids = store
            .request_cancel_matching(a.id, &filter, 2)
            .await
            .unwrap();
        assert!(ids.len() <= 2, "{ids:?}");
        if ids.is_empty() {
            break;
        }
        let mut ids = ids;
        ids.sort();
        batches.push(ids);
        assert!(batches.len() <= 3, "{batches:?}");
    }
    assert_eq!(
        batches,
        [vec![wf[0], wf[1]], vec![wf[2], wf[3]], vec![wf[4]]],
        "oldest first, each once"
    );
    for id in &wf {
        assert!(
            store
                .get_execution(a.id, *id)
                .await
                .unwrap()
                .cancel_requested,
            "{id}"
        );
    }
    for (t, id) in [(&a, other_wf.id), (&a, done.id), (&b, theirs.id)] {
        assert!(
            !store
                .get_execution(t.id, id)
                .await
                .unwrap()
                .cancel_requested,
            "{id} was not to be cancelled"
        );
    }
    assert_eq!(
        store.get_execution(a.id, done.id).await.unwrap().status,
        ExecutionStatus::Completed
    );
    // By status and creation time: of a's, only wf2's is still pending and not cancelled.
    let pending = ExecutionFilter {
        status: Some(ExecutionStatus::Pending),
        created_after: Some(other_wf.now),
        created_before: Some(other_wf.now + TimeDelta::microseconds(1)),
        ..ExecutionFilter::default()
    };
    assert_eq!(
        store
            .request_cancel_matching(a.id, &pending, 10)
            .await
            .unwrap(),
        [other_wf.id]
    );
    assert!(
        store
            .request_cancel_matching(a.id, &pending, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .get_execution(b.id, theirs.id)
            .await
            .unwrap()
            .cancel_requested
    );
    // Cancelled executions show it to their holder's next renewal.
    assert!(
        store
            .renew_leases("node-r", &[wf[0]], 60_000)
            .await
            .unwrap()
            .contains(&(wf[0], true))
    );
}

/// Listing by workflow, status and creation time at once: exactly the matches, newest
/// first, through page cursors; `created_after` includes its time, `created_before` does
/// not.
async fn filtered_listing_contract(store: Arc<dyn Store>) {
    let t = tenant_with_workflow(&*store, "filtered").await;
    let other = tenant_with_workflow(&*store, "filtered-other").await;
    store
        .apply_definition(&version(t.id, "wf2", "h"))
        .await
        .unwrap();
    let mut e = Vec::new();
    for k in 0..8 {
        let workflow = if k == 1 { "wf2" } else { "wf" };
        let (x, lease) = execution_of(&*store, &t, workflow).await;
        if k == 3 {
            with_rows(&*store, lease, Some(now_micros())).await;
        }
        // Another tenant's executions of the same workflow, in the same time range.
        execution_of(&*store, &other, "wf").await;
        e.push(x);
    }
    let list = |filter: ExecutionFilter, limit: u32| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut after = None;
            let mut pages = 0;
            loop {
                let listed = store
                    .list_executions(t.id, &filter, &page(limit, after), View::Basic)
                    .await
                    .unwrap();
                assert!(listed.items.len() <= limit as usize);
                assert!(
                    !listed.items.is_empty() || ids.is_empty(),
                    "an empty page after a cursor"
                );
                pages += 1;
                assert!(pages < 20, "the cursors do not end");
                for x in &listed.items {
                    assert_eq!(x.tenant_id, t.id);
                    ids.push(x.id);
                }
                match listed.next_cursor {
                    Some(c) => after = Some(c),
                    None => return ids,
                }
            }
        }
    };
    let filter = |after: chrono::DateTime<Utc>, before: chrono::DateTime<Utc>| ExecutionFilter {
        workflow: Some("wf".to_owned()),
        status: Some(ExecutionStatus::Pending),
        created_after: Some(after),
        created_before: Some(before),
    };
    let us = TimeDelta::microseconds(1);
    // [e1, e7): wf and pending: e2, e4, e5, e6 (e1 is wf2's, e3 completed).
    let want = [e[6].id, e[5].id, e[4].id, e[2].id];
    for limit in [1, 2, 3, 10] {
        assert_eq!(
            list(filter(e[1].now, e[7].now), limit).await,
            want,
            "limit {limit}"
        );
    }
    // At the exact boundaries: created_after includes, created_before excludes.
    assert_eq!(
        list(filter(e[2].now, e[6].now), 1).await,
        [e[5].id, e[4].id, e[2].id]
    );
    assert_eq!(
        list(filter(e[2].now + us, e[6].now + us), 1).await,
        [e[6].id, e[5].id, e[4].id]
    );
    assert_eq!(
        list(filter(e[2].now - us, e[2].now), 10).await,
        Vec::<uuid::Uuid>::new()
    );
    assert_eq!(list(filter(e[2].now, e[2].now + us), 10).await, [e[2].id]);
    // Only the time range.
    assert_eq!(
        list(
            ExecutionFilter {
                created_after: Some(e[1].now),
                created_before: Some(e[4].now),
                ..ExecutionFilter::default()
            },
            2
        )
        .await,
        [e[3].id, e[2].id, e[1].id]
    );
    // Completed of wf in the range: e3 alone.
    assert_eq!(
        list(
            ExecutionFilter {
                status: Some(ExecutionStatus::Completed),
                ..filter(e[0].now, e[7].now + us)
            },
            1
        )
        .await,
        [e[3].id]
    );
    // Workflow and status without times; all of wf pending: e7, e6, e5, e4, e2, e0.
    assert_eq!(
        list(
            ExecutionFilter {
                workflow: Some("wf".to_owned()),
                status: Some(ExecutionStatus::Pending),
                ..ExecutionFilter::default()
            },
            4
        )
        .await,
        [e[7].id, e[6].id, e[5].id, e[4].id, e[2].id, e[0].id]
    );
}

/// Audit events older than a time go, oldest first, at most `limit` a call; newer ones stay.
async fn audit_retention_contract(store: Arc<dyn Store>) {
    let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let days = |d: i64| now - TimeDelta::days(d);
    for (i, time) in [days(10), days(9), days(8), days(7), days(6), days(0), now]
        .into_iter()
        .enumerate()
    {
        store
            .record_audit(&AuditEvent {
                id: uuid::Uuid::now_v7(),
                tenant_id: None,
                time,
                actor: format!("actor-{i}"),
                action: "secret.create".to_owned(),
                resource: String::new(),
                result: "OK".to_owned(),
                detail: None,
            })
            .await
            .unwrap();
    }
    let actors = || {
        let store = store.clone();
        async move {
            let mut actors: Vec<String> = store
                .list_audit(None, &AuditFilter::default(), &page(100, None))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|e| e.actor)
                .collect();
            actors.sort();
            actors
        }
    };
    assert_eq!(actors().await.len(), 7);
    let cutoff = days(1);
    assert_eq!(store.delete_audit_before(cutoff, 2).await.unwrap(), 2);
    // The two oldest went first.
    assert_eq!(
        actors().await,
        ["actor-2", "actor-3", "actor-4", "actor-5", "actor-6"]
    );
    assert_eq!(store.delete_audit_before(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.delete_audit_before(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.delete_audit_before(cutoff, 2).await.unwrap(), 0);
    assert_eq!(actors().await, ["actor-5", "actor-6"]);
}

/// A backend reports its statistics when it exits: waits until every other connection to
/// the database is gone.
async fn wait_for_other_connections_to_close(conn: &mut sqlx::PgConnection) {
    let mut others = 1i64;
    for _ in 0..100 {
        others = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if others == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(others, 0, "the store's connections did not close");
}
