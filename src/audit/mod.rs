//! The compliance audit log of every mutating call (every method under /v1 but GET, HEAD and
//! OPTIONS) from an identified caller, including the calls the gateway refused.
//!
//! A record is committed as `pending` before the call is forwarded and finalised (and appended to
//! the hash chain) after, so a crash in between leaves a pending row for a reviewer to see. If the
//! store cannot be written, mutating calls are refused with 503 and never forwarded, unless
//! `audit.fail_open`. Secrets in bodies are redacted; credentials are never stored.

pub mod chain;
pub mod error;
pub mod lock;
pub mod query;
pub mod reconcile;
pub mod record;
pub mod store;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderMap, header};
use tokio::sync::{mpsc, oneshot};

use crate::config::AuditConfig;
use crate::error::GatewayError;
use crate::request_id::RequestId;
use crate::signed_checkpoint::{Checkpoint, CheckpointError, CheckpointFile, Signer, parse_file};
use error::AuditError;
use record::{AuditRecord, BodyPolicy, Outcome, millis, now_ts};
use store::Anchors;
use writer::{Health, Op};

/// How many records may wait for the writer before callers wait too.
const QUEUE: usize = 8192;

pub struct AuditLog {
    config: AuditConfig,
    bodies: Arc<BodyPolicy>,
    ops: mpsc::Sender<Op>,
    health: Health,
    ever_up: Arc<AtomicBool>,
    reader: tokio::sync::OnceCell<store::Store>,
    checkpoints: Option<Checkpoints>,
}

/// Signing the chain's head, and the file each signed checkpoint is appended to.
struct Checkpoints {
    signer: Signer,
    file: Option<tokio::sync::Mutex<CheckpointFile>>,
}

impl AuditLog {
    /// Starts the writer task on the current runtime; it opens the store (and keeps trying).
    /// Fails when the checkpoint signing key cannot be read.
    pub fn start(config: &AuditConfig) -> Result<Self, AuditError> {
        let checkpoints = match config.checkpoint_signer()? {
            Some(signer) if config.enabled => Some(Checkpoints {
                signer,
                file: (!config.checkpoint_file.is_empty())
                    .then(|| tokio::sync::Mutex::new(CheckpointFile::new(&config.checkpoint_file))),
            }),
            _ => None,
        };
        let (ops, receiver) = mpsc::channel(QUEUE);
        let health: Health = Arc::new(RwLock::new(Err("the audit store is being opened".into())));
        let ever_up = Arc::new(AtomicBool::new(false));
        if config.enabled {
            tokio::spawn(writer::run(
                config.database_url.clone(),
                receiver,
                health.clone(),
                ever_up.clone(),
                config.write_timeout,
            ));
        }
        Ok(Self {
            config: config.clone(),
            bodies: Arc::new(BodyPolicy::new(
                &redacted_keys(config),
                config.max_body_bytes,
                config.store_user_data,
            )),
            ops,
            health,
            ever_up,
            reader: tokio::sync::OnceCell::new(),
            checkpoints,
        })
    }

    /// The key that signs checkpoints, when checkpoints are on.
    pub fn signer(&self) -> Option<&Signer> {
        self.checkpoints.as_ref().map(|c| &c.signer)
    }

    /// How often a checkpoint is signed, when checkpoints are on.
    pub fn checkpoint_every(&self) -> Option<Duration> {
        self.checkpoints
            .as_ref()
            .map(|_| self.config.checkpoint_interval)
    }

