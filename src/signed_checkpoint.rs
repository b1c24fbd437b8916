//! Signed checkpoints of the audit chain. Whoever can write the database can rewrite records and
//! recompute every hash after them, but cannot sign: every `audit.checkpoint_secs`, at shutdown and
//! with each pruning, the chain's head is signed with an Ed25519 key and the checkpoint kept where
//! the database's administrator cannot reach it too (an append-only file, the log). Each checkpoint
//! names the digest of the one before, so a verifier holding only the public key and those lines
//! finds rewritten, missing and forged records.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a signing key, a checkpoint line or the checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a signed checkpoint ({0})")]
    NotACheckpoint(#[source] serde_json::Error),
    #[error("line {line}: not a signed checkpoint ({source})")]
    BadLine {
        line: usize,
        source: serde_json::Error,
    },
    #[error("not a PKCS#8 PEM private key ({0})")]
    NotPem(#[source] rustls::pki_types::pem::Error),
    #[error("not an Ed25519 private key ({0})")]
    NotEd25519(#[source] aws_lc_rs::error::KeyRejected),
    #[error(
        "audit.signing_key_file = {path:?} cannot be read ({source}); write one with \
         `contabo-gateway keys new-signing {path}`"
    )]
    KeyUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "audit.signing_key_file = {path:?} is {source}; write one with \
         `contabo-gateway keys new-signing PATH`"
    )]
    KeyInvalid {
        path: String,
        source: Box<CheckpointError>,
    },
    #[error("cannot generate an Ed25519 key")]
    KeyGeneration,
    #[error("cannot read the checkpoint file {path}: {source}")]
    FileUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the checkpoint file {path}'s last line is not a signed checkpoint ({source}); move the file aside"
    )]
    FileLastLine {
        path: String,
        source: serde_json::Error,
    },
    /// A file of checkpoints (or a copy of one) with a line that is not one.
    #[error("{path}: {source}")]
    FileContent {
        path: String,
        source: Box<CheckpointError>,
    },
    #[error("cannot write the checkpoint file {path}: {source}")]
    FileUnwritable {
        path: String,
        source: std::io::Error,
    },
}

/// Why a sequence of checkpoints does not hold: the first checkpoint that fails, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceBroken {
    #[error("the public key is not an Ed25519 public key in base64 (44 characters)")]
    NotAPublicKey,
    #[error("checkpoint {checkpoint} was signed by another key ({key})")]
    OtherKey { checkpoint: i64, key: String },
    #[error("checkpoint {0}: its signature does not match its content (it was altered)")]
    Altered(i64),
    #[error("checkpoint {expected} is missing: the next one found is {found}")]
    Missing { expected: i64, found: i64 },
    #[error(
        "checkpoint {checkpoint} does not name the digest of checkpoint {}: the sequence was broken",
        checkpoint - 1
    )]
    Unlinked { checkpoint: i64 },
    #[error(
        "checkpoint {checkpoint} goes back from seq {from} to seq {to}: records were deleted \
         before it was signed"
    )]
    GoesBack { checkpoint: i64, from: i64, to: i64 },
}

/// The `previous` of the first checkpoint, and the hash the audit chain starts from.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One signed statement about the chain: its head (`seq`, `hash`), how many records the store
/// held up to it (`count`), where retention pruning had cut the chain's start (`pruned_through`
/// and the hash there), and the digest of the checkpoint before (`previous`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// 1, 2, 3, ... one sequence for every replica on one database.
    pub checkpoint: i64,
    pub seq: i64,
    pub hash: String,
    pub count: i64,
    pub pruned_through: i64,
    pub pruned_hash: String,
    pub ts: String,
    /// The digest of the previous checkpoint (64 zeros for the first).
    pub previous: String,
    /// The public key that signed it (base64), so a verifier holding another key says so.
    pub key: String,
    /// Ed25519 over the checkpoint's JSON without this field (base64).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers: the checkpoint as JSON without its signature.
    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Checkpoint {
            signature: String::new(),
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).expect("a checkpoint serialises")
    }

    /// What the next checkpoint names as `previous`.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.signed_bytes()))
    }

    /// The checkpoint as the one JSON line kept in the file, the database and the log.
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("a checkpoint serialises")
    }

    pub fn parse(line: &str) -> Result<Self, CheckpointError> {
        serde_json::from_str(line).map_err(CheckpointError::NotACheckpoint)
    }

    /// Whether `public_key` (base64) signed exactly this checkpoint.
    fn signed_by(&self, public_key: &[u8]) -> bool {
        let Ok(signature) = BASE64.decode(&self.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&self.signed_bytes(), &signature)
            .is_ok()
    }
}

/// Reads checkpoint lines (the file, or the database's copy): every non-empty line must be one.
pub fn parse_lines(text: &str) -> Result<Vec<Checkpoint>, CheckpointError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|source| CheckpointError::BadLine {
                line: n + 1,
                source,
            })
        })
        .collect()
}

/// The checkpoint lines of the file at `path` (its text already read); a bad line names the file.
pub fn parse_file(path: &str, text: &str) -> Result<Vec<Checkpoint>, CheckpointError> {
    parse_lines(text).map_err(|e| CheckpointError::FileContent {
        path: path.to_string(),
        source: Box::new(e),
    })
}

/// The key that signs checkpoints (`audit.signing_key_file`, PKCS#8 PEM as `keys new-signing`
/// or `openssl genpkey -algorithm ed25519` write it).
pub struct Signer {
    pair: Ed25519KeyPair,
    public_key: String,
}

/// Shows the public key only.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn from_pem(pem: &[u8]) -> Result<Self, CheckpointError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(CheckpointError::NotPem)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(CheckpointError::NotEd25519)?;
        let public_key = BASE64.encode(pair.public_key().as_ref());
        Ok(Self { pair, public_key })
    }

    pub fn load(path: &str) -> Result<Self, CheckpointError> {
        let pem = std::fs::read(path).map_err(|source| CheckpointError::KeyUnreadable {
            path: path.to_string(),
            source,
        })?;
        Self::from_pem(&pem).map_err(|e| CheckpointError::KeyInvalid {
            path: path.to_string(),
            source: Box::new(e),
        })
    }

    /// The public key, base64: all a verifier needs.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Signs a checkpoint (its `key` set to this key's public half).
    pub fn sign(&self, mut checkpoint: Checkpoint) -> Checkpoint {
        checkpoint.key = self.public_key.clone();
        checkpoint.signature = String::new();
        let signature = self.pair.sign(&checkpoint.signed_bytes());
        checkpoint.signature = BASE64.encode(signature.as_ref());
        checkpoint
    }
}

/// A new Ed25519 private key as PKCS#8 PEM, and its public key (base64).
pub fn new_private_key() -> Result<(String, String), CheckpointError> {
    let pair = Ed25519KeyPair::generate().map_err(|_| CheckpointError::KeyGeneration)?;
    let der = pair
        .to_pkcs8v1()
        .map_err(|_| CheckpointError::KeyGeneration)?;
    let body = BASE64.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, BASE64.encode(pair.public_key().as_ref())))
}

/// The append-only file of checkpoint lines (`audit.checkpoint_file`): each written line is
/// fsync'd before the next checkpoint is signed.
pub struct CheckpointFile {
    path: String,
    /// The number of its last checkpoint, once read.
    last: Option<i64>,
}