    /// Signs a checkpoint of the chain's head (none when nothing changed since the last one),
    /// logs it, and appends to the checkpoint file every signed checkpoint it lacks (replicas
    /// share one sequence, so each file holds all of them).
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let Some(checkpoints) = &self.checkpoints else {
            return Ok(None);
        };
        self.flush().await;
        let store = self.reader().await?;
        let signed = store.sign_checkpoint(&checkpoints.signer).await?;
        if let Some(checkpoint) = &signed {
            tracing::info!(
                target: "audit_checkpoint",
                checkpoint = %checkpoint.line(),
                "audit checkpoint signed"
            );
        }
        if let Some(file) = &checkpoints.file {
            let mut file = file.lock().await;
            let after = file.last_number().await?;
            let lines = store.signed_lines_after(after).await?;
            file.append(&lines).await?;
        }
        Ok(signed)
    }

    /// What the gateway verifies the store against: its checkpoint file when it writes one (out
    /// of the database administrator's reach), else the database's copy; none without a key.
    pub async fn anchors(&self) -> Result<Option<Anchors>, AuditError> {
        let Some(checkpoints) = &self.checkpoints else {
            return Ok(None);
        };
        let (list, source) = match &checkpoints.file {
            Some(file) => {
                let path = file.lock().await.path().to_string();
                let text = match tokio::fs::read_to_string(&path).await {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(source) => {
                        return Err(CheckpointError::FileUnreadable { path, source }.into());
                    }
                };
                (parse_file(&path, &text)?, path)
            }
            None => (
                self.reader().await?.signed_checkpoints().await?,
                "the database".to_string(),
            ),
        };
        Ok(Some(Anchors {
            checkpoints: list,
            public_key: checkpoints.signer.public_key().to_string(),
            source,
        }))
    }

    /// The store for queries and verification (opened on first use).
    pub async fn reader(&self) -> Result<&store::Store, AuditError> {
        if !self.config.enabled {
            return Err(AuditError::Disabled);
        }
        self.reader
            .get_or_try_init(|| store::Store::open(&self.config.database_url))
            .await
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether the store can be written now, and why not.
    pub fn health(&self) -> Result<(), String> {
        if !self.config.enabled {
            return Ok(());
        }
        self.health.read().expect("health lock").clone()
    }

    /// Records waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.ops.max_capacity() - self.ops.capacity()
    }

    /// Waits until every record sent so far is committed (used on shutdown and by tests).
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.config.enabled && self.ops.send(Op::Flush { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    /// The audit trail of one call, or `None` when the call is not audited (not mutating). It owns
    /// what it needs, so it can outlive the caller's wait: a write's exchange runs to its end.
    pub fn trail(&self, call: &Caller<'_>, parts: &Parts) -> Option<AuditTrail> {
        if !self.config.enabled || !call.mutates {
            return None;
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let client_ip = call
            .peer
            .map(|peer| peer.ip().to_string())
            .unwrap_or_default();
        let record = AuditRecord {
            id: 0,
            ts: now_ts(),
            client: call.team.to_string(),
            role: call.role.into(),
            method: parts.method.to_string(),
            path: parts.uri.path().into(),
            query: self.bodies.store_query(parts.uri.query().unwrap_or("")),
            request_id: call.request_id.as_str().into(),
            // The call's W3C trace (exported, or the caller's traceparent), else Contabo's own.
            trace_id: crate::telemetry::trace_id(&parts.headers)
                .unwrap_or_else(|| header(crate::request_id::TRACE_HEADER)),
            client_ip,
            request_body: String::new(),
            status: None,
            outcome: Outcome::Pending,
            response_body: String::new(),
            duration_ms: None,
            upstream_ms: None,
            seq: None,
            prev_hash: None,
            hash: None,
        };
        Some(AuditTrail {
            health: self.health.clone(),
            ever_up: self.ever_up.clone(),
            deadline: self.config.write_timeout,
            ops: self.ops.clone(),
            bodies: self.bodies.clone(),
            fail_open: self.config.fail_open,
            record,
            started: Instant::now(),
            upstream_started: None,
            finished: false,
        })
    }
}

/// Who made a call, as the audit records it.
pub struct Caller<'a> {
    pub request_id: &'a RequestId,
    pub team: &'a str,
    pub role: &'static str,
    /// The caller's address.
    pub peer: Option<std::net::SocketAddr>,
    /// Whether the call changes something (only those are audited; an unknown method counts as
    /// a change, so its refusal is on record like any other refused write).
    pub mutates: bool,
}

/// The keys stored as "[REDACTED]": `audit.redact_keys` and every secret field the route table
/// knows (a stored secret's `value`, the client `secret`, an S3 `secretKey`, ...).
fn redacted_keys(config: &AuditConfig) -> Vec<String> {
    let mut keys = config.redact_keys.clone();
    for field in crate::routes::secret_fields() {
        if !keys.iter().any(|k| k.eq_ignore_ascii_case(field)) {
            keys.push(field.to_string());
        }
    }
    keys
}

/// The record of one mutating call as it goes through the pipeline. Dropped before it was
/// finalised (the gateway stopping mid-call), it sends its record as `interrupted`.
pub struct AuditTrail {
    health: Health,
    /// Whether the store was ever written: until then a down store is still being opened, and a
    /// call waits for it (within the deadline) instead of being refused at once.
    ever_up: Arc<AtomicBool>,
    /// `audit.write_timeout_ms`: how long a call waits for its pending record.
    deadline: Duration,
    ops: mpsc::Sender<Op>,
    bodies: Arc<BodyPolicy>,
    fail_open: bool,
    record: AuditRecord,
    started: Instant,
    upstream_started: Option<Instant>,
    finished: bool,
}

impl AuditTrail {
    fn body(&self, body: &[u8], headers: &HeaderMap) -> String {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        self.bodies.store(body, content_type)
    }

    /// Commits the pending record before the call is forwarded. When the store cannot be written
    /// the call is refused (503) unless `audit.fail_open`.
    pub async fn begin(&mut self, body: &[u8], headers: &HeaderMap) -> Result<(), GatewayError> {
        self.record.request_body = self.body(body, headers);
        let known = self.health.read().expect("health lock").clone();
        let result = match known {
            // Known to be down: refused at once, not after the deadline.
            Err(reason) if self.ever_up.load(Ordering::SeqCst) => Err(reason),
            _ => self.commit_pending().await,
        };
        match result {
            Ok(id) => {
                self.record.id = id;
                self.upstream_started = Some(Instant::now());
                Ok(())
            }
            Err(reason) if self.fail_open => {
                tracing::error!(%reason, "audit store unwritable; forwarding anyway (audit.fail_open)");
                self.upstream_started = Some(Instant::now());
                Ok(())
            }
            Err(reason) => {
                // Nothing was forwarded and no pending row stands for this call (the writer
                // finalises one it commits after the deadline as rejected).
                self.finished = true;
                Err(GatewayError::AuditUnavailable(reason))
            }
        }
    }

    /// Sends the pending record and waits for its commit, at most `audit.write_timeout_ms`; past
    /// it the store is reported down.
    async fn commit_pending(&self) -> Result<i64, String> {
        let (reply, committed) = oneshot::channel();
        let begin = Op::Begin {
            record: self.record.clone(),
            reply,
        };
        let wait = async {
            self.ops
                .send(begin)
                .await
                .map_err(|_| "the audit writer stopped".to_string())?;
            committed
                .await
                .unwrap_or_else(|_| Err("the audit writer stopped".into()))
        };
        let span = crate::telemetry::span(|| tracing::info_span!("audit write (pending record)"));
        match tokio::time::timeout(self.deadline, tracing::Instrument::instrument(wait, span)).await
        {
            Ok(result) => result,
            Err(_) => {
                let reason = format!(
                    "the audit store did not commit within audit.write_timeout_ms ({} ms)",
                    self.deadline.as_millis()
                );
                *self.health.write().expect("health lock") = Err(reason.clone());
                Err(reason)
            }
        }
    }

    /// Finalises the record with upstream's answer.
    pub async fn forwarded(mut self, status: u16, body: &[u8], headers: &HeaderMap) {
        self.record.outcome = Outcome::Forwarded;
        self.record.status = Some(status as i64);
        self.record.response_body = self.body(body, headers);
        self.finish().await;
    }

    /// Finalises the record of a call that failed: refused by the gateway before forwarding
    /// (`rejected`), or failed on the way to or from upstream.
    pub async fn failed(mut self, error: &GatewayError, before_forwarding: bool) {
        self.record.outcome = if before_forwarding {
            Outcome::Rejected
        } else if error.is_upstream_failure()
            || matches!(error, GatewayError::CredentialUnusable { .. })
        {
            Outcome::UpstreamError
        } else {
            Outcome::GatewayError
        };
        self.record.status = Some(error.status().as_u16() as i64);
        self.record.response_body =
            serde_json::json!({"error": error.code(), "message": error.to_string()}).to_string();
        self.finish().await;
    }

    /// Sends the final record to the writer (a record without a pending row, as after a refusal or
    /// a fail-open begin, is inserted final).
    async fn finish(mut self) {
        self.finished = true;
        let record = self.final_record();
        let _ = self
            .ops
            .send(Op::Finish {
                record,
                reply: None,
            })
            .await;
    }

    fn final_record(&mut self) -> AuditRecord {
        self.record.duration_ms = Some(millis(self.started.elapsed()));
        self.record.upstream_ms = self.upstream_started.map(|t| millis(t.elapsed()));
        self.record.clone()
    }
}

impl Drop for AuditTrail {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Refusals and answers finish the trail; only a call cut off by the gateway itself
        // (shutdown past its drain timeout, a panic) gets here.
        self.record.outcome = Outcome::Interrupted;
        let record = self.final_record();
        if self
            .ops
            .try_send(Op::Finish {
                record,
                reply: None,
            })
            .is_err()
        {
            tracing::error!(
                request_id = %self.record.request_id,
                "an interrupted call's audit record could not be queued; it stays pending"
            );
        }
    }
}