impl CheckpointFile {
    pub fn new(path: &str) -> Self {
        Self {
            path: path.to_string(),
            last: None,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The number of the file's last checkpoint (0 when it has none yet).
    pub async fn last_number(&mut self) -> Result<i64, CheckpointError> {
        if let Some(last) = self.last {
            return Ok(last);
        }
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(CheckpointError::FileUnreadable {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let last = match text.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(line) => {
                let last: Checkpoint =
                    serde_json::from_str(line).map_err(|source| CheckpointError::FileLastLine {
                        path: self.path.clone(),
                        source,
                    })?;
                last.checkpoint
            }
            None => 0,
        };
        self.last = Some(last);
        Ok(last)
    }

    /// Appends checkpoint lines (in order) and syncs them to disk.
    pub async fn append(&mut self, lines: &[String]) -> Result<(), CheckpointError> {
        use tokio::io::AsyncWriteExt;
        let Some(last) = lines.last() else {
            return Ok(());
        };
        let failed = |source| CheckpointError::FileUnwritable {
            path: self.path.clone(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(failed)?;
        let mut text = lines.join("\n");
        text.push('\n');
        file.write_all(text.as_bytes()).await.map_err(failed)?;
        file.sync_all().await.map_err(failed)?;
        self.last = Some(Checkpoint::parse(last)?.checkpoint);
        Ok(())
    }
}

/// Checks a sequence of checkpoints on its own: each signed by `public_key` (base64), numbered
/// from 1 without gaps, naming the digest of the one before, never going back in the chain.
/// The error names the first checkpoint that fails and why.
pub fn check_sequence(checkpoints: &[Checkpoint], public_key: &str) -> Result<(), SequenceBroken> {
    let key = BASE64
        .decode(public_key.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or(SequenceBroken::NotAPublicKey)?;
    let mut previous: Option<&Checkpoint> = None;
    for checkpoint in checkpoints {
        let n = checkpoint.checkpoint;
        if !checkpoint.signed_by(&key) {
            return Err(if checkpoint.key != public_key.trim() {
                SequenceBroken::OtherKey {
                    checkpoint: n,
                    key: checkpoint.key.clone(),
                }
            } else {
                SequenceBroken::Altered(n)
            });
        }
        let (number, digest) = match previous {
            Some(p) => (p.checkpoint + 1, p.digest()),
            None => (1, GENESIS_HASH.to_string()),
        };
        if n != number {
            return Err(SequenceBroken::Missing {
                expected: number,
                found: n,
            });
        }
        if checkpoint.previous != digest {
            return Err(SequenceBroken::Unlinked { checkpoint: n });
        }
        if let Some(p) = previous
            && (checkpoint.seq < p.seq || checkpoint.pruned_through < p.pruned_through)
        {
            return Err(SequenceBroken::GoesBack {
                checkpoint: n,
                from: p.seq,
                to: checkpoint.seq,
            });
        }
        previous = Some(checkpoint);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(signer: &Signer, number: i64, seq: i64, previous: &str) -> Checkpoint {
        signer.sign(Checkpoint {
            checkpoint: number,
            seq,
            hash: format!("{seq:064x}"),
            count: seq,
            pruned_through: 0,
            pruned_hash: GENESIS_HASH.into(),
            ts: "2026-12-03T00:00:00.000Z".into(),
            previous: previous.into(),
            key: String::new(),
            signature: String::new(),
        })
    }

    #[test]
    fn a_sequence_verifies_with_the_public_key_and_fails_when_altered() {
        let (pem, public) = new_private_key().unwrap();
        let signer = Signer::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(signer.public_key(), public);
        let first = signed(&signer, 1, 3, GENESIS_HASH);
        let second = signed(&signer, 2, 5, &first.digest());
        let lines = format!("{}\n{}\n", first.line(), second.line());
        let parsed = parse_lines(&lines).unwrap();
        assert_eq!(check_sequence(&parsed, &public), Ok(()));

        let mut altered = parsed.clone();
        altered[1].seq = 4;
        let broken = check_sequence(&altered, &public).unwrap_err();
        assert_eq!(broken, SequenceBroken::Altered(2));
        assert!(broken.to_string().contains("altered"), "{broken}");
        let (_, other) = new_private_key().unwrap();
        let broken = check_sequence(&parsed, &other).unwrap_err();
        assert!(
            matches!(broken, SequenceBroken::OtherKey { checkpoint: 1, .. }),
            "{broken}"
        );
        assert!(broken.to_string().contains("another key"), "{broken}");
        let broken = check_sequence(&parsed[1..], &public).unwrap_err();
        assert_eq!(
            broken.to_string(),
            "checkpoint 1 is missing: the next one found is 2"
        );
        let unlinked = signed(&signer, 2, 5, GENESIS_HASH);
        let broken = check_sequence(&[first.clone(), unlinked], &public).unwrap_err();
        assert_eq!(
            broken.to_string(),
            "checkpoint 2 does not name the digest of checkpoint 1: the sequence was broken"
        );
        let backwards = signed(&signer, 2, 2, &first.digest());
        let broken = check_sequence(&[first, backwards], &public).unwrap_err();
        assert_eq!(
            broken,
            SequenceBroken::GoesBack {
                checkpoint: 2,
                from: 3,
                to: 2
            }
        );
        assert!(check_sequence(&parsed, "not a key").is_err());
    }

    #[test]
    fn an_openssl_style_pkcs8_key_is_read_and_garbage_is_refused() {
        let (pem, _) = new_private_key().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let refused = Signer::from_pem(b"not a key").unwrap_err();
        assert!(matches!(refused, CheckpointError::NotPem(_)), "{refused}");
        assert!(refused.to_string().contains("PKCS#8"), "{refused}");
    }
}
